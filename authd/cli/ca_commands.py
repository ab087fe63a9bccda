"""`authd ca show`, `authd bundle show`, and the rotation steps of `authd authority ...`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.client import ask
from authd.cli.federation_commands import foreign_bundle_show
from authd.cli.output import authority_json, authority_lines, ordered_authorities, print_json


def cmd_ca_show(args: argparse.Namespace) -> int:
    reply = ask(args, "ShowCA", admin_pb2.ShowCARequest())
    if args.json:
        print_json(
            {
                "trust_domain": reply.trust_domain,
                "bundle_sequence": reply.bundle_sequence,
                "upstream": reply.upstream,
                "authorities": [authority_json(a) for a in ordered_authorities(reply.authorities)],
            }
        )
        return 0
    print(f"Trust domain:    {reply.trust_domain}")
    print(f"Upstream CA:     {'yes' if reply.upstream else 'no (self-signed)'}")
    print(f"Bundle sequence: {reply.bundle_sequence}")
    print("\n".join(authority_lines(reply.authorities)))
    return 0


def cmd_bundle_show(args: argparse.Namespace) -> int:
    if args.trust_domain and foreign_bundle_show(args):
        return 0
    reply = ask(args, "GetBundle", admin_pb2.GetBundleRequest())
    sys.stdout.write(reply.pem if args.format == "pem" else reply.spiffe_jwks + "\n")
    return 0


def cmd_authority_show(args: argparse.Namespace) -> int:
    reply = ask(args, "ShowCA", admin_pb2.ShowCARequest())
    if args.json:
        print_json(
            {
                "bundle_sequence": reply.bundle_sequence,
                "authorities": [authority_json(a) for a in ordered_authorities(reply.authorities)],
            }
        )
        return 0
    print(f"Bundle sequence: {reply.bundle_sequence}")
    print("\n".join(authority_lines(reply.authorities)))
    return 0


def _authority_step(args: argparse.Namespace, method: str, request: Any, done: str) -> int:
    reply: admin_pb2.AuthorityResponse = ask(args, method, request)
    a = reply.authority
    if args.json:
        print_json({"authority": authority_json(a), "bundle_sequence": reply.bundle_sequence})
        return 0
    print(f"{done} {a.kind} authority {a.authority_id}; bundle sequence {reply.bundle_sequence}")
    return 0


def cmd_authority_prepare(args: argparse.Namespace) -> int:
    request = admin_pb2.PrepareAuthorityRequest(kind=args.kind)
    return _authority_step(args, "PrepareAuthority", request, "Prepared")


def cmd_authority_activate(args: argparse.Namespace) -> int:
    request = admin_pb2.ActivateAuthorityRequest(kind=args.kind)
    return _authority_step(args, "ActivateAuthority", request, "Activated")


def cmd_authority_taint(args: argparse.Namespace) -> int:
    request = admin_pb2.TaintAuthorityRequest(kind=args.kind, authority_id=args.id)
    return _authority_step(args, "TaintAuthority", request, "Tainted")


def cmd_authority_revoke(args: argparse.Namespace) -> int:
    request = admin_pb2.RevokeAuthorityRequest(kind=args.kind, authority_id=args.id)
    return _authority_step(args, "RevokeAuthority", request, "Revoked")

"""`authd ca show`, `authd bundle show`, and the rotation steps of `authd authority ...`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.client import ask
from authd.cli.output import authority_json, authority_line


def cmd_ca_show(args: argparse.Namespace) -> int:
    reply = ask(args, "ShowCA", admin_pb2.ShowCARequest())
    if args.json:
        print(
            json.dumps(
                {
                    "trust_domain": reply.trust_domain,
                    "bundle_sequence": reply.bundle_sequence,
                    "upstream": reply.upstream,
                    "authorities": [authority_json(a) for a in reply.authorities],
                },
                indent=2,
            )
        )
        return 0
    print(f"Trust domain:    {reply.trust_domain}")
    print(f"Upstream CA:     {'yes' if reply.upstream else 'no (self-signed)'}")
    print(f"Bundle sequence: {reply.bundle_sequence}")
    for kind, title in (("x509", "X.509 authorities"), ("jwt", "JWT authorities")):
        print(f"\n{title}:")
        for a in reply.authorities:
            if a.kind == kind:
                print(authority_line(a))
    return 0


def cmd_bundle_show(args: argparse.Namespace) -> int:
    reply = ask(args, "GetBundle", admin_pb2.GetBundleRequest())
    sys.stdout.write(reply.pem if args.format == "pem" else reply.spiffe_jwks + "\n")
    return 0


def cmd_authority_show(args: argparse.Namespace) -> int:
    reply = ask(args, "ShowCA", admin_pb2.ShowCARequest())
    if args.json:
        print(
            json.dumps(
                {
                    "bundle_sequence": reply.bundle_sequence,
                    "authorities": [authority_json(a) for a in reply.authorities],
                },
                indent=2,
            )
        )
        return 0
    print(f"Bundle sequence: {reply.bundle_sequence}")
    for kind, title in (("x509", "X.509 authorities"), ("jwt", "JWT authorities")):
        print(f"\n{title}:")
        for state in ("active", "prepared", "retired"):
            for a in reply.authorities:
                if a.kind == kind and a.state == state:
                    print(authority_line(a))
    return 0


def _authority_step(
    args: argparse.Namespace, method: str, request: Any, done: str
) -> admin_pb2.AuthorityResponse:
    reply: admin_pb2.AuthorityResponse = ask(args, method, request)
    a = reply.authority
    print(f"{done} {a.kind} authority {a.authority_id}; bundle sequence {reply.bundle_sequence}")
    return reply


def cmd_authority_prepare(args: argparse.Namespace) -> int:
    request = admin_pb2.PrepareAuthorityRequest(kind=args.kind)
    _authority_step(args, "PrepareAuthority", request, "Prepared")
    return 0


def cmd_authority_activate(args: argparse.Namespace) -> int:
    request = admin_pb2.ActivateAuthorityRequest(kind=args.kind)
    _authority_step(args, "ActivateAuthority", request, "Activated")
    return 0


def cmd_authority_taint(args: argparse.Namespace) -> int:
    request = admin_pb2.TaintAuthorityRequest(kind=args.kind, authority_id=args.id)
    _authority_step(args, "TaintAuthority", request, "Tainted")
    return 0


def cmd_authority_revoke(args: argparse.Namespace) -> int:
    request = admin_pb2.RevokeAuthorityRequest(kind=args.kind, authority_id=args.id)
    _authority_step(args, "RevokeAuthority", request, "Revoked")
    return 0

"""`authd revoke`, `authd unrevoke` and `authd revocations list`."""

from __future__ import annotations

import argparse

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.client import ask
from authd.cli.output import print_json, revocation_json, table, when

# The CLI spells kinds as flags are spelled; the API as fields are.
REVOCATION_KINDS = {
    "serial": "serial",
    "spiffe-id": "spiffe_id",
    "entry": "entry",
    "jti": "jti",
    "txn": "txn",
}


def cmd_revoke(args: argparse.Namespace) -> int:
    request = admin_pb2.RevokeRequest(
        kind=REVOCATION_KINDS[args.kind], target=args.target, reason=args.reason, note=args.note
    )
    reply = ask(args, "Revoke", request)
    r = reply.revocation
    if args.json:
        print_json({"revocation": revocation_json(r)})
        return 0
    print(f"Revoked {args.kind} {r.target} ({r.reason}) at {when(r.revoked_at)}")
    return 0


def cmd_unrevoke(args: argparse.Namespace) -> int:
    request = admin_pb2.UnrevokeRequest(kind=REVOCATION_KINDS[args.kind], target=args.target)
    reply = ask(args, "Unrevoke", request)
    if args.json:
        print_json({"lifted": revocation_json(reply.lifted)})
        return 0
    print(f"Lifted the revocation of {args.kind} {reply.lifted.target} ({reply.lifted.reason})")
    return 0


def cmd_revocations_list(args: argparse.Namespace) -> int:
    kind = REVOCATION_KINDS[args.kind] if args.kind else ""
    reply = ask(args, "ListRevocations", admin_pb2.ListRevocationsRequest(kind=kind))
    revocations = [revocation_json(r) for r in reply.revocations]
    if args.json:
        print_json({"revocations": revocations})
        return 0
    count = len(revocations)
    print(f"Found {count} {'revocation' if count == 1 else 'revocations'}")
    if revocations:
        columns = ("kind", "target", "reason", "revoked_at", "revoked_by", "note")
        rows = [[r[c] for c in columns] for r in revocations]
        print("\n".join(table(("KIND", "TARGET", "REASON", "REVOKED AT", "BY", "NOTE"), rows)))
    return 0

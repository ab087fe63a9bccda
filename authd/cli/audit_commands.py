"""`authd svid list`, `authd audit log` and `authd audit verify`."""

from __future__ import annotations

import argparse

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.client import CommandError, ask
from authd.cli.errors import Exit
from authd.cli.flags import time_flag
from authd.cli.output import audit_json, print_json, svid_json, table, when


def _check_authority_exists(args: argparse.Namespace, authority_id: str) -> None:
    """An authority no longer listed may still have SVIDs in the log; one never seen has none."""
    known = ask(args, "ShowCA", admin_pb2.ShowCARequest()).authorities
    if authority_id not in {a.authority_id for a in known}:
        raise CommandError(
            f"not found: no authority {authority_id!r} (see `authd authority show`)",
            Exit.NOT_FOUND,
        )


def cmd_svid_list(args: argparse.Namespace) -> int:
    request = admin_pb2.ListSvidsRequest(
        authority_id=args.authority, spiffe_id=args.spiffe_id or ""
    )
    reply = ask(args, "ListSvids", request)
    svids = [svid_json(s) for s in reply.svids]
    if not svids:
        _check_authority_exists(args, args.authority)
    if args.json:
        print_json({"svids": svids})
        return 0
    count = len(svids)
    print(f"Found {count} {'SVID' if count == 1 else 'SVIDs'} signed by authority {args.authority}")
    if svids:
        rows = [
            [
                s["serial"],
                s["spiffe_id"],
                s["not_after"],
                s["requester"],
                f"{s['revocation']['reason']} ({s['revocation']['kind']})"
                if s["revoked"]
                else "no",
            ]
            for s in svids
        ]
        print("\n".join(table(("SERIAL", "SPIFFE ID", "NOT AFTER", "REQUESTER", "REVOKED"), rows)))
    return 0


def cmd_audit_log(args: argparse.Namespace) -> int:
    request = admin_pb2.ListAuditRequest(
        since=time_flag(args.since, "--since") if args.since else 0,
        subject=args.subject or "",
        spiffe_id=args.spiffe_id or "",
    )
    reply = ask(args, "ListAudit", request)
    if args.json:
        print_json({"records": [audit_json(r) for r in reply.records]})
        return 0
    rows = [
        [str(r.seq), when(r.time), r.actor, r.action, r.subject, r.details_json]
        for r in reply.records
    ]
    print("\n".join(table(("SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT", "DETAILS"), rows)))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    reply = ask(args, "VerifyAudit", admin_pb2.VerifyAuditRequest())
    records = f"{reply.records} {'record' if reply.records == 1 else 'records'}"
    if args.json:
        print_json(
            {
                "intact": reply.intact,
                "records": reply.records,
                "last_hash": reply.last_hash if reply.intact else None,
                "broken_seq": None if reply.intact else reply.broken_seq,
                "problem": None if reply.intact else reply.problem,
            }
        )
        return Exit.OK if reply.intact else Exit.FAILED
    if not reply.intact:
        raise CommandError(
            f"audit log broken at record {reply.broken_seq}: {reply.problem} ({records} read)"
        )
    print(f"audit log intact: {records}, last hash {reply.last_hash}")
    return 0

"""`authd store show` and `authd store reseed`: a store that went backwards, and its repair."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.backup_commands import add_backup_commands
from authd.cli.client import ask

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[Any]  # what add_subparsers returns


def _position(message: admin_pb2.StorePosition) -> dict[str, object]:
    return {
        "generation": message.generation,
        "audit_seq": message.audit_seq,
        "audit_hash": message.audit_hash,
    }


def _line(message: admin_pb2.StorePosition) -> str:
    generation = message.generation or "(none)"
    return f"generation {generation}, audit record {message.audit_seq} ({message.audit_hash[:12]})"


def cmd_store_show(args: argparse.Namespace) -> int:
    reply = ask(args, "ShowStore", admin_pb2.ShowStoreRequest())
    fields = ("remembered", "found", "mirror")
    if args.json:
        shown: dict[str, object] = {"regressed": reply.regressed, "reason": reply.reason}
        for name in fields:
            shown[name] = _position(getattr(reply, name)) if reply.HasField(name) else None
        print(json.dumps(shown, indent=2))
        return 0
    print(f"regressed:  {'yes: ' + reply.reason if reply.regressed else 'no'}")
    for name in fields:
        if reply.HasField(name):
            print(f"{name + ':':<11} {_line(getattr(reply, name))}")
    return 0


def cmd_store_reseed(args: argparse.Namespace) -> int:
    reply = ask(args, "ReseedStore", admin_pb2.ReseedStoreRequest())
    if args.json:
        reseeded = {
            "audit_seq": reply.audit_seq,
            "audit_hash": reply.audit_hash,
            "kept_revocations": reply.kept_revocations,
            "kept_audit_records": reply.kept_audit_records,
        }
        print(json.dumps(reseeded, indent=2))
        return 0
    print(
        f"store reseeded: audit head {reply.audit_seq} ({reply.audit_hash}); kept "
        f"{reply.kept_revocations} revocations and {reply.kept_audit_records} audit records "
        "made on the regressed store"
    )
    return 0


def add_store_commands(commands: Subparsers, client: argparse.ArgumentParser) -> None:
    """Register `authd store show|reseed|backup|restore|accept` (``client`` holds the flags
    that find the daemon)."""
    store = commands.add_parser("store", help="the store's health, repair, backups").add_subparsers(
        dest="store_command", metavar="<command>", required=True
    )
    show = store.add_parser(
        "show", parents=[client], help="whether the store went backwards, and the positions"
    )
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_store_show)
    reseed = store.add_parser(
        "reseed",
        parents=[client],
        help="write this replica's copy back into a store that went backwards",
    )
    reseed.add_argument("--json", action="store_true", help="print JSON")
    reseed.set_defaults(func=cmd_store_reseed)
    add_backup_commands(store, client)

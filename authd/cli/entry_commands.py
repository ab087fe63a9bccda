"""`authd entry ...`: registration entries."""

from __future__ import annotations

import argparse

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.client import admin_stub, ask, call
from authd.cli.flags import duration_flag, time_flag
from authd.cli.output import entry_json, entry_lines, print_entry, print_json


def _selector(text: str) -> admin_pb2.Selector:
    # Split only; the daemon checks the type, key and value and names the bad one.
    type_, _, value = text.partition(":")
    return admin_pb2.Selector(type=type_, value=value)


def _apply_entry_flags(entry: admin_pb2.Entry, args: argparse.Namespace) -> None:
    """Set the fields given on the command line; the others keep their value."""
    if args.spiffe_id is not None:
        entry.spiffe_id = args.spiffe_id
    if args.parent_id is not None:
        entry.parent_id = args.parent_id
    if args.selector is not None:
        del entry.selectors[:]
        entry.selectors.extend(_selector(s) for s in args.selector)
    if args.x509_svid_ttl is not None:
        entry.x509_svid_ttl = duration_flag(args.x509_svid_ttl, "--x509-svid-ttl")
    if args.jwt_svid_ttl is not None:
        entry.jwt_svid_ttl = duration_flag(args.jwt_svid_ttl, "--jwt-svid-ttl")
    if args.dns is not None or getattr(args, "clear_dns", False):
        entry.dns_names[:] = args.dns or []
    if args.federates_with is not None or getattr(args, "clear_federates_with", False):
        entry.federates_with[:] = args.federates_with or []
    if args.admin is not None:
        entry.admin = args.admin
    if args.downstream is not None:
        entry.downstream = args.downstream
    if args.hint is not None:
        entry.hint = args.hint
    if args.expires_at is not None:
        entry.expires_at = time_flag(args.expires_at, "--expires-at")


def cmd_entry_create(args: argparse.Namespace) -> int:
    entry = admin_pb2.Entry(id=args.entry_id or "")
    _apply_entry_flags(entry, args)
    reply = ask(args, "CreateEntry", admin_pb2.CreateEntryRequest(entry=entry))
    print_entry(reply.entry, args.json)
    return 0


def cmd_entry_show(args: argparse.Namespace) -> int:
    reply = ask(args, "GetEntry", admin_pb2.GetEntryRequest(id=args.id))
    print_entry(reply.entry, args.json)
    return 0


def cmd_entry_list(args: argparse.Namespace) -> int:
    request = admin_pb2.ListEntriesRequest(
        spiffe_id=args.spiffe_id or "", parent_id=args.parent_id or "", selector=args.selector or ""
    )
    reply = ask(args, "ListEntries", request)
    if args.json:
        print_json({"entries": [entry_json(e) for e in reply.entries]})
        return 0
    count = len(reply.entries)
    print(f"Found {count} {'entry' if count == 1 else 'entries'}")
    for entry in reply.entries:
        print()
        print("\n".join(entry_lines(entry)))
    return 0


def cmd_entry_update(args: argparse.Namespace) -> int:
    channel, admin = admin_stub(args)
    with channel:
        current = call(admin.GetEntry, admin_pb2.GetEntryRequest(id=args.id)).entry
        entry = admin_pb2.Entry()
        entry.CopyFrom(current)
        _apply_entry_flags(entry, args)
        # Without --revision the update is based on what was just read, so a change made
        # by someone else in between is refused rather than overwritten.
        if args.revision is not None:
            entry.revision = args.revision
        reply = call(admin.UpdateEntry, admin_pb2.UpdateEntryRequest(entry=entry))
    print_entry(reply.entry, args.json)
    return 0


def cmd_entry_delete(args: argparse.Namespace) -> int:
    ask(args, "DeleteEntry", admin_pb2.DeleteEntryRequest(id=args.id))
    if args.json:
        print_json({"deleted": args.id})
        return 0
    print(f"Deleted entry {args.id}")
    return 0

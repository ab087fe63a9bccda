"""`authd store backup`, `authd store restore` and `authd store accept`.

A backup is taken by the daemon (consistent while it runs) and streamed here; the file is
written next to FILE under a temporary name (0600), checked whole (checksum and audit
chain), flushed to disk and only then renamed to FILE, so FILE is either the old file or a
complete, verified backup. A restore streams the file to the daemon, which verifies it before
it touches the store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.client import admin_stub, ask, rpc_error
from authd.cli.errors import CommandError, Exit
from ca.backup import verify_snapshot
from ca.store.backup_file import BackupError, parse_backup

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[Any]

BACKUP_TIMEOUT = 600.0  # a large store takes a while to stream
CHUNK = 1 << 20


def _position(message: admin_pb2.StorePosition) -> dict[str, object]:
    return {
        "generation": message.generation,
        "audit_seq": message.audit_seq,
        "audit_hash": message.audit_hash,
    }


def _line(message: admin_pb2.StorePosition) -> str:
    generation = message.generation or "(none)"
    return f"generation {generation}, audit record {message.audit_seq} ({message.audit_hash[:12]})"


def _write_private(target: Path, chunks: Iterator[bytes]) -> Path:
    """``chunks`` in a new 0600 file next to ``target``; its path (the caller renames it)."""
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise CommandError(f"cannot write {target}: {exc.strerror}") from None
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def cmd_store_backup(args: argparse.Namespace) -> int:
    target = Path(args.file)
    channel, admin = admin_stub(args)
    with channel:
        stream = admin.BackupStore(admin_pb2.BackupStoreRequest(), timeout=BACKUP_TIMEOUT)
        try:
            path = _write_private(target, (chunk.data for chunk in stream))
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        except OSError as exc:
            raise CommandError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with path.open("rb") as written:
            backup = parse_backup(written)
        verify_snapshot(backup.snapshot)
        os.replace(path, target)
    except BackupError as exc:
        path.unlink(missing_ok=True)
        raise CommandError(f"the backup received does not verify, nothing written: {exc}") from None
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise CommandError(f"cannot write {target}: {exc.strerror}") from None
    with contextlib.suppress(OSError):
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    head, counts = backup.snapshot.position, backup.snapshot.counts()
    if args.json:
        shown = {
            "file": str(target),
            "source": backup.source,
            "created_at": backup.created_at,
            "generation": head.generation,
            "audit_seq": head.audit_seq,
            "audit_hash": head.audit_hash,
            "counts": counts,
        }
        print(json.dumps(shown, indent=2))
        return 0
    print(
        f"backup written to {target} (0600): generation {head.generation}, audit record "
        f"{head.audit_seq} ({head.audit_hash}); {counts['authorities']} authorities, "
        f"{counts['entries']} entries, {counts['revocations']} revocations, "
        f"{counts['issuances']} issuances"
    )
    return 0


def _restore_requests(source: Any, force: bool) -> Iterator[admin_pb2.RestoreStoreRequest]:
    first = True
    while True:
        data = source.read(CHUNK)
        if not data and not first:
            return
        yield admin_pb2.RestoreStoreRequest(data=data, force=force if first else False)
        first = False
        if not data:
            return


def cmd_store_restore(args: argparse.Namespace) -> int:
    try:
        source = open(args.file, "rb")  # noqa: SIM115 (closed below, after the stream)
    except FileNotFoundError:
        raise CommandError(f"not found: no backup file {args.file}", Exit.NOT_FOUND) from None
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}") from None
    with source:
        channel, admin = admin_stub(args)
        with channel:
            try:
                reply = admin.RestoreStore(
                    _restore_requests(source, args.force), timeout=BACKUP_TIMEOUT
                )
            except grpc.RpcError as exc:
                raise rpc_error(exc) from None
    if args.json:
        shown = {
            name: _position(getattr(reply, name)) for name in ("replaced", "restored", "position")
        }
        shown["counts"] = {
            "authorities": reply.authorities,
            "entries": reply.entries,
            "revocations": reply.revocations,
            "issuances": reply.issuances,
            "audit": reply.audit_records,
        }
        shown["forced"] = reply.forced
        print(json.dumps(shown, indent=2))
        return 0
    print(
        f"store restored from {args.file}{' (forced)' if reply.forced else ''}: "
        f"{_line(reply.position)}, the backup's {_line(reply.restored)} and a store.restored "
        f"record; {reply.authorities} authorities, {reply.entries} entries, "
        f"{reply.revocations} revocations, {reply.issuances} issuances; it replaced "
        f"{_line(reply.replaced)}"
    )
    print(
        "replicas on a shared store that saw more report a store regression: run "
        f"`authd store accept --audit-hash {reply.position.audit_hash}` on each "
        "(or `authd store reseed` there to undo this restore)"
    )
    return 0


def cmd_store_accept(args: argparse.Namespace) -> int:
    request = admin_pb2.AcceptStoreRequest(audit_hash=args.audit_hash)
    reply = ask(args, "AcceptStore", request)
    if args.json:
        shown = {"previous": _position(reply.previous), "adopted": _position(reply.adopted)}
        print(json.dumps(shown, indent=2))
        return 0
    print(
        f"store accepted as it is: {_line(reply.adopted)}; this replica had seen "
        f"{_line(reply.previous)}"
    )
    return 0


def add_backup_commands(store: Subparsers, client: argparse.ArgumentParser) -> None:
    """Register `authd store backup|restore|accept` under `authd store`."""
    backup = store.add_parser(
        "backup",
        parents=[client],
        help="write a consistent, verified backup of the store to FILE (0600)",
    )
    backup.add_argument("file", metavar="FILE", help="the backup file (replaced atomically)")
    backup.add_argument("--json", action="store_true", help="print JSON")
    backup.set_defaults(func=cmd_store_backup)
    restore = store.add_parser(
        "restore",
        parents=[client],
        help="verify a backup file and write it back into the store",
    )
    restore.add_argument("file", metavar="FILE", help="a file `authd store backup` wrote")
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore even onto a store (or past this replica's view) ahead of the backup",
    )
    restore.add_argument("--json", action="store_true", help="print JSON")
    restore.set_defaults(func=cmd_store_restore)
    accept = store.add_parser(
        "accept",
        parents=[client],
        help="adopt a store found behind this replica as it is (after a deliberate restore)",
    )
    accept.add_argument(
        "--audit-hash",
        required=True,
        metavar="HASH",
        help="the store's audit head hash, as `authd store show` or the restore printed it",
    )
    accept.add_argument("--json", action="store_true", help="print JSON")
    accept.set_defaults(func=cmd_store_accept)

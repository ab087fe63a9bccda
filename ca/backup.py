"""Backups of a store: taking a consistent snapshot, checking one, and writing one back.

A snapshot is verified before anything is written: its audit chain end to end (as ``authd
audit verify`` does), its head against the position it claims, and its records for the
duplicates no store would hold. ``ahead_of_backup`` says why restoring would lose history a
store (or a replica) already has. ``restore_snapshot`` builds a staging SQLite copy first, so
a record no store accepts is found before the target is touched; a SQLite target is then
replaced in one transaction, a Redis one emptied and rewritten, its audit chain last.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ca.audit import verify_chain
from ca.store import AUDIT_GENESIS_HASH, RedisStore, SQLiteStore, Store, StoreError
from ca.store.backup_file import BackupError
from ca.store.records import AuditRecord, StorePosition
from ca.store.redis.keys import entry_signature
from ca.store.redis.snapshot import load_redis_snapshot, take_redis_snapshot
from ca.store.snapshot import StoreSnapshot, read_snapshot

__all__ = [
    "ahead_of_backup",
    "restore_snapshot",
    "source_of",
    "take_snapshot",
    "verify_snapshot",
]


def source_of(store: Store) -> str:
    return "redis" if isinstance(store, RedisStore) else "sqlite"


def _scratch_file(directory: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(dir=directory, prefix=".authd-", suffix=suffix)
    os.close(fd)
    os.unlink(name)  # SQLite makes it afresh (0600)
    return Path(name)


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            Path(f"{path}{suffix}").unlink()


def take_snapshot(store: Store, sequences: Sequence[str], *, scratch: Path) -> StoreSnapshot:
    """``store``'s contents at one point in time, while others may write to it (``scratch``:
    a private directory for SQLite's copy)."""
    if isinstance(store, RedisStore):
        return take_redis_snapshot(store, sequences)
    if isinstance(store, SQLiteStore):
        copy_path = _scratch_file(scratch, ".snapshot.db")
        try:
            store.copy_to(copy_path)
            with SQLiteStore(copy_path) as copy:
                return read_snapshot(copy, sequences)
        finally:
            _remove_sqlite_files(copy_path)
    return read_snapshot(store, sequences)


def _duplicates(keys: Sequence[object]) -> list[object]:
    seen: set[object] = set()
    return [key for key in keys if key in seen or seen.add(key)]  # type: ignore[func-returns-value]


def verify_snapshot(snapshot: StoreSnapshot) -> None:
    """``BackupError`` unless the audit chain verifies end to end, ends at the snapshot's
    position, and no two records claim the same identity."""
    verdict = verify_chain(snapshot.audit)
    if not verdict.intact:
        raise BackupError(f"audit chain broken at record {verdict.broken_seq}: {verdict.problem}")
    head = snapshot.audit[-1] if snapshot.audit else None
    claimed = snapshot.position
    if (claimed.audit_seq, claimed.audit_hash) != (
        (head.seq, head.hash) if head else (0, AUDIT_GENESIS_HASH)
    ):
        raise BackupError(
            f"the header says the audit chain ends at record {claimed.audit_seq} "
            f"({claimed.audit_hash[:12]}), but it ends at record {head.seq if head else 0}"
        )
    for what, keys in (
        ("authority", [r.authority_id for r in snapshot.authorities]),
        ("registration entry", [e.entry_id for e in snapshot.entries]),
        ("entry selector set", [entry_signature(e) for e in snapshot.entries]),
        ("revocation", [(r.target_kind, r.target) for r in snapshot.revocations]),
        ("issuance", [r.serial for r in snapshot.issuances]),
    ):
        repeated = _duplicates(keys)
        if repeated:
            raise BackupError(f"{what} {repeated[0]!r} appears twice")


def ahead_of_backup(
    position: StorePosition, audit: Sequence[AuditRecord], backup: StorePosition, what: str
) -> str | None:
    """Why ``position`` (of a store, or one a replica saw) holds history the backup (its
    position and ``audit`` chain) lacks, in one line; None if the backup covers it."""
    if position.audit_seq == 0:
        return None  # an empty history: a new or wiped store
    if position.generation != backup.generation:
        return (
            f"{what} is another store (generation {position.generation or '(none)'}, audit "
            f"record {position.audit_seq}) than the backup's (generation {backup.generation})"
        )
    if position.audit_seq > backup.audit_seq:
        return (
            f"{what} is at audit record {position.audit_seq}, ahead of the backup's record "
            f"{backup.audit_seq}: restoring loses the changes since"
        )
    if audit[position.audit_seq - 1].hash != position.audit_hash:
        return f"{what} has another audit record {position.audit_seq} than the backup"
    return None


def restore_snapshot(store: Store, snapshot: StoreSnapshot, *, scratch: Path) -> None:
    """Make ``store`` hold exactly ``snapshot`` (verified by the caller). ``BackupError`` (and
    the store untouched) if its records cannot be stored; ``StoreError`` if the store fails."""
    staging_path = _scratch_file(scratch, ".restore.db")
    try:
        with SQLiteStore(staging_path) as staging:
            try:
                staging.load_snapshot(snapshot)
            except StoreError as exc:
                raise BackupError(f"its records cannot be stored: {exc}") from None
            if isinstance(store, RedisStore):
                load_redis_snapshot(store, staging, snapshot)
            elif isinstance(store, SQLiteStore):
                store.load_snapshot(snapshot)
            else:
                raise StoreError(f"cannot restore into a {type(store).__name__}")
    finally:
        _remove_sqlite_files(staging_path)

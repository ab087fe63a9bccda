"""A full local copy of a shared store, and the copying that keeps it and that reseeds one.

A replica on Redis keeps ``<data_dir>/mirror.db`` (a SQLite store, 0600) equal to the shared
store while that store is in step: rebuilt on every resync, updated on every change the feed
reports. If the shared store goes backwards, the mirror still holds what the replica last
saw, and ``reseed`` writes it back: authorities (hence the bundle), counters, entries (with
their revisions), revocations, and the audit chain record by record, which reproduces every
hash, since a record's hash depends only on its content and the one before it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ca.store.base import Change, NotFound, Store, StoreError
from ca.store.records import AuditRecord, Revocation
from ca.store.sqlite import SQLiteStore

__all__ = ["ReseedResult", "StoreMirror", "copy_audit", "copy_state"]


def _revocation_key(revocation: Revocation) -> tuple[str, str]:
    return (revocation.target_kind, revocation.target)


def copy_revocations(source: Store, target: Store) -> None:
    """Make ``target``'s revocations those of ``source``."""
    wanted = {_revocation_key(r): r for r in source.list_revocations()}
    held = {_revocation_key(r): r for r in target.list_revocations()}
    for key, revocation in held.items():
        if wanted.get(key) != revocation:
            target.remove_revocation(*key)
    for key, revocation in wanted.items():
        if held.get(key) != revocation:
            target.add_revocation(revocation)


def copy_entry(source: Store, target: Store, entry_id: str) -> None:
    """Make ``target``'s entry ``entry_id`` that of ``source`` (revision included)."""
    try:
        wanted = source.get_entry(entry_id)
    except NotFound:
        with contextlib.suppress(NotFound):
            target.delete_entry(entry_id)
        return
    try:
        held = target.get_entry(entry_id)
    except NotFound:
        held = target.create_entry(wanted)
    # Updates move the revision on one by one; a store's revision only grows, so an entry
    # is deleted and made again if the target's is somehow ahead.
    if held.revision > wanted.revision:
        target.delete_entry(entry_id)
        held = target.create_entry(wanted)
    while held.revision < wanted.revision or replace(held, revision=0) != replace(
        wanted, revision=0
    ):
        held = target.update_entry(wanted, expected_revision=held.revision)
        if held.revision > wanted.revision:
            break


def copy_entries(source: Store, target: Store) -> None:
    wanted = {e.entry_id for e in source.list_entries()}
    for entry in target.list_entries():
        if entry.entry_id not in wanted:
            target.delete_entry(entry.entry_id)
    for entry_id in sorted(wanted):
        copy_entry(source, target, entry_id)


def copy_authorities(source: Store, target: Store) -> None:
    wanted = source.list_authorities()
    ids = {r.authority_id for r in wanted}
    for record in target.list_authorities():
        if record.authority_id not in ids:
            target.delete_authority(record.authority_id)
    if wanted:
        target.save_authorities(wanted)


def copy_sequences(source: Store, target: Store, names: Iterable[str]) -> None:
    """Counters only grow: ``target``'s are brought up to ``source``'s."""
    for name in names:
        wanted = source.current_sequence(name)
        while target.current_sequence(name) < wanted:
            target.next_sequence(name)


def copy_state(source: Store, target: Store, sequences: Iterable[str]) -> None:
    """Make ``target``'s authorities, counters, entries and revocations those of ``source``."""
    copy_sequences(source, target, sequences)
    copy_authorities(source, target)
    copy_entries(source, target)
    copy_revocations(source, target)


def _append(target: Store, record: AuditRecord) -> AuditRecord:
    return target.append_audit(
        time=record.time,
        actor=record.actor,
        action=record.action,
        subject=record.subject,
        details=record.details,
    )


def copy_audit(source: Store, target: Store) -> None:
    """Append to ``target`` the records of ``source``'s chain it lacks.

    ``StoreError`` if ``target``'s chain is not a prefix of ``source``'s (it must then be
    rebuilt): copied records reproduce ``source``'s hashes only on the same chain.
    """
    head = target.position()
    if head.audit_seq > 0:
        mine = source.list_audit(after_seq=head.audit_seq - 1)
        if not mine or mine[0].seq != head.audit_seq or mine[0].hash != head.audit_hash:
            raise StoreError("the copy's audit chain is not a prefix of the store's")
    for record in source.list_audit(after_seq=head.audit_seq):
        copied = _append(target, record)
        if copied.hash != record.hash:
            raise StoreError(f"audit record {record.seq} did not copy to the same hash")


@dataclass(frozen=True)
class ReseedResult:
    """What a reseed wrote: the audit head it left, and what it kept of the regressed store."""

    audit_seq: int
    audit_hash: str
    kept_revocations: int
    kept_audit_records: int


class StoreMirror:
    """``path``, a SQLite copy of the shared store, kept equal to it while it is in step."""

    def __init__(self, path: Path, sequences: Sequence[str]) -> None:
        self.path = path
        self.sequences = tuple(sequences)
        self._lock = threading.Lock()
        self._store = SQLiteStore(path)

    @property
    def store(self) -> Store:
        return self._store

    def close(self) -> None:
        self._store.close()

    def refresh(self, source: Store, changes: Sequence[Change] | None = None) -> None:
        """Bring the mirror level with ``source``: everything (``changes`` None, on a
        resync), or what ``changes`` name; the audit chain in both cases."""
        with self._lock:
            try:
                copy_audit(source, self._store)
            except StoreError:
                if source.position().audit_seq < self._store.position().audit_seq:
                    # The store went backwards since it was found in step: keep the copy.
                    raise
                # Another history than the one mirrored (a mirror left from an older store
                # this data directory once used): start the copy again.
                self._store.close()
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                self._store = SQLiteStore(self.path)
                copy_audit(source, self._store)
                changes = None
            if changes is None:
                copy_state(source, self._store, self.sequences)
                return
            if changes:
                copy_sequences(source, self._store, self.sequences)
            for change in changes:
                if change["kind"] == "entry":
                    copy_entry(source, self._store, change["key"])
                elif change["kind"] == "authority":
                    copy_authorities(source, self._store)
                elif change["kind"] == "revocation":
                    self._copy_revocation(source, change["key"])

    def rebuild(self, source: Store) -> None:
        """Throw the copy away and make it again from ``source`` (after a restore)."""
        with self._lock:
            self._store.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._store = SQLiteStore(self.path)
            copy_audit(source, self._store)
            copy_state(source, self._store, self.sequences)

    def _copy_revocation(self, source: Store, key: str) -> None:
        kind, _, target = key.partition(":")
        try:
            wanted: Revocation | None = source.get_revocation(kind, target)
        except NotFound:
            wanted = None
        try:
            held: Revocation | None = self._store.get_revocation(kind, target)
        except NotFound:
            held = None
        if held == wanted:
            return
        if held is not None:
            self._store.remove_revocation(kind, target)
        if wanted is not None:
            self._store.add_revocation(wanted)

    def head(self) -> tuple[int, str]:
        position = self._store.position()
        return position.audit_seq, position.audit_hash

    def leftovers(self, regressed: Store) -> tuple[list[Revocation], list[AuditRecord]]:
        """What ``regressed`` holds that the mirror does not: revocations, and audit records
        off the mirrored chain (made on the regressed store after it went backwards)."""
        with self._lock:
            mine = {_revocation_key(r) for r in self._store.list_revocations()}
            mirrored = {(r.seq, r.hash) for r in self._store.list_audit()}
        revocations = [r for r in regressed.list_revocations() if _revocation_key(r) not in mine]
        records = [r for r in regressed.list_audit() if (r.seq, r.hash) not in mirrored]
        return revocations, records

    def reseed(
        self,
        fresh: Store,
        *,
        revocations: Sequence[Revocation] = (),
        audit: Sequence[AuditRecord] = (),
    ) -> ReseedResult:
        """Write the mirror into ``fresh`` (an emptied store, its generation already the
        original), then ``revocations`` and ``audit`` kept from the regressed store."""
        with self._lock:
            copy_state(self._store, fresh, self.sequences)
            held = {_revocation_key(r) for r in fresh.list_revocations()}
            for revocation in revocations:
                if _revocation_key(revocation) not in held:
                    fresh.add_revocation(revocation)
            # The audit chain last: replicas trust the store again once it reaches the
            # position they remember, so everything else must be there by then.
            copy_audit(self._store, fresh)
        for record in audit:
            _append(fresh, record)
        head = fresh.position()
        return ReseedResult(head.audit_seq, head.audit_hash, len(revocations), len(audit))

"""`authd store backup` and `authd store restore` as admin operations.

``backup`` writes a consistent snapshot of the store (``ca.backup``) into a private file of
the data directory, which the servicer streams to the client and removes. ``restore`` reads
an uploaded file, verifies it whole (checksum, audit chain, records) and refuses a store, or
a view of this replica, that holds history the backup lacks unless forced; only then does it
write. The restored store keeps the backup's generation and gets one more audit record,
``store.restored``; this replica adopts it at once (the operator asked for it here), while
other replicas that saw more find it behind them and say so until the operator accepts it
there (`authd store accept`) or reseeds it from them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from authd.admin.callers import AdminCaller
from authd.admin.errors import FailedPrecondition, InvalidArgument, store_refusal
from ca.backup import (
    ahead_of_backup,
    restore_snapshot,
    source_of,
    take_snapshot,
    verify_snapshot,
)
from ca.clock import Clock
from ca.store import Store, StoreError, StorePosition
from ca.store.backup_file import Backup, BackupError, parse_backup, write_backup
from ca.store.mirror import StoreMirror
from ca.store.regression import RegressionGuard

__all__ = ["BackupOperations", "RestoreResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreResult:
    replaced: StorePosition  # the store's position before
    restored: StorePosition  # the backup's
    position: StorePosition  # the store's now (after the store.restored record)
    counts: dict[str, int]
    forced: bool


class BackupOperations:
    def __init__(
        self,
        store: Store,
        guard: RegressionGuard,
        mirror: StoreMirror | None,
        clock: Clock,
        *,
        scratch: Path,
        sequences: Sequence[str],
        on_adopted: Callable[[], object],
    ) -> None:
        self._store = store
        self._guard = guard
        self._mirror = mirror
        self._clock = clock
        self._scratch = scratch
        self._sequences = tuple(sequences)
        self._on_adopted = on_adopted
        self._lock = threading.Lock()  # one restore at a time

    def backup(self, caller: AdminCaller | str) -> tuple[Path, Backup]:
        """A backup file of the store now, written privately (0600); the caller removes it."""
        try:
            snapshot = take_snapshot(self._store, self._sequences, scratch=self._scratch)
        except StoreError as exc:
            raise store_refusal(exc) from None
        backup = Backup(int(self._clock.now()), source_of(self._store), snapshot)
        fd, name = tempfile.mkstemp(dir=self._scratch, prefix=".authd-", suffix=".backup")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                write_backup(backup, out)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        head = snapshot.position
        log.info(
            "store backup taken by %s: generation %s, audit record %d (%s)",
            caller,
            head.generation,
            head.audit_seq,
            head.audit_hash[:12],
        )
        return path, backup

    def restore(
        self, caller: AdminCaller | str, source: IO[bytes], *, force: bool
    ) -> RestoreResult:
        try:
            backup = parse_backup(source)
            verify_snapshot(backup.snapshot)
        except BackupError as exc:
            raise InvalidArgument(f"backup file refused, store untouched: {exc}") from None
        with self._lock:
            try:
                return self._restore(caller, backup, force=force)
            except BackupError as exc:
                raise InvalidArgument(f"backup file refused, store untouched: {exc}") from None
            except StoreError as exc:
                raise store_refusal(exc) from None

    def _restore(self, caller: AdminCaller | str, backup: Backup, *, force: bool) -> RestoreResult:
        snapshot = backup.snapshot
        wanted = snapshot.position
        found = self._store.position()
        reasons = [
            ahead_of_backup(found, snapshot.audit, wanted, "the store"),
            None
            if self._guard.remembered is None
            else ahead_of_backup(self._guard.remembered, snapshot.audit, wanted, "this replica"),
        ]
        refusals = [reason for reason in reasons if reason]
        if refusals and not force:
            raise FailedPrecondition(
                f"store not restored: {refusals[0]}; `authd store restore --force` restores "
                "it anyway, and what the backup lacks is lost"
            )
        # Counters only grow: a bundle sequence or CRL number is never handed out twice.
        counters = {
            name: max(snapshot.sequences.get(name, 0), self._store.current_sequence(name))
            for name in sorted({*snapshot.sequences, *self._sequences})
        }
        with self._guard.suspended():
            restore_snapshot(self._store, snapshot.with_sequences(counters), scratch=self._scratch)
            self._store.append_audit(
                time=int(self._clock.now()),
                actor=str(caller),
                action="store.restored",
                subject="store",
                details={
                    "backup_created_at": backup.created_at,
                    "backup_audit_seq": wanted.audit_seq,
                    "backup_audit_hash": wanted.audit_hash,
                    "replaced_generation": found.generation,
                    "replaced_audit_seq": found.audit_seq,
                    "replaced_audit_hash": found.audit_hash,
                    "forced": bool(refusals),
                },
            )
            if self._mirror is not None:
                self._mirror.rebuild(self._store)
        _, position = self._guard.adopt()
        log.warning(
            "store restored by %s from a backup at audit record %d (%s)%s; it replaced "
            "generation %s at audit record %d. Other replicas that saw more report a store "
            "regression until `authd store accept --audit-hash %s` runs there",
            caller,
            wanted.audit_seq,
            wanted.audit_hash[:12],
            f" (forced: {refusals[0]})" if refusals else "",
            found.generation or "(none)",
            found.audit_seq,
            position.audit_hash,
        )
        try:
            self._on_adopted()
        except Exception:
            log.exception("store restored, but reloading this replica's view failed")
        return RestoreResult(found, wanted, position, snapshot.counts(), bool(refusals))

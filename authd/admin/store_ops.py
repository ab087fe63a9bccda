"""The store's health as admin operations: whether it went backwards, and the repair.

``show`` reads the store's position against what this replica remembers. ``reseed`` writes
this replica's copy of the store (its mirror) back into a regressed shared store under the
original generation; see ``ca.store.redis.reseeding`` for when it is refused.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from authd.admin.backups import BackupOperations
from authd.admin.callers import AdminCaller
from authd.admin.errors import FailedPrecondition, store_refusal
from ca.clock import Clock
from ca.store import RedisStore, Store, StoreError, StorePosition
from ca.store.mirror import ReseedResult, StoreMirror
from ca.store.redis.reseeding import ReseedRefused, reseed_from_mirror
from ca.store.regression import RegressionGuard

__all__ = ["StoreOperations", "StoreState"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreState:
    regressed: bool
    reason: str
    remembered: StorePosition | None
    found: StorePosition | None
    mirror: StorePosition | None


class StoreOperations:
    def __init__(
        self,
        store: Store,
        guard: RegressionGuard,
        mirror: StoreMirror | None,
        clock: Clock,
        *,
        replica: str,
        scratch: Path | None = None,
        sequences: Sequence[str] = (),
        on_adopted: Callable[[], object] = lambda: None,
    ) -> None:
        """``scratch``: a private directory for backup files and staging copies (backup and
        restore are refused without one); ``sequences``: the counters a backup carries;
        ``on_adopted``: reloads this replica's view after it adopted a rewritten store."""
        self._store = store
        self._guard = guard
        self._mirror = mirror
        self._clock = clock
        self._replica = replica
        self._on_adopted = on_adopted
        self._lock = threading.Lock()  # one reseed at a time
        self._backups = (
            None
            if scratch is None
            else BackupOperations(
                store,
                guard,
                mirror,
                clock,
                scratch=scratch,
                sequences=sequences,
                on_adopted=on_adopted,
            )
        )

    @property
    def backups(self) -> BackupOperations:
        if self._backups is None:
            raise FailedPrecondition("this server takes no backups of its store")
        return self._backups

    def accept(
        self, caller: AdminCaller | str, audit_hash: str
    ) -> tuple[StorePosition, StorePosition]:
        """Adopt a store found behind this replica (restored on purpose elsewhere) as it is,
        if its audit head still has ``audit_hash``: returns what was remembered and what is
        adopted."""
        with self._lock:
            try:
                if self._guard.in_step():
                    raise FailedPrecondition(
                        "the store is in step with this replica: nothing to accept"
                    )
                found = self._store.position()
                if found.audit_hash != audit_hash:
                    raise FailedPrecondition(
                        f"store not accepted: its audit head is record {found.audit_seq} "
                        f"({found.audit_hash}), not {audit_hash}; look again with "
                        "`authd store show`"
                    )
                if self._mirror is not None:
                    self._mirror.rebuild(self._store)
                before, adopted = self._guard.adopt(audit_hash)
            except StoreError as exc:
                raise store_refusal(exc) from None
        assert before is not None  # a regression needs a remembered position
        log.warning("store accepted by %s as it is; this replica's view is reloaded", caller)
        try:
            self._on_adopted()
        except Exception:
            log.exception("store accepted, but reloading this replica's view failed")
        return before, adopted

    def show(self) -> StoreState:
        try:
            self._guard.in_step()
        except StoreError as exc:
            raise store_refusal(exc) from None
        mirror = None
        if self._mirror is not None:
            seq, digest = self._mirror.head()
            generation = self._guard.remembered.generation if self._guard.remembered else ""
            mirror = StorePosition(generation, seq, digest)
        return StoreState(
            self._guard.regressed,
            self._guard.reason,
            self._guard.remembered,
            self._guard.found,
            mirror,
        )

    def reseed(self, caller: AdminCaller | str) -> ReseedResult:
        """Write this replica's copy back into the regressed store (``caller``: an admin, or
        ``"authd"`` itself with ``store.auto_reseed``)."""
        if self._mirror is None or not isinstance(self._store, RedisStore):
            raise FailedPrecondition(
                "this replica keeps no copy of its store (an embedded SQLite store): "
                "`authd store restore` a backup, or `authd store accept` the store as it is"
            )
        with self._lock:
            try:
                result = reseed_from_mirror(
                    self._store,
                    self._mirror,
                    self._guard,
                    replica=self._replica,
                    actor=str(caller),
                    now=int(self._clock.now()),
                )
            except ReseedRefused as exc:
                raise FailedPrecondition(f"store not reseeded: {exc}") from None
            except StoreError as exc:
                raise store_refusal(exc) from None
        log.warning(
            "store reseeded by %s from this replica's copy: audit head %d (%s); kept %d "
            "revocations and %d audit records made on the regressed store",
            caller,
            result.audit_seq,
            result.audit_hash[:12],
            result.kept_revocations,
            result.kept_audit_records,
        )
        return result

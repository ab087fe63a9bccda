"""Whether a store went backwards: the comparison rule, and the guard replicas consult.

A replica remembers the store's generation and the highest audit head it has seen
(``ca.store.position_memory``). A store whose generation differs or is missing, whose audit
head is behind the remembered one, or whose chain no longer holds the remembered record
(history rewritten) has *regressed*: it lost acknowledged changes, so its state must not be
adopted (a revocation it forgot would be allowed again, authorities it lost would be made
anew). ``RegressionGuard.in_step()`` says whether the store may be trusted now, remembers the
position when it may, and logs once when that changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ca.store.base import Store, StoreError
from ca.store.position_memory import PositionMemory
from ca.store.records import StorePosition

__all__ = ["RegressionGuard", "find_regression"]

log = logging.getLogger(__name__)


def _short(position: StorePosition) -> str:
    generation = position.generation or "(none)"
    head = f"audit record {position.audit_seq} ({position.audit_hash[:12]})"
    return f"generation {generation}, {head}"


def find_regression(
    remembered: StorePosition | None,
    found: StorePosition,
    *,
    remembered_hash_in_found: str | None = None,
) -> str | None:
    """Why ``found`` is behind ``remembered`` (one line), or None when it is not.

    ``remembered_hash_in_found`` is the hash the found chain has at ``remembered.audit_seq``
    when the found head is past it (None if unknown or not read): it must be the remembered
    one, else the history was rewritten and then extended.
    """
    if remembered is None:
        return None  # first contact: nothing to compare with
    if not found.generation:
        return "the store has no generation (it was wiped or replaced)"
    if found.generation != remembered.generation:
        return (
            f"the store's generation is {found.generation}, not {remembered.generation} "
            "(it was wiped or replaced)"
        )
    if found.audit_seq < remembered.audit_seq:
        return (
            f"the store's audit head is record {found.audit_seq}, behind record "
            f"{remembered.audit_seq} already seen (acknowledged changes are lost)"
        )
    if found.audit_seq == remembered.audit_seq and found.audit_hash != remembered.audit_hash:
        return f"audit record {found.audit_seq} has another hash (history rewritten)"
    if (
        found.audit_seq > remembered.audit_seq
        and remembered_hash_in_found is not None
        and remembered_hash_in_found != remembered.audit_hash
    ):
        return (
            f"audit record {remembered.audit_seq} has another hash than when seen "
            "(history rewritten, then extended)"
        )
    return None


class RegressionGuard:
    """Compares a store with what this replica remembers; safe to call from any thread.

    ``publish(remembered)`` is called on every check that finds a regression (so that a
    repair can tell whose copy is the newest); its ``StoreError`` is ignored.
    """

    def __init__(
        self,
        store: Store,
        memory: PositionMemory,
        *,
        publish: Callable[[StorePosition], object] = lambda position: None,
    ) -> None:
        self._store = store
        self._memory = memory
        self._publish = publish
        self._lock = threading.Lock()
        self.regressed = False
        self.reason = ""
        self.found: StorePosition | None = None
        self._suspended = False

    @property
    def remembered(self) -> StorePosition | None:
        return self._memory.remembered

    def in_step(self) -> bool:
        """Read the store's position; True (and remember it) unless the store regressed.

        ``StoreError`` from the store passes through: unreachable is not regressed.
        """
        with self._lock:
            if self._suspended:
                return False  # being rewritten on purpose (a restore): trust nothing yet
            found = self._store.position()
            remembered = self._memory.remembered
            at_remembered: str | None = None
            if (
                remembered is not None
                and found.generation == remembered.generation
                and found.audit_seq > remembered.audit_seq > 0
            ):
                # Only the records since the last check: the guard runs every feed read.
                records = self._store.list_audit(after_seq=remembered.audit_seq - 1)
                if records and records[0].seq == remembered.audit_seq:
                    at_remembered = records[0].hash
                else:
                    at_remembered = ""  # the remembered record is gone
            reason = find_regression(remembered, found, remembered_hash_in_found=at_remembered)
            self.found = found
            if reason is None:
                self._memory.remember(found)
                if self.regressed:
                    log.warning("store: in step again at %s; adopting its state", _short(found))
                self.regressed, self.reason = False, ""
                return True
            assert remembered is not None  # first contact is never a regression
            if not self.regressed or reason != self.reason:
                log.error(
                    "store regression: %s. This replica last saw %s; the store now has %s. "
                    "Not adopting the store's state: deciding from the last view until "
                    "store.max_staleness, then ext_authz fails closed; no authorities are "
                    "created. Repair with `authd store reseed` on the replica with the newest "
                    "view (it writes back what it holds), or restore the store's data.",
                    reason,
                    _short(remembered),
                    _short(found),
                )
            self.regressed, self.reason = True, reason
            try:
                self._publish(remembered)
            except StoreError as exc:
                log.debug("store regression: cannot publish the remembered position: %s", exc)
            return False

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """While this replica rewrites the store on purpose (a restore), ``in_step()`` is False
        without a report: nothing half written is adopted, and no regression is logged."""
        with self._lock:
            self._suspended = True
        try:
            yield
        finally:
            with self._lock:
                self._suspended = False

    def adopt(self, audit_hash: str | None = None) -> tuple[StorePosition | None, StorePosition]:
        """Accept the store as it is now, even behind what this replica saw (the operator
        restored it on purpose): remember its position. With ``audit_hash``, only if the
        store's audit head still has that hash (``StoreError`` otherwise). Returns the position
        remembered before, and the one adopted."""
        with self._lock:
            found = self._store.position()
            if audit_hash is not None and found.audit_hash != audit_hash:
                raise StoreError(
                    f"the store's audit head is record {found.audit_seq} ({found.audit_hash}), "
                    f"not {audit_hash}: it changed since; look again with `authd store show`"
                )
            before = self._memory.remembered
            self._memory.remember(found)
            self.found = found
            self.regressed, self.reason = False, ""
            log.warning(
                "store: adopted as it is at %s on the operator's word (this replica last saw %s)",
                _short(found),
                _short(before) if before is not None else "nothing",
            )
            return before, found

"""Keeping one replica's in-memory state in step with a shared store, through its ``ChangeFeed``.

Every replica reads the store's change feed in a thread: a revocation made on any replica
reaches this one's ``RevocationView`` within the feed's blocking read (no polling delay),
entry changes reload the entry registry, authority changes reload the CA. On start, on
reconnect after the store was unreachable, and when the feed has a gap, the whole view is
rebuilt from the store (``latest_change_id`` first, so nothing falls between the load and
the feed). While the store is unreachable the replica keeps deciding from its last view;
``staleness()`` says for how long, and callers fail closed past their maximum.

With a ``RegressionGuard``, every read of the feed is followed by a check of the store's
position, before anything read is applied: a store that went backwards (wiped, restarted
from an older snapshot, replaced) is never adopted. The view is then neither rebuilt nor
updated, so it keeps deciding from what it held and goes stale, exactly as if the store were
unreachable, until the store is in step again (repaired by ``authd store reseed``); only
revocations made on the regressed store meanwhile are still applied, since those can only
deny more.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ca.clock import Clock
from ca.revoker import Revoker
from ca.store import Change, ChangeFeed, ChangeFeedGap, StoreError
from ca.store.regression import RegressionGuard

log = logging.getLogger(__name__)


class ReplicaFollower:
    def __init__(
        self,
        feed: ChangeFeed,
        revocations: Revoker,
        clock: Clock,
        *,
        on_entries: Callable[[], object] = lambda: None,
        on_entry: Callable[[str], object] = lambda entry_id: None,
        on_authorities: Callable[[], object] = lambda: None,
        block_ms: int = 500,
        retry_interval: float = 0.5,
        start_from: str | None = None,
        guard: RegressionGuard | None = None,
        on_in_step: Callable[[list[Change] | None], object] = lambda changes: None,
    ) -> None:
        self._feed = feed
        self._revocations = revocations
        self._clock = clock
        self._on_entries = on_entries
        self._on_entry = on_entry
        self._on_authorities = on_authorities
        self._block_ms = block_ms
        self._retry = retry_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replica-follower", daemon=True)
        # The change id taken before the caller loaded its state from the store: following
        # from there avoids loading everything a second time at start.
        self._start_from = start_from
        self._guard = guard
        self._additions_from: str | None = None  # feed position while the store is regressed
        # After the view was brought in step with the store: by a resync (None) or changes.
        self._on_in_step = on_in_step
        self.connected = start_from is not None
        self.resyncs = 0
        self.events = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def staleness(self) -> float:
        """Seconds since the view was last known to match the store."""
        synced = self._revocations.view.synced_at
        return float("inf") if synced is None else max(0.0, self._clock.now() - synced)

    def _resync(self) -> str:
        last = self._feed.latest_change_id()
        self._revocations.sync()
        self._on_entries()
        self._on_authorities()
        self.resyncs += 1
        return last

    def _store_in_step(self) -> bool:
        return self._guard is None or self._guard.in_step()

    def _follow_additions(self) -> None:
        """While the store is regressed, revocations made on it still apply, and nothing
        else: that can only deny more. The view stays stale, so its age still counts."""
        try:
            start = self._additions_from or "0-0"  # a wiped store's feed starts afresh
            self._additions_from, changes = self._feed.changes_since(start, block_ms=self._block_ms)
        except ChangeFeedGap:
            self._additions_from = self._feed.latest_change_id()
            return
        for change in changes:
            if change["kind"] == "revocation" and change["op"] == "add":
                kind, _, target = change["key"].partition(":")
                if not self._revocations.view.contains(kind, target):
                    self._revocations.refresh(kind, target)  # adds it if the store has it

    def _run(self) -> None:
        last: str | None = self._start_from
        while not self._stop.is_set():
            try:
                if last is None:
                    if not self._store_in_step():
                        self.connected = False
                        self._follow_additions()
                        continue
                    self._additions_from = None
                    last = self._resync()
                    self._on_in_step(None)
                    if not self.connected:
                        log.info("replica: in step with the shared store")
                    self.connected = True
                last, changes = self._feed.changes_since(last, block_ms=self._block_ms)
                if not self._store_in_step():
                    last = None  # nothing read from a regressed store is applied
                    self.connected = False
                    continue
                for change in changes:
                    self._apply(change["kind"], change["key"])
                self.events += len(changes)
                self._on_in_step(changes)
                # An answered read, even an empty one, proves the view is current.
                self._revocations.view.synced_at = self._clock.now()
            except ChangeFeedGap:
                log.warning("replica: change feed has a gap; rebuilding from the store")
                last = None
            except StoreError as exc:
                if self.connected:
                    log.warning(
                        "replica: shared store unreachable (%s); deciding from the last view", exc
                    )
                self.connected = False
                last = None
                self._stop.wait(self._retry)
            except Exception:
                log.exception("replica: unexpected failure following the store; rebuilding")
                last = None
                self._stop.wait(self._retry)

    def _apply(self, kind: str, key: str) -> None:
        if kind == "revocation":
            target_kind, _, target = key.partition(":")
            self._revocations.refresh(target_kind, target)
        elif kind == "entry":
            self._on_entry(key)
        elif kind == "authority":
            self._on_authorities()

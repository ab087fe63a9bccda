"""Whether this replica may trust its store: regression detection at start and while running.

The replica remembers its store's position in ``<data_dir>/store-position.json`` (0600). A
store found behind it (``ca.store.regression``) is never adopted: the follower stops applying
it, the rotating replica makes no authorities over it, and gauge ``authd_store_regressed`` is
1. A replica that *starts* on a regressed store has no view of its own to decide from, so
ext_authz fails closed at once (503) until the store is in step again; the admin API stays up
for the repair.

On a shared (Redis) store the replica also keeps ``<data_dir>/mirror.db``, a full copy
refreshed while the store is in step, which ``authd store reseed`` writes back; and it
publishes the position it remembers while the store is regressed, so a reseed from an older
copy than another replica's is refused.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from authd.authz.metrics import AuthzMetrics
from ca.revoker import CRL_NUMBER
from ca.store import Change, RedisStore, Store, StoreError
from ca.store.mirror import StoreMirror
from ca.store.position_memory import PositionMemory
from ca.store.records import StorePosition
from ca.store.redis.reseeding import publish_position
from ca.store.regression import RegressionGuard
from ca.timeline import BUNDLE_SEQUENCE

__all__ = ["MIRROR_FILE", "POSITION_FILE", "StoreTrust"]

log = logging.getLogger(__name__)

POSITION_FILE = "store-position.json"
MIRROR_FILE = "mirror.db"
MIRRORED_SEQUENCES = (BUNDLE_SEQUENCE, CRL_NUMBER)


class StoreTrust:
    """The regression guard of this replica's store, its mirror, and whether its view may be
    used."""

    def __init__(self, store: Store, data_dir: Path, metrics: AuthzMetrics) -> None:
        self.store = store
        self.replica = f"{socket.gethostname()}:{data_dir}"
        self.guard = RegressionGuard(
            store, PositionMemory(data_dir / POSITION_FILE), publish=self._publish
        )
        self.mirror: StoreMirror | None = None
        if store.change_feed() is not None:
            self.mirror = StoreMirror(data_dir / MIRROR_FILE, MIRRORED_SEQUENCES)
        # False when the replica started on a regressed store: what it loaded is not a view.
        self.view_trusted = self.guard.in_step()
        if self.view_trusted:
            self.refresh_mirror(None)
        metrics.add_gauge_source(
            "authd_store_regressed",
            "1 while the store is behind what this replica has seen (wiped, restored, replaced)",
            lambda: 1.0 if self.guard.regressed else 0.0,
        )

    def _publish(self, position: StorePosition) -> None:
        if isinstance(self.store, RedisStore):
            publish_position(self.store, self.replica, position)

    def store_trusted(self) -> bool:
        """Read the store's position now: True unless it went backwards."""
        return self.guard.in_step()

    def remember_now(self) -> None:
        """Check the store and remember its position now (after this process changed it)."""
        try:
            self.guard.in_step()
        except StoreError as exc:
            log.warning("store position not checked: %s", exc)

    def refresh_mirror(self, changes: list[Change] | None) -> None:
        if self.mirror is not None:
            self.mirror.refresh(self.store, changes)

    def view_in_step(self, changes: list[Change] | None) -> None:
        """The view was rebuilt from (``changes`` None), or kept in step with, a store found
        in step: trust it, and bring the mirror level."""
        self.view_trusted = True
        try:
            self.refresh_mirror(changes)
        except StoreError as exc:
            log.warning("store mirror not refreshed: %s", exc)
            raise

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()

"""Whether this replica may trust its store: regression detection at start and while running.

The replica remembers its store's position in ``<data_dir>/store-position.json`` (0600). A
store found behind it (``ca.store.regression``) is never adopted: the follower stops applying
it, the rotating replica makes no authorities over it, and gauge ``authd_store_regressed`` is
1. A replica that *starts* on a regressed store has no view of its own to decide from, so
ext_authz fails closed at once (503) until the store is in step again; the admin API stays up
for the repair.
"""

from __future__ import annotations

from pathlib import Path

from authd.authz.metrics import AuthzMetrics
from ca.store import Store
from ca.store.position_memory import PositionMemory
from ca.store.regression import RegressionGuard

__all__ = ["POSITION_FILE", "StoreTrust"]

POSITION_FILE = "store-position.json"


class StoreTrust:
    """The regression guard of this replica's store and whether its view may be used."""

    def __init__(self, store: Store, data_dir: Path, metrics: AuthzMetrics) -> None:
        self.guard = RegressionGuard(store, PositionMemory(data_dir / POSITION_FILE))
        # False when the replica started on a regressed store: what it loaded is not a view.
        self.view_trusted = self.guard.in_step()
        metrics.add_gauge_source(
            "authd_store_regressed",
            "1 while the store is behind what this replica has seen (wiped, restored, replaced)",
            lambda: 1.0 if self.guard.regressed else 0.0,
        )

    def store_trusted(self) -> bool:
        """Read the store's position now: True unless it went backwards."""
        return self.guard.in_step()

    def view_in_step(self) -> None:
        """The view was (re)built from, or kept in step with, a store found in step."""
        self.view_trusted = True

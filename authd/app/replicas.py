"""A replica on a shared (Redis) store follows the other replicas' changes.

The follower reads the store's change feed on its own thread; every change it applies to
state the serving loop owns (entries, authorities) is handed to the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from authd.workload.registry import EntryRegistry
from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock
from ca.replication import ReplicaFollower
from ca.revoker import Revoker
from ca.store import Change, Store
from ca.store.regression import RegressionGuard

__all__ = ["change_feed_position", "follow_store"]


def change_feed_position(store: Store) -> str | None:
    """Where a shared store's change feed stands (None for an embedded store).

    Read it before loading anything, so the follower replays whatever changes meanwhile.
    """
    feed = store.change_feed()
    return feed.latest_change_id() if feed is not None else None


def follow_store(
    store: Store,
    *,
    ca: CertificateAuthority,
    entries: EntryRegistry,
    revocations: Revoker,
    clock: Clock,
    start_from: str | None,
    guard: RegressionGuard | None = None,
    on_in_step: Callable[[list[Change] | None], object] = lambda changes: None,
) -> ReplicaFollower | None:
    """Start following ``store``'s change feed; None for a store no other replica shares.

    With ``guard``, a store that went backwards is never adopted (see ``ca.replication``);
    ``on_in_step`` runs on the follower's thread each time the view is in step with the store
    (after a resync: None; after changes: those).
    """
    feed = store.change_feed()
    if feed is None:
        return None
    loop = asyncio.get_running_loop()
    follower = ReplicaFollower(
        feed,
        revocations,
        clock,
        on_entries=lambda: loop.call_soon_threadsafe(entries.reload),
        on_entry=lambda entry_id: loop.call_soon_threadsafe(entries.refresh, entry_id),
        on_authorities=lambda: loop.call_soon_threadsafe(ca.reload),
        start_from=start_from,
        guard=guard,
        on_in_step=on_in_step,
    )
    follower.start()
    return follower

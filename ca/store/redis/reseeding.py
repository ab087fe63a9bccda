"""What reseeding a Redis store needs beyond the ``Store`` interface.

Replicas that find the store went backwards publish the position they remember in the hash
``{authd}:replica-positions`` (replica name -> JSON position), so a reseed can refuse to write
back a copy older than what another live replica saw. ``empty_store`` removes every key of
the store and restores its original generation, so the replicas that remember it accept the
store once it is written back.
"""

from __future__ import annotations

import json

from ca.store.base import StoreError
from ca.store.mirror import ReseedResult, StoreMirror
from ca.store.records import StorePosition
from ca.store.redis.store import RedisStore
from ca.store.regression import RegressionGuard

__all__ = [
    "ReseedRefused",
    "empty_store",
    "publish_position",
    "published_positions",
    "reseed_from_mirror",
]


class ReseedRefused(StoreError):
    """A reseed would not make the store whole (or there is nothing to repair)."""


_SCAN_BATCH = 500


def _positions_key(store: RedisStore) -> str:
    return store._keys.prefix + "replica-positions"


def publish_position(store: RedisStore, replica: str, position: StorePosition) -> None:
    """Record that ``replica`` remembers ``position`` of this store."""
    value = json.dumps(
        {
            "generation": position.generation,
            "audit_seq": position.audit_seq,
            "audit_hash": position.audit_hash,
        }
    )
    with store._redis.call() as client:
        client.hset(_positions_key(store), replica, value)


def published_positions(store: RedisStore) -> dict[str, StorePosition]:
    """The positions replicas published, by replica name (unreadable ones are skipped)."""
    with store._redis.call() as client:
        stored = client.hgetall(_positions_key(store))
    positions: dict[str, StorePosition] = {}
    for name, value in stored.items():
        key = name.decode() if isinstance(name, bytes) else str(name)
        try:
            data = json.loads(value)
            positions[key] = StorePosition(
                str(data["generation"]), int(data["audit_seq"]), str(data["audit_hash"])
            )
        except (ValueError, KeyError, TypeError):
            continue
    return positions


def empty_store(store: RedisStore, generation: str) -> None:
    """Delete every key of ``store`` and give it ``generation`` (and the schema) again."""
    pattern = store._keys.prefix.replace("[", "\\[").replace("?", "\\?") + "*"
    with store._redis.call() as client:
        batch: list[str | bytes] = []
        for key in client.scan_iter(match=pattern, count=_SCAN_BATCH):
            batch.append(key)
            if len(batch) >= _SCAN_BATCH:
                client.delete(*batch)
                batch = []
        if batch:
            client.delete(*batch)
        client.set(store._keys.generation, generation)
    store._check_schema()


def reseed_from_mirror(
    store: RedisStore,
    mirror: StoreMirror,
    guard: RegressionGuard,
    *,
    replica: str,
    actor: str,
    now: int,
) -> ReseedResult:
    """Write ``mirror`` back into the regressed ``store`` under its original generation.

    Refused when the store is in step (nothing to repair), when this replica remembers no
    position, when the mirror ends before what this replica saw, or when another replica
    published a newer position of the same store (reseed from that one).
    """
    if guard.in_step():
        raise ReseedRefused("the store is in step with this replica: nothing to reseed")
    remembered = guard.remembered
    if remembered is None:
        raise ReseedRefused("this replica remembers no position of the store")
    head_seq, head_hash = mirror.head()
    if head_seq < remembered.audit_seq:
        raise ReseedRefused(
            f"this replica's copy ends at audit record {head_seq}, before record "
            f"{remembered.audit_seq} it saw; reseed from another replica"
        )
    for name, position in sorted(published_positions(store).items()):
        if name == replica or position.generation != remembered.generation:
            continue
        if position.audit_seq > head_seq:
            raise ReseedRefused(
                f"replica {name} saw audit record {position.audit_seq}, past this replica's "
                f"copy (record {head_seq}): run `authd store reseed` on that replica"
            )
    revocations, records = mirror.leftovers(store)
    empty_store(store, remembered.generation)
    result = mirror.reseed(store, revocations=revocations, audit=records)
    record = store.append_audit(
        time=now,
        actor=actor,
        action="store.reseeded",
        subject="store",
        details={
            "generation": remembered.generation,
            "from_audit_seq": head_seq,
            "from_audit_hash": head_hash,
            "kept_revocations": result.kept_revocations,
            "kept_audit_records": result.kept_audit_records,
        },
    )
    return ReseedResult(record.seq, record.hash, result.kept_revocations, result.kept_audit_records)

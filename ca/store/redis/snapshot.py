"""A Redis store's contents at one point in time, and writing contents back.

``take_redis_snapshot`` reads the audited state (generation, authorities, counters, entries,
revocations, audit chain) in one MULTI/EXEC, which Redis runs with no other command in
between; the entry ids it needs first are read under WATCH, so an entry created or deleted
meanwhile makes it read again. The issuance log, written behind issuance and never audited,
is read just after: it may hold SVIDs signed while the snapshot was taken.

``load_redis_snapshot`` empties the store and writes the contents of a staging copy into it
under the snapshot's generation, the audit chain last (as a reseed does): replicas that
remember the store find it behind them until the chain is back.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import WatchError

from ca.store.base import Store, StoreError
from ca.store.mirror import copy_audit, copy_authorities, copy_entries, copy_revocations
from ca.store.records import AUDIT_GENESIS_HASH, StorePosition
from ca.store.redis.client import reply_text, transaction_pipeline
from ca.store.redis.codec import AUDIT, AUTHORITIES, ENTRIES, MEMBER_TAIL, REVOCATIONS
from ca.store.redis.reseeding import empty_store
from ca.store.redis.store import RedisStore
from ca.store.snapshot import StoreSnapshot

__all__ = ["load_redis_snapshot", "take_redis_snapshot"]

_ATTEMPTS = 50
_ISSUANCE_BATCH = 500


def take_redis_snapshot(store: RedisStore, sequences: Sequence[str]) -> StoreSnapshot:
    """``store``'s contents at one point in time (see the module's docstring)."""
    keys = store._keys
    for _ in range(_ATTEMPTS):
        with store._redis.call() as client, transaction_pipeline(client) as pipe:
            pipe.watch(keys.entries)  # type: ignore[no-untyped-call,unused-ignore]
            ids = sorted(reply_text(i) for i in pipe.smembers(keys.entries))
            pipe.multi()
            pipe.get(keys.generation)
            pipe.hvals(keys.authorities)
            for name in sequences:
                pipe.get(keys.sequence(name))
            pipe.zrangebylex(keys.revocations, "-", "+")
            pipe.zrange(keys.audit, 0, -1)
            for entry_id in ids:
                pipe.get(keys.entry(entry_id))
            try:
                replies = pipe.execute()
            except WatchError:
                continue
        break
    else:
        raise StoreError(
            f"redis store {store._url}: entries kept being created or deleted while the "
            "snapshot was read; try again"
        )
    generation, authorities, *rest = replies
    counters, rest = rest[: len(sequences)], rest[len(sequences) :]
    revocations, audit, *entries = rest
    records = [AUDIT.decode(reply_text(member)) for member in audit]
    head = records[-1] if records else None
    position = StorePosition(
        reply_text(generation) if generation is not None else "",
        head.seq if head else 0,
        head.hash if head else AUDIT_GENESIS_HASH,
    )
    decoded_authorities = sorted(
        (AUTHORITIES.decode(reply_text(value)) for value in authorities),
        key=lambda r: (r.not_before, r.created_at, r.authority_id),
    )
    decoded_entries = sorted(
        (ENTRIES.decode(reply_text(value)) for value in entries if value is not None),
        key=lambda e: (e.created_at, e.entry_id),
    )
    return StoreSnapshot(
        position=position,
        sequences={
            name: 0 if value is None else int(reply_text(value))
            for name, value in zip(sequences, counters, strict=True)
        },
        authorities=tuple(decoded_authorities),
        entries=tuple(decoded_entries),
        revocations=tuple(REVOCATIONS.decode(reply_text(m)[MEMBER_TAIL:]) for m in revocations),
        issuances=tuple(store.list_issuances()),
        audit=tuple(records),
    )


def load_redis_snapshot(store: RedisStore, staging: Store, snapshot: StoreSnapshot) -> None:
    """Make ``store`` hold exactly what ``staging`` (a store loaded with ``snapshot``) holds."""
    empty_store(store, snapshot.position.generation)
    with store._redis.call() as client:
        for name, value in snapshot.sequences.items():
            client.set(store._keys.sequence(name), value)
    copy_authorities(staging, store)
    copy_entries(staging, store)
    copy_revocations(staging, store)
    issuances = list(reversed(staging.list_issuances()))  # oldest first, as they were logged
    for start in range(0, len(issuances), _ISSUANCE_BATCH):
        store.record_issuances(issuances[start : start + _ISSUANCE_BATCH])
    copy_audit(staging, store)

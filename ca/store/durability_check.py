"""The start-up check: can the configured store give the configured durability?

Nothing is written: a Redis store's masters are asked for their persistence and replicas
(``CONFIG GET append*`` and ``INFO replication``; ``INFO persistence`` where CONFIG is not
allowed), and their shortfall is returned as one sentence. An embedded SQLite store gives
``none`` and ``local`` by itself (its ``synchronous`` pragma) and cannot give ``replicas``.
"""

from __future__ import annotations

from ca.store.base import StoreError
from ca.store.durability import Durability, verdict
from ca.store.redis.client import RedisConnection
from ca.store.urls import is_shared, redact_url

__all__ = ["durability_shortfall"]


def durability_shortfall(url: str, durability: Durability) -> str | None:
    """What the store at ``url`` lacks for ``durability``, naming the store; None if nothing.

    Raises ``StoreError`` when a Redis store cannot be reached or read.
    """
    if not is_shared(url):
        if durability.needs_replicas:
            return (
                f"store {redact_url(url)}: store.durability = replicas needs a Redis store;"
                " SQLite has no replicas"
            )
        return None
    connection = RedisConnection(url, durability=durability)
    try:
        with connection.opening():
            masters = connection.persistence()
    finally:
        connection.close()
    if not masters:
        raise StoreError(f"redis store {connection.url}: found no master to check")
    for persistence in masters:
        missing = verdict(durability, persistence)
        if missing is not None:
            return f"redis store {connection.url}: {missing}"
    return None

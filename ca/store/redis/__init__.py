"""The shared backend: one Redis (standalone, Sentinel or Cluster) behind several replicas.

- ``client``: from a store URL to a client; timeouts, no blind retries, watched transactions;
- ``codec``: records as type-checked JSON values, and index members that sort like numbers;
- ``keys``: the key layout, every key of one store in one Cluster hash slot;
- ``feed``: the change feed on a Redis stream, with gap detection;
- ``store``: ``RedisStore``, the ``Store`` built from the four.
"""

from __future__ import annotations

from ca.store.redis.feed import CHANGES_MAXLEN, RedisChangeFeed
from ca.store.redis.store import SCHEMA_VERSION, RedisStore

__all__ = ["CHANGES_MAXLEN", "SCHEMA_VERSION", "RedisChangeFeed", "RedisStore"]

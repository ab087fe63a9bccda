"""Persistent CA state behind one interface (``Store``): SQLite embedded, Redis shared.

A shared store also offers a ``ChangeFeed`` (``Store.change_feed()``), which replicas follow;
``ca.store.urls`` reads store URLs without opening anything.
"""

from __future__ import annotations

from pathlib import Path

from ca.store.base import (
    AlreadyExists,
    AuditDraft,
    Change,
    ChangeFeed,
    ChangeFeedGap,
    Conflict,
    CorruptRecord,
    Fenced,
    NotFound,
    SchemaError,
    Store,
    StoreError,
)
from ca.store.durability import Durability, NotDurable
from ca.store.records import (
    AUDIT_GENESIS_HASH,
    AgentRecord,
    AuditRecord,
    AuthorityRecord,
    FederatedBundleRecord,
    IssuanceRecord,
    JoinTokenRecord,
    RegistrationEntry,
    Revocation,
    Selector,
    StorePosition,
    audit_record_hash,
)
from ca.store.redis import RedisStore
from ca.store.sqlite import SQLiteStore
from ca.store.urls import SQLITE_SCHEME, is_shared, redact_url

__all__ = [
    "AUDIT_GENESIS_HASH",
    "AgentRecord",
    "AlreadyExists",
    "AuditDraft",
    "AuditRecord",
    "AuthorityRecord",
    "Change",
    "ChangeFeed",
    "ChangeFeedGap",
    "Conflict",
    "CorruptRecord",
    "Durability",
    "FederatedBundleRecord",
    "Fenced",
    "IssuanceRecord",
    "JoinTokenRecord",
    "NotDurable",
    "NotFound",
    "RedisStore",
    "RegistrationEntry",
    "Revocation",
    "SQLiteStore",
    "SchemaError",
    "Selector",
    "Store",
    "StoreError",
    "StorePosition",
    "audit_record_hash",
    "is_shared",
    "open_store",
    "redact_url",
]


def open_store(url: str, *, data_dir: Path, durability: Durability | None = None) -> Store:
    """Open the store named by ``url``.

    ``sqlite:///abs/path.db`` is an absolute path, ``sqlite://name.db`` and a bare relative
    path are relative to ``data_dir``, and a bare absolute path is used as it is. Redis URLs
    (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``, ``redis+cluster://`` and
    their TLS forms) open a ``RedisStore``; ``ca.store.redis.client`` documents each.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = SQLITE_SCHEME, url
    if is_shared(url):
        return RedisStore(url, durability=durability)
    if scheme != SQLITE_SCHEME:
        raise StoreError(f"unknown store backend {scheme!r} in store URL {redact_url(url)!r}")
    if not rest:
        raise StoreError(f"store URL {url!r} names no database file")
    return SQLiteStore(data_dir / rest, durability=durability)  # absolute rest replaces data_dir

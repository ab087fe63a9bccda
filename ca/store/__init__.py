"""Persistent CA state behind one interface (``Store``): SQLite embedded, Redis shared."""

from __future__ import annotations

from pathlib import Path

from ca.store.base import (
    AlreadyExists,
    Conflict,
    CorruptRecord,
    NotFound,
    SchemaError,
    Store,
    StoreError,
)
from ca.store.records import (
    AUDIT_GENESIS_HASH,
    AuditRecord,
    AuthorityRecord,
    IssuanceRecord,
    RegistrationEntry,
    Revocation,
    Selector,
    audit_record_hash,
)
from ca.store.redis import REDIS_URL_SCHEMES, RedisStore, redact_url
from ca.store.sqlite import SQLiteStore

__all__ = [
    "AUDIT_GENESIS_HASH",
    "AlreadyExists",
    "AuditRecord",
    "AuthorityRecord",
    "Conflict",
    "CorruptRecord",
    "IssuanceRecord",
    "NotFound",
    "RedisStore",
    "RegistrationEntry",
    "Revocation",
    "SQLiteStore",
    "SchemaError",
    "Selector",
    "Store",
    "StoreError",
    "audit_record_hash",
    "open_store",
]


def open_store(url: str, *, data_dir: Path) -> Store:
    """Open the store named by ``url``.

    ``sqlite:///abs/path.db`` is an absolute path, ``sqlite://name.db`` and a bare relative
    path are relative to ``data_dir``, and a bare absolute path is used as it is. Redis URLs
    (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``, ``redis+cluster://`` and
    their TLS forms) open a ``RedisStore``; ``ca.store.redis`` documents each.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "sqlite", url
    if scheme in REDIS_URL_SCHEMES:
        return RedisStore(url)
    if scheme != "sqlite":
        raise StoreError(f"unknown store backend {scheme!r} in store URL {redact_url(url)!r}")
    if not rest:
        raise StoreError(f"store URL {url!r} names no database file")
    return SQLiteStore(data_dir / rest)  # an absolute rest replaces data_dir

"""Persistent CA state behind one interface (``Store``); SQLite is the embedded backend."""

from __future__ import annotations

from pathlib import Path

from ca.store.base import AlreadyExists, Conflict, NotFound, SchemaError, Store, StoreError
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
from ca.store.sqlite import SQLiteStore

__all__ = [
    "AUDIT_GENESIS_HASH",
    "AlreadyExists",
    "AuditRecord",
    "AuthorityRecord",
    "Conflict",
    "IssuanceRecord",
    "NotFound",
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

_PLANNED_BACKENDS = frozenset({"redis", "rediss"})


def open_store(url: str, *, data_dir: Path) -> Store:
    """Open the store named by ``url``.

    ``sqlite:///abs/path.db`` is an absolute path, ``sqlite://name.db`` and a bare relative
    path are relative to ``data_dir``, and a bare absolute path is used as it is.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "sqlite", url
    if scheme in _PLANNED_BACKENDS:
        raise StoreError("store backend 'redis' is not available yet")
    if scheme != "sqlite":
        raise StoreError(f"unknown store backend {scheme!r} in store URL {url!r}")
    if not rest:
        raise StoreError(f"store URL {url!r} names no database file")
    return SQLiteStore(data_dir / rest)  # an absolute rest replaces data_dir

"""Faults injected into a real store: the Nth write transaction raises before it commits.

``fail_writes(store, at=N)`` wraps an opened ``SQLiteStore`` or ``RedisStore`` in place: its
SQLite ``BEGIN IMMEDIATE`` block, or its Redis MULTI/EXEC, raises its driver's error (an I/O
error, a lost connection) after every statement of the write was issued and before
COMMIT/EXEC, so the backend rolls it back (SQLite) or never sends it (Redis) and reports a
``StoreError`` naming the store, as it would for a real fault. ``BundleHistory`` records,
after every write, which bundle content the store holds under which sequence number.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from ca.store import RedisStore, SQLiteStore, Store
from ca.store.redis.client import Pipe, Write


@dataclass
class WriteFault:
    """Counts a store's write transactions and fails those numbered in ``at`` (from 1)."""

    at: frozenset[int]
    writes: int = 0
    failed: list[int] = field(default_factory=list)

    def next_write_fails(self) -> bool:
        self.writes += 1
        if self.writes in self.at:
            self.failed.append(self.writes)
            return True
        return False

    def reason(self) -> str:
        return f"injected fault: write {self.writes} failed before its commit"


def fail_writes(store: Store, *, at: int | Sequence[int]) -> WriteFault:
    """Make write transaction number ``at`` (or each of several) of ``store`` fail."""
    fault = WriteFault(frozenset([at] if isinstance(at, int) else at))
    if isinstance(store, SQLiteStore):
        _wrap_sqlite(store, fault)
    elif isinstance(store, RedisStore):
        _wrap_redis(store, fault)
    else:
        raise TypeError(f"cannot inject faults into a {type(store).__name__}")
    return fault


def _wrap_sqlite(store: SQLiteStore, fault: WriteFault) -> None:
    original = store._transaction

    @contextmanager
    def transaction() -> Iterator[Any]:
        with original() as conn:
            yield conn
            if fault.next_write_fails():
                raise sqlite3.OperationalError(fault.reason())  # inside: rolled back

    store._transaction = transaction  # type: ignore[method-assign]


def _wrap_redis(store: RedisStore, fault: WriteFault) -> None:
    connection = store._redis
    original = connection.transaction

    def transaction(watched: Sequence[str], prepare: Callable[[Pipe], tuple[Write, Any]]) -> Any:
        fails = fault.next_write_fails()

        def prepare_then_fail(pipe: Pipe) -> tuple[Write, Any]:
            write, result = prepare(pipe)

            def write_then_fail(pipe: Pipe) -> None:
                write(pipe)  # queued after MULTI; raising now means EXEC is never sent
                if fails:
                    raise redis.ConnectionError(fault.reason())

            return write_then_fail, result

        return original(watched, prepare_then_fail)

    connection.transaction = transaction  # type: ignore[method-assign]


@dataclass
class BundleHistory:
    """The (sequence, bundle content) pairs a store held after each write that touched them;
    content is the set of authority ids in the bundle (every authority not revoked)."""

    seen: list[tuple[int, frozenset[str]]] = field(default_factory=list)

    def sequences_with_two_contents(self) -> dict[int, set[frozenset[str]]]:
        contents: dict[int, set[frozenset[str]]] = {}
        for sequence, content in self.seen:
            contents.setdefault(sequence, set()).add(content)
        return {seq: found for seq, found in contents.items() if len(found) > 1}


def watch_bundle(store: Store, sequence: str = "bundle") -> BundleHistory:
    """Record ``store``'s bundle sequence and content after each of its authority writes."""
    history = BundleHistory()

    def snapshot() -> None:
        content = frozenset(r.authority_id for r in store.list_authorities() if not r.revoked)
        history.seen.append((store.current_sequence(sequence), content))

    for name in ("save_authorities", "delete_authority", "next_sequence"):
        method = getattr(store, name)

        def observed(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            try:
                return _method(*args, **kwargs)
            finally:
                snapshot()

        setattr(store, name, observed)
    return history

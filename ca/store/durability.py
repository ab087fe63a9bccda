"""When a write counts as done: the durability a store must reach before it acknowledges one.

Levels, each including the one before:

- ``none``: acknowledged once the store applied it (SQLite ``synchronous=NORMAL`` in WAL mode,
  which a power cut may roll back; Redis as configured, which may lose it on a crash);
- ``local``: on the store's own disk first (SQLite ``synchronous=FULL``; Redis with the
  append-only file on and ``appendfsync always``, which fsyncs before it replies);
- ``replicas``: also received by ``replicas`` Redis replicas (``WAIT``) within ``timeout``.

Redis's settings are read once, at start (``verdict``), and a server that cannot give the
level is refused there; ``replicas`` is also checked after every write, and a write the
replicas did not acknowledge in time fails with ``NotDurable``: it was applied on the master
and may still be there, but it was never acknowledged as done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ca.store.base import StoreError

__all__ = [
    "DURABILITY_LEVELS",
    "Durability",
    "NotDurable",
    "Persistence",
    "sqlite_synchronous",
    "verdict",
]

DURABILITY_LEVELS = ("none", "local", "replicas")


class NotDurable(StoreError):
    """A write was applied but did not reach the configured durability in time."""


@dataclass(frozen=True, slots=True)
class Durability:
    """What a store must reach before it acknowledges a write."""

    level: str = "local"
    replicas: int = 1  # with ``replicas``: how many replicas must acknowledge
    timeout: float = 5.0  # seconds a write may wait for them

    def __post_init__(self) -> None:
        if self.level not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY_LEVELS)}")
        if self.replicas < 1:
            raise ValueError("durability replicas must be at least 1")
        if self.timeout <= 0:
            raise ValueError("durability timeout must be positive")

    @property
    def needs_local(self) -> bool:
        return self.level != "none"

    @property
    def needs_replicas(self) -> bool:
        return self.level == "replicas"

    def describe(self) -> str:
        if self.needs_replicas:
            return f"replicas (local disk and {self.replicas} replica(s))"
        return self.level


@dataclass(frozen=True, slots=True)
class Persistence:
    """A Redis server's persistence and replication, as read at start."""

    appendonly: bool
    appendfsync: str  # "always", "everysec", "no"; "" when unknown
    connected_replicas: int
    role: str = "master"

    @classmethod
    def from_info(
        cls, persistence: Mapping[str, object], replication: Mapping[str, object]
    ) -> Persistence:
        """From ``INFO persistence`` and ``INFO replication`` (when CONFIG is not allowed):
        INFO shows whether AOF is on, never its fsync policy."""
        return cls(
            appendonly=str(persistence.get("aof_enabled", "0")) == "1",
            appendfsync="",
            connected_replicas=_int(replication.get("connected_slaves", 0)),
            role=str(replication.get("role", "master")),
        )


def verdict(durability: Durability, persistence: Persistence) -> str | None:
    """What ``persistence`` lacks for ``durability``, as one sentence; None if nothing."""
    missing = []
    if persistence.role != "master":
        missing.append(f"it is a {persistence.role}, not a master")
    if durability.needs_local:
        if not persistence.appendonly:
            missing.append("appendonly is off (an RDB snapshot loses the writes since the last)")
        elif persistence.appendfsync != "always":
            shown = persistence.appendfsync or "unknown (CONFIG GET is not allowed)"
            missing.append(f"appendfsync is {shown}, not always")
    if durability.needs_replicas and persistence.connected_replicas < durability.replicas:
        missing.append(
            f"{persistence.connected_replicas} replica(s) connected, {durability.replicas} needed"
        )
    if not missing:
        return None
    return f"store.durability = {durability.describe()} needs more: " + "; ".join(missing)


def sqlite_synchronous(durability: Durability) -> str:
    """SQLite's ``synchronous`` pragma for ``durability`` (in WAL mode)."""
    if durability.needs_replicas:
        raise StoreError("store.durability 'replicas' needs a Redis store; SQLite has no replicas")
    return "FULL" if durability.needs_local else "NORMAL"


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0

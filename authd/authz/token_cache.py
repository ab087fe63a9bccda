"""A small bounded LRU map whose entries expire at a time the caller chooses.

The identity resolver keeps verified credentials here so that a token or certificate seen
again is not verified again (an ES256 verify costs ~115 µs; a hit costs ~1 µs). Time comes
from the injected clock, so tests expire entries by moving a ``FakeClock``. Not thread-safe:
it belongs to one event loop, like the resolver that owns it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from ca.clock import Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """At most ``max_entries`` values, each dropped at its ``expires_at`` or when least used."""

    __slots__ = ("_clock", "_entries", "evictions", "hits", "max_entries", "misses")

    def __init__(self, clock: Clock, *, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # live entries pushed out to make room (a sign the cache is small)

    def get(self, key: K) -> V | None:
        """The value stored for ``key`` if it has not expired; counts a hit or a miss."""
        entry = self._entries.get(key)
        if entry is not None:
            if self._clock.now() < entry[0]:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            del self._entries[key]
        self.misses += 1
        return None

    def put(self, key: K, value: V, *, expires_at: float) -> None:
        """Keep ``value`` until ``expires_at`` (clock seconds); a past time stores nothing."""
        if expires_at <= self._clock.now():
            self._entries.pop(key, None)
            return
        self._entries[key] = (expires_at, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

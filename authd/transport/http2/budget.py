"""A token bucket on an injected clock: how many of something a peer may do, and how fast."""

from __future__ import annotations

from collections.abc import Callable


class Budget:
    """``capacity`` at once, refilled at ``rate`` per second of ``clock``; never above capacity."""

    __slots__ = ("_capacity", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, capacity: int, rate: float, clock: Callable[[], float]) -> None:
        self._capacity = float(capacity)
        self._rate = rate
        self._clock = clock
        self._tokens = float(capacity)
        self._stamp = clock()

    def take(self) -> bool:
        """Spend one token; False when none is left (the peer went beyond its budget)."""
        if self._tokens < 1.0:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens < 1.0:
                return False
        self._tokens -= 1.0
        return True

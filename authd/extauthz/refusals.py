"""Refusals a listener makes (a 413, a closed connection): each counted, logged once a second."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# What the daemon wires to authd_listener_refusals_total{listener,reason}: called with the reason.
RefusalCallback = Callable[[str], None]


class Refusals:
    """Counts every refusal through ``on_refusal`` and logs a summary at most once a second."""

    def __init__(
        self,
        listener: str,
        on_refusal: RefusalCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 1.0,
    ) -> None:
        self.listener = listener
        self._on_refusal = on_refusal
        self._clock = clock
        self._interval = interval
        self._last_log = -interval
        self._unlogged: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self._on_refusal is not None:
            self._on_refusal(reason)
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        now = self._clock()
        if now - self._last_log >= self._interval:
            self._last_log = now
            summary = ", ".join(f"{r}={n}" for r, n in sorted(self._unlogged.items()))
            self._unlogged.clear()
            log.warning("%s listener refused: %s", self.listener, summary)

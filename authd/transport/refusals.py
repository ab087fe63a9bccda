"""Counting what a listener refuses, and saying so in the log at most once a second per reason."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger(__name__)

LOG_INTERVAL = 1.0


class RefusalCounter:
    """Called with a reason (``"max_connections"``, ``"rapid_reset"``, ...) per refusal.

    ``hook(listener, reason)`` is where the daemon counts it (Prometheus
    ``authd_listener_refusals_total{listener,reason}``); transports know nothing of metrics.
    """

    def __init__(
        self,
        listener: str,
        hook: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self.hook = hook
        self.counts: Counter[str] = Counter()
        self._clock = clock
        self._logged: dict[str, float] = {}

    def __call__(self, reason: str) -> None:
        self.counts[reason] += 1
        if self.hook is not None:
            self.hook(self.listener, reason)
        now = self._clock()
        last = self._logged.get(reason)
        if last is None or now - last >= LOG_INTERVAL:
            self._logged[reason] = now
            log.warning(
                "%s refused a client: %s (%d so far)", self.listener, reason, self.counts[reason]
            )

"""What a listener does when it refuses a client: count it through a callback, log it rarely.

A listener is handed a :data:`RefusalCallback`, ``(reason) -> None``; the daemon wires it to
the Prometheus counter ``authd_listener_refusals_total{listener,reason}`` (see
``authd.app.refusals``), so no listener imports Prometheus. :class:`RefusalReporter` calls it
for every refusal and logs each reason at most once per ``interval`` seconds, with how many
were refused since the last line, so a flood of bad clients cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RefusalCallback", "RefusalReporter"]

log = logging.getLogger(__name__)

#: Called with the reason (``"max_connections"``, ``"idle_timeout"``, ...) of each refusal.
RefusalCallback = Callable[[str], None]


class RefusalReporter:
    """Counts and logs the refusals of the listener named ``listener``."""

    def __init__(
        self,
        listener: str,
        on_refusal: RefusalCallback | None = None,
        *,
        interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self._on_refusal = on_refusal
        self._interval = interval
        self._monotonic = monotonic
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def __call__(self, reason: str) -> None:
        if self._on_refusal is not None:
            self._on_refusal(reason)
        count = self._unlogged.get(reason, 0) + 1
        now = self._monotonic()
        last = self._last_logged.get(reason)
        if last is not None and now - last < self._interval:
            self._unlogged[reason] = count
            return
        self._last_logged[reason] = now
        self._unlogged[reason] = 0
        log.warning("%s: %d refused (%s) since the last report", self.listener, count, reason)

"""``authd_listener_refusals_total{listener,reason}``: one counter, a callback per listener.

Listeners know nothing of Prometheus: each is handed ``refusals.callback("workload")``, a
``(reason) -> None`` that counts under its own listener label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from authd.transport.refusals import RefusalCallback

__all__ = ["ListenerRefusals"]


class ListenerRefusals:
    """The refusal counter, registered once in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counter = Counter(
            "authd_listener_refusals",
            "connections and requests a listener refused, by listener and reason",
            ("listener", "reason"),
            registry=registry,
        )

    def callback(self, listener: str) -> RefusalCallback:
        """The callback the listener named ``listener`` calls with each refusal's reason."""
        counter = self._counter

        def refused(reason: str) -> None:
            counter.labels(listener, reason).inc()

        return refused

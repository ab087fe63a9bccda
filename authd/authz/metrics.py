"""Prometheus metrics of the decision point: checks by decision and reason, latency, errors.

Counters are plain ints on the hot path, exported by a collector at scrape time, so a
check pays a dictionary increment rather than prometheus_client's locking per sample.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from authd.check.model import Outcome

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
)


class AuthzMetrics(Collector):
    def __init__(self) -> None:
        self.checks: Counter[tuple[str, str, str]] = Counter()  # (transport, decision, reason)
        self.errors: Counter[str] = Counter()  # by transport
        self.malformed_requests: Counter[tuple[str, str]] = Counter()  # (transport, rule)
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        # Extra counters published as they are, e.g. cache hits: name -> (help, read()).
        self._sources: dict[str, tuple[str, Callable[[], Mapping[str, float]]]] = {}
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe(self, transport: str, outcome: Outcome, elapsed: float) -> None:
        decision = "allow" if outcome.decision.allowed else "deny"
        if outcome.allowed != outcome.decision.allowed:
            decision = "dry_run_deny"
        self.checks[(transport, decision, outcome.decision.reason)] += 1
        buckets = self._buckets.get(transport)
        if buckets is None:
            buckets = self._buckets[transport] = [0] * (len(LATENCY_BUCKETS) + 1)
        buckets[bisect.bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        self._sums[transport] = self._sums.get(transport, 0.0) + elapsed

    def error(self, transport: str) -> None:
        self.errors[transport] += 1

    def malformed(self, transport: str, rule: str) -> None:
        """A check denied because the caller's input could not be read (by what failed)."""
        self.malformed_requests[(transport, rule)] += 1

    def add_source(
        self, name: str, documentation: str, read: Callable[[], Mapping[str, float]]
    ) -> None:
        """Publish ``read()`` (label value of ``kind`` → count) as counter ``name``."""
        self._sources[name] = (documentation, read)

    def add_gauge_source(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Publish ``read()`` as gauge ``name`` at scrape time."""
        self._gauges[name] = (documentation, read)

    def collect(self) -> Iterator[Metric]:
        for name, (documentation, gauge_value) in sorted(self._gauges.items()):
            yield GaugeMetricFamily(name, documentation, value=gauge_value())
        checks = CounterMetricFamily(
            "authd_checks", "ext_authz checks decided", labels=["transport", "decision", "reason"]
        )
        for (transport, decision, reason), count in sorted(self.checks.items()):
            checks.add_metric([transport, decision, reason], count)
        yield checks
        errors = CounterMetricFamily(
            "authd_check_errors", "checks that failed with an error", labels=["transport"]
        )
        for transport, count in sorted(self.errors.items()):
            errors.add_metric([transport], count)
        yield errors
        malformed = CounterMetricFamily(
            "authd_malformed_requests",
            "checks denied because caller input could not be parsed",
            labels=["transport", "rule"],
        )
        for (transport, rule), count in sorted(self.malformed_requests.items()):
            malformed.add_metric([transport, rule], count)
        yield malformed
        latency = HistogramMetricFamily(
            "authd_check_duration_seconds",
            "time to decide a check inside authd",
            labels=["transport"],
        )
        for transport, buckets in sorted(self._buckets.items()):
            cumulative, total = [], 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
                total += count
                cumulative.append((str(bound) if bound != float("inf") else "+Inf", total))
            latency.add_metric([transport], cumulative, sum_value=self._sums[transport])
        yield latency
        for name, (documentation, read) in sorted(self._sources.items()):
            family = CounterMetricFamily(name, documentation, labels=["kind"])
            for kind, value in sorted(read().items()):
                family.add_metric([kind], value)
            yield family

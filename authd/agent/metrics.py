"""The agent's Prometheus metrics, read at scrape time from its cache and identity."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from authd.agent.cache import AgentCache
from ca.clock import Clock

__all__ = ["AgentMetrics"]


class AgentMetrics(Collector):
    def __init__(self, cache: AgentCache, agent_expiry: Callable[[], float], clock: Clock) -> None:
        self._cache = cache
        self._agent_expiry = agent_expiry
        self._clock = clock

    def budget(self) -> float:
        """Seconds the agent can still serve without the server: until the first of its own
        SVID and its cached workload SVIDs expires (never below zero)."""
        expiries = [self._agent_expiry()]
        earliest = self._cache.earliest_expiry()
        if earliest is not None:
            expiries.append(earliest)
        return max(0.0, min(expiries) - self._clock.now())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "authd_agent_svid_budget_seconds",
            "Seconds until the first SVID this agent holds expires, if the server stays away",
            value=self.budget(),
        )
        yield GaugeMetricFamily(
            "authd_agent_cached_svids",
            "X.509-SVIDs the agent holds for its workloads",
            value=self._cache.svid_count,
        )

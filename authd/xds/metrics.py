"""Prometheus metrics of the native fast path, read at scrape time from the live state."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from authd.xds.publisher import RbacPublisher
from authd.xds.stream import XdsNodeStatus

__all__ = ["XdsMetrics"]


class XdsMetrics(Collector):
    """``authd_xds_*``: the config compiled, and each connected Envoy's applied version."""

    def __init__(self, publisher: RbacPublisher, nodes: Callable[[], list[XdsNodeStatus]]) -> None:
        self._publisher = publisher
        self._nodes = nodes

    def collect(self) -> Iterator[Metric]:
        compiled = self._publisher.current
        config = GaugeMetricFamily(
            "authd_xds_config_info",
            "The RBAC config authd serves over ECDS (1 for its version)",
            labels=["version"],
        )
        size = GaugeMetricFamily(
            "authd_xds_config_bytes", "Size of the RBAC config authd serves over ECDS"
        )
        if compiled is not None:
            config.add_metric([compiled.version], 1)
            size.add_metric([], len(compiled.payload))
        yield config
        yield size
        yield CounterMetricFamily(
            "authd_xds_config_refusals",
            "Compiled RBAC configs refused by authd's own validation (never pushed)",
            value=self._publisher.refused,
        )
        applied = GaugeMetricFamily(
            "authd_xds_node_applied_info",
            "The RBAC config version each connected Envoy accepted (1 for that version)",
            labels=["node", "version"],
        )
        in_step = GaugeMetricFamily(
            "authd_xds_node_in_step",
            "1 if the Envoy enforces the config authd serves now, else 0",
            labels=["node"],
        )
        nacks = CounterMetricFamily(
            "authd_xds_node_nacks",
            "RBAC configs each connected Envoy refused (NACK) on its current stream",
            labels=["node"],
        )
        current = compiled.version if compiled is not None else ""
        for node in self._nodes():
            applied.add_metric([node.node_id, node.acked_version], 1)
            in_step.add_metric([node.node_id], 1 if node.acked_version == current else 0)
            nacks.add_metric([node.node_id], node.nacks)
        yield applied
        yield in_step
        yield nacks

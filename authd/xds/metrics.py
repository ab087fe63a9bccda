"""Prometheus metrics of the native fast path, read at scrape time from the live state."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from authd.xds.publisher import RbacPublisher, served_version
from authd.xds.stream import XdsNodeStatus

__all__ = ["XdsMetrics"]


class XdsMetrics(Collector):
    """``authd_xds_*``: the configs compiled (label ``filter``: the rules filter, the
    revocation filter), and each connected Envoy's applied version of each."""

    def __init__(self, publisher: RbacPublisher, nodes: Callable[[], list[XdsNodeStatus]]) -> None:
        self._publisher = publisher
        self._nodes = nodes

    def collect(self) -> Iterator[Metric]:
        served = self._publisher.resources()
        config = GaugeMetricFamily(
            "authd_xds_config_info",
            "The RBAC configs authd serves over ECDS (1 for each filter's version)",
            labels=["filter", "version"],
        )
        size = GaugeMetricFamily(
            "authd_xds_config_bytes",
            "Size of each RBAC config authd serves over ECDS",
            labels=["filter"],
        )
        for name, compiled in sorted(served.items()):
            config.add_metric([name, compiled.version], 1)
            size.add_metric([name], len(compiled.payload))
        yield config
        yield size
        revocations = self._publisher.revocations
        yield GaugeMetricFamily(
            "authd_xds_revocation_config_bytes",
            "Size of the revocation filter's config: what one revocation pushes (0: no filter)",
            value=len(revocations.payload) if revocations is not None else 0,
        )
        yield CounterMetricFamily(
            "authd_xds_config_refusals",
            "Compiled RBAC configs refused by authd's own validation (never pushed)",
            value=self._publisher.refused,
        )
        applied = GaugeMetricFamily(
            "authd_xds_node_applied_info",
            "The config version each connected Envoy accepted, per filter (1 for that version)",
            labels=["node", "filter", "version"],
        )
        in_step = GaugeMetricFamily(
            "authd_xds_node_in_step",
            "1 if the Envoy enforces the config authd serves now for that filter, else 0",
            labels=["node", "filter"],
        )
        nacks = CounterMetricFamily(
            "authd_xds_node_nacks",
            "Configs each connected Envoy refused (NACK) on its current stream for that filter",
            labels=["node", "filter"],
        )
        for node in self._nodes():
            name = ",".join(node.names)
            current = served_version(served, node.names)
            applied.add_metric([node.node_id, name, node.acked_version], 1)
            in_step.add_metric([node.node_id, name], 1 if node.acked_version == current else 0)
            nacks.add_metric([node.node_id, name], node.nacks)
        yield applied
        yield in_step
        yield nacks

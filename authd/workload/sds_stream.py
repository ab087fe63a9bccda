"""One SDS stream's protocol state (pure), and what the admin API reports of it.

:class:`SdsStream` takes in each DiscoveryRequest and decides, from plain values, whether
Envoy gets a response now (see ``authd.workload.sds``). It also keeps what an operator asks
about a connected Envoy: its node, the version it last accepted (ACK) and the last one it
refused (NACK) with Envoy's reason. :class:`SdsStreamStatus` is that, frozen, for
``authd sds status`` and ``authd doctor``.
"""

from __future__ import annotations

from dataclasses import dataclass

from authd.transport.xds_stream import MAX_NACK_CHARS, MAX_NODE_CHARS, SotwStream

__all__ = ["MAX_NACK_CHARS", "MAX_NODE_CHARS", "SdsStream", "SdsStreamStatus"]


@dataclass(frozen=True)
class SdsStreamStatus:
    """One open SDS stream as the admin API reports it."""

    node_id: str
    cluster: str
    pid: int
    uid: int
    names: tuple[str, ...]
    sent_version: str  # of the last response sent
    acked_version: str  # the last one Envoy accepted ("" before its first ACK)
    responses: int
    acks: int
    nacks: int
    last_nack: str  # Envoy's reason for the last refusal ("" if none)
    nacked_version: str  # the version that refusal was of
    opened_at: float


@dataclass(eq=False)
class SdsStream(SotwStream):
    """One SDS stream (see ``SotwStream``), and what its secrets were last built from."""

    provider_version: int = 0  # the identity source's version last looked at
    crl_version: int = 0  # the CrlFeed version last looked at

    def status(self, *, pid: int, uid: int, opened_at: float) -> SdsStreamStatus:
        return SdsStreamStatus(
            node_id=self.node_id,
            cluster=self.cluster,
            pid=pid,
            uid=uid,
            names=self.names or (),
            sent_version=self.version,
            acked_version=self.acked_version,
            responses=self.responses,
            acks=self.acks,
            nacks=self.nacks,
            last_nack=self.last_nack,
            nacked_version=self.nacked_version,
            opened_at=opened_at,
        )

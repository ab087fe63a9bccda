"""One ECDS stream's protocol state (pure), and what the admin API reports of it.

State of the world as Envoy speaks it, the same rules as SDS (``authd.workload.sds_stream``):
the first request and a change of ``resource_names`` are answered at once; an ACK (the last
nonce, no ``error_detail``) records the version the node now enforces; a NACK records
Envoy's reason, and the node keeps enforcing its last accepted version; a request carrying
an older nonce is ignored (the newer response is on its way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from authd.transport.xds_stream import SotwStream

__all__ = ["XdsNodeStatus", "XdsStream"]


@dataclass(frozen=True)
class XdsNodeStatus:
    """One connected Envoy as ``authd xds status`` shows it."""

    node_id: str
    cluster: str
    pid: int
    uid: int
    names: tuple[str, ...]
    sent_version: str
    acked_version: str
    acked_at: float  # when it accepted acked_version (0: never)
    sent_at: float  # when sent_version was sent
    nacks: int
    last_nack: str
    nacked_version: str
    opened_at: float


@dataclass(eq=False)
class XdsStream(SotwStream):
    """One ECDS stream (see ``SotwStream``); the order of the names it asks for is not kept."""

    sort_names: ClassVar[bool] = True

    def status(self, *, pid: int, uid: int, opened_at: float) -> XdsNodeStatus:
        return XdsNodeStatus(
            node_id=self.node_id,
            cluster=self.cluster,
            pid=pid,
            uid=uid,
            names=self.names or (),
            sent_version=self.version,
            acked_version=self.acked_version,
            acked_at=self.acked_at,
            sent_at=self.sent_at,
            nacks=self.nacks,
            last_nack=self.last_nack,
            nacked_version=self.nacked_version,
            opened_at=opened_at,
        )

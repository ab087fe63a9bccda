"""One ECDS stream's protocol state (pure), and what the admin API reports of it.

State of the world as Envoy speaks it, the same rules as SDS (``authd.workload.sds_stream``):
the first request and a change of ``resource_names`` are answered at once; an ACK (the last
nonce, no ``error_detail``) records the version the node now enforces; a NACK records
Envoy's reason, and the node keeps enforcing its last accepted version; a request carrying
an older nonce is ignored (the newer response is on its way).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

__all__ = ["XdsNodeStatus", "XdsStream"]

# What an Envoy says about itself is caller input: kept, but bounded.
MAX_NODE_CHARS = 256
MAX_NACK_CHARS = 512


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
class XdsStream:
    """What one ECDS stream asked for, was sent and accepted."""

    names: tuple[str, ...] | None = None
    version: str = ""
    nonce: str = ""
    sent_at: float = 0.0
    acks: int = 0
    nacks: int = 0
    stale: int = 0
    responses: int = 0
    node_id: str = ""
    cluster: str = ""
    acked_version: str = ""
    acked_at: float = 0.0
    last_nack: str = ""
    nacked_version: str = ""
    _nonces: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def on_request(self, request: Any, now: float) -> bool:
        """Take in a DiscoveryRequest; True if it must be answered now."""
        if request.HasField("node") and request.node.id:
            self.node_id = _bounded(request.node.id, MAX_NODE_CHARS)
            self.cluster = _bounded(request.node.cluster, MAX_NODE_CHARS)
        if request.response_nonce != self.nonce:
            self.stale += 1
            return False
        names = tuple(sorted(request.resource_names))
        first, changed = self.names is None, names != self.names
        self.names = names
        if first:
            return True
        if request.HasField("error_detail"):
            self.nacks += 1
            self.last_nack = _bounded(request.error_detail.message or "(no reason)", MAX_NACK_CHARS)
            self.nacked_version = self.version
        else:
            if self.acked_version != self.version:
                self.acked_at = now
            self.acked_version = self.version
            self.acks += 1
        return changed

    def needs_push(self, version: str) -> bool:
        """After a recompilation: is this stream's config now different?"""
        return self.names is not None and version != self.version

    def sent(self, version: str, now: float) -> str:
        """Record a response of ``version``; returns its nonce."""
        self.version = version
        self.sent_at = now
        self.nonce = str(next(self._nonces))
        self.responses += 1
        return self.nonce

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

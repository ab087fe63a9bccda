"""One SDS stream's protocol state (pure), and what the admin API reports of it.

:class:`SdsStream` takes in each DiscoveryRequest and decides, from plain values, whether
Envoy gets a response now (see ``authd.workload.sds``). It also keeps what an operator asks
about a connected Envoy: its node, the version it last accepted (ACK) and the last one it
refused (NACK) with Envoy's reason. :class:`SdsStreamStatus` is that, frozen, for
``authd sds status`` and ``authd doctor``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SdsStream", "SdsStreamStatus"]

# What an Envoy says about itself is caller input: kept, but bounded.
MAX_NODE_CHARS = 256
MAX_NACK_CHARS = 512


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
class SdsStream:
    """What one SDS stream asked for and was sent, and whether Envoy needs a response.

    ``names`` is None until the first request. ``version`` and ``nonce`` are those of the
    last response sent; ``acked_version`` the last one Envoy accepted, ``last_nack`` its
    reason for the last one it refused. The counters are for logs, tests and the admin API.
    """

    names: tuple[str, ...] | None = None
    version: str = ""
    nonce: str = ""
    acks: int = 0
    nacks: int = 0
    stale: int = 0
    responses: int = 0
    provider_version: int = 0  # the identity source's version last looked at
    crl_version: int = 0  # the CrlFeed version last looked at
    node_id: str = ""
    cluster: str = ""
    acked_version: str = ""
    last_nack: str = ""
    nacked_version: str = ""
    _nonces: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def on_request(self, request: Any) -> bool:
        """Take in a DiscoveryRequest; True if it must be answered now."""
        if request.HasField("node") and request.node.id:
            self.node_id = _bounded(request.node.id, MAX_NODE_CHARS)
            self.cluster = _bounded(request.node.cluster, MAX_NODE_CHARS)
        if request.response_nonce != self.nonce:
            # Envoy answered an older response; the newer one is on its way to it.
            self.stale += 1
            return False
        names = tuple(request.resource_names)
        first, changed = self.names is None, names != self.names
        self.names = names
        if first:
            return True
        if request.HasField("error_detail"):
            self.nacks += 1
            self.last_nack = _bounded(request.error_detail.message or "(no reason)", MAX_NACK_CHARS)
            self.nacked_version = self.version
        else:
            self.acked_version = self.version
            if not changed:
                self.acks += 1
        return changed

    def needs_push(self, version: str) -> bool:
        """After a change of SVIDs or bundle: do this stream's secrets now differ?"""
        return self.names is not None and version != self.version

    def sent(self, version: str) -> str:
        """Record a response of ``version``; returns its nonce."""
        self.version = version
        self.nonce = str(next(self._nonces))
        self.responses += 1
        return self.nonce

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

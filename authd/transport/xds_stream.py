"""One state-of-the-world xDS stream's protocol state (pure), as Envoy speaks it.

The first request and a change of ``resource_names`` are answered at once; an ACK (the last
nonce, no ``error_detail``) records the version Envoy now holds and is not answered; a NACK
records Envoy's reason (Envoy keeps its last accepted version) and is not answered until
something changes; a request carrying an older nonce is ignored (the newer response is on its
way). SDS (``authd.workload.sds_stream``) and ECDS (``authd.xds.stream``) build on it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["MAX_NACK_CHARS", "MAX_NODE_CHARS", "SotwStream"]

# What an Envoy says about itself is caller input: kept, but bounded.
MAX_NODE_CHARS = 256
MAX_NACK_CHARS = 512


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(eq=False)
class SotwStream:
    """What one stream asked for, was sent and accepted, and whether it needs a response.

    ``names`` is None until the first request. ``version``, ``nonce`` and ``sent_at`` are
    those of the last response sent; ``acked_version`` (and ``acked_at``) the last one Envoy
    accepted, ``last_nack`` its reason for the last one it refused. The counters are for
    logs, tests and the admin API.
    """

    sort_names: ClassVar[bool] = False  # True where the order of names carries no meaning

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

    def on_request(self, request: Any, now: float = 0.0) -> bool:
        """Take in a DiscoveryRequest; True if it must be answered now."""
        if request.HasField("node") and request.node.id:
            self.node_id = _bounded(request.node.id, MAX_NODE_CHARS)
            self.cluster = _bounded(request.node.cluster, MAX_NODE_CHARS)
        if request.response_nonce != self.nonce:
            # Envoy answered an older response; the newer one is on its way to it.
            self.stale += 1
            return False
        asked = request.resource_names
        names = tuple(sorted(asked) if self.sort_names else asked)
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
            if not changed:
                self.acks += 1
        return changed

    def needs_push(self, version: str) -> bool:
        """After a change: does this stream's content now differ from what it was sent?"""
        return self.names is not None and version != self.version

    def sent(self, version: str, now: float = 0.0) -> str:
        """Record a response of ``version``; returns its nonce."""
        self.version = version
        self.sent_at = now
        self.nonce = str(next(self._nonces))
        self.responses += 1
        return self.nonce

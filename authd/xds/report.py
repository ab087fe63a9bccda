"""What the admin API says about the native fast path: one snapshot, read on the loop."""

from __future__ import annotations

from dataclasses import dataclass

from authd.xds.rbac_compiler import CompiledRbac
from authd.xds.stream import XdsNodeStatus

__all__ = ["XdsReport"]


@dataclass(frozen=True)
class XdsReport:
    """The config in force (or, with ``[xds]`` off, the one that would be) and the Envoys."""

    enabled: bool
    compiled: CompiledRbac | None
    compiled_at: float
    last_refusal: str
    nodes: tuple[XdsNodeStatus, ...]

    def lag(self, node: XdsNodeStatus, now: float) -> float:
        """Seconds since authd compiled a version ``node`` has not accepted (0: in step)."""
        if self.compiled is None or node.acked_version == self.compiled.version:
            return 0.0
        return max(0.0, now - self.compiled_at)

"""What the admin API says about the native fast path: one snapshot, read on the loop."""

from __future__ import annotations

from dataclasses import dataclass

from authd.xds.rbac_compiler import CompiledRbac
from authd.xds.stream import XdsNodeStatus

__all__ = ["XdsReport"]


@dataclass(frozen=True)
class XdsReport:
    """The config in force (or, with ``[xds]`` off, the one that would be) and the Envoys.

    ``revocations`` is the revocation filter's config (None without one), installed at
    ``revocations_at``; each node is one ECDS stream, asking for one filter or both.
    """

    enabled: bool
    compiled: CompiledRbac | None
    compiled_at: float
    last_refusal: str
    nodes: tuple[XdsNodeStatus, ...]
    revocations: CompiledRbac | None = None
    revocations_at: float = 0.0

    def _served(self) -> dict[str, tuple[CompiledRbac, float]]:
        served = {}
        if self.compiled is not None:
            served[self.compiled.filter_name] = (self.compiled, self.compiled_at)
        if self.revocations is not None:
            served[self.revocations.filter_name] = (self.revocations, self.revocations_at)
        return served

    def serving(self, node: XdsNodeStatus) -> str:
        """The version authd serves for what ``node``'s stream asked ("" if nothing)."""
        served = self._served()
        names = node.names or ((self.compiled.filter_name,) if self.compiled else ())
        return "+".join(served[name][0].version for name in names if name in served)

    def lag(self, node: XdsNodeStatus, now: float) -> float:
        """Seconds since authd compiled a version ``node`` has not accepted (0: in step)."""
        serving = self.serving(node)
        if not serving or node.acked_version == serving:
            return 0.0
        served = self._served()
        since = max((served[n][1] for n in node.names if n in served), default=now)
        return max(0.0, now - since)

"""The real RBAC compiler, counting its calls: what a publisher test hands the publisher to
see whether a change took the full compile or the fast path."""

from __future__ import annotations

from authd.xds.publisher import RbacInputs, compile_inputs
from authd.xds.rbac_compiler import CompiledRbac


class CountingCompiler:
    """``compile_inputs``, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, inputs: RbacInputs, filter_name: str) -> CompiledRbac:
        self.calls += 1
        return compile_inputs(inputs, filter_name)

"""The RBAC config in force: recompiled when the policy or the revocations change.

The publisher is what the ECDS servicer serves from. It looks at the policy every
``interval`` (the policy holder swaps its object on a reload, so a reload is an identity
change) and recompiles at once when told revocations changed (``mark_dirty``, hooked to the
daemon's revoker), so a revoked SPIFFE ID reaches every connected Envoy within one push.
Compiling runs in a worker thread (a large identity map takes a while); every result is
validated (``rbac_validation``) before it is installed, and one that fails is logged and
never served: the previous config stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from authd.policy.rules import RulesPolicy
from authd.xds.rbac_compiler import CompiledRbac, compile_rbac
from authd.xds.rbac_validation import InvalidRbacConfig, validate_rbac

__all__ = ["RbacInputs", "RbacPublisher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RbacInputs:
    """What a compilation reads: the rules, the revocations, and how the daemon decides."""

    policy: object
    rule_set: str
    revoked: frozenset[str]
    to_extauthz: frozenset[str]
    credential_headers: tuple[str, ...]
    everything_to_extauthz: str


def compile_inputs(inputs: RbacInputs, filter_name: str) -> CompiledRbac:
    policy = inputs.policy
    reason = inputs.everything_to_extauthz
    rule_set = None
    name = inputs.rule_set
    if isinstance(policy, RulesPolicy):
        name = name or policy.default_rule_set
        rule_set = policy.rule_sets.get(name)
    elif not reason:
        reason = "the policy is not a rules file"
    return compile_rbac(
        rule_set,
        rule_set_name=name,
        filter_name=filter_name,
        revoked=inputs.revoked,
        to_extauthz=inputs.to_extauthz,
        credential_headers=inputs.credential_headers,
        everything_to_extauthz=reason,
    )


class RbacPublisher:
    """Holds the compiled RBAC config and tells waiting streams when it changes."""

    def __init__(
        self,
        *,
        filter_name: str,
        policy: Callable[[], object],
        revoked: Callable[[], tuple[frozenset[str], frozenset[str]]],
        rule_set: str = "",
        credential_headers: Sequence[str] = ("authorization",),
        everything_to_extauthz: str = "",
        interval: float = 0.2,
        compile_config: Callable[[RbacInputs, str], CompiledRbac] = compile_inputs,
        validate: Callable[[Any], None] = validate_rbac,
    ) -> None:
        self.filter_name = filter_name
        self._policy = policy
        self._revoked = revoked
        self._rule_set = rule_set
        self._headers = tuple(credential_headers)
        self._everything = everything_to_extauthz
        self._interval = interval
        self._compile = compile_config
        self._validate = validate
        self.current: CompiledRbac | None = None
        self.compiled_at = 0.0
        self.generation = 0
        self.refused = 0
        self.last_refusal = ""
        self._inputs: RbacInputs | None = None
        self._dirty = asyncio.Event()
        self._changed = asyncio.Event()

    def inputs(self) -> RbacInputs:
        revoked, to_extauthz = self._revoked()
        return RbacInputs(
            policy=self._policy(),
            rule_set=self._rule_set,
            revoked=revoked,
            to_extauthz=to_extauthz,
            credential_headers=self._headers,
            everything_to_extauthz=self._everything,
        )

    def mark_dirty(self) -> None:
        """Revocations changed: recompile now (called on the loop, from the revoker)."""
        self._dirty.set()

    async def refresh(self) -> bool:
        """Recompile if the inputs changed; True if a new config is in force."""
        inputs = self.inputs()
        if inputs == self._inputs:
            return False
        started = time.monotonic()
        try:
            compiled = await asyncio.to_thread(self._compile, inputs, self.filter_name)
            self._validate(compiled.config)
        except InvalidRbacConfig as exc:
            self._inputs = inputs  # not again until something changes
            self.refused += 1
            self.last_refusal = str(exc)
            log.error("xds: not pushing the compiled RBAC config, keeping the last: %s", exc)
            return False
        except Exception:
            self._inputs = inputs
            self.refused += 1
            self.last_refusal = "the compiler failed (see the log)"
            log.exception("xds: compiling the RBAC config failed, keeping the last")
            return False
        self._inputs = inputs
        if self.current is not None and compiled.version == self.current.version:
            return False
        self.install(compiled)
        log.info(
            "xds: RBAC config %s (%d bytes, %d identities, %d revoked) compiled in %.0f ms",
            compiled.version,
            len(compiled.payload),
            compiled.identities,
            compiled.revoked,
            (time.monotonic() - started) * 1000,
        )
        return True

    def install(self, compiled: CompiledRbac) -> None:
        """Serve ``compiled`` from now on and wake every stream."""
        self.current = compiled
        self.compiled_at = time.time()
        self.generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, generation: int) -> int:
        while self.generation == generation:
            await self._changed.wait()
        return self.generation

    async def run(self) -> None:
        """Recompile on a revocation at once, and on a policy reload within ``interval``."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self._interval)
            self._dirty.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("xds: refresh failed; will retry")

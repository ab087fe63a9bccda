"""The RBAC config in force: recompiled when the policy or the revocations change.

The publisher is what the ECDS servicer serves from. It looks at the policy every
``interval`` (the policy holder swaps its object on a reload, so a reload is an identity
change) and recompiles at once when told revocations changed (``mark_dirty``, hooked to the
daemon's revoker), so a revoked SPIFFE ID reaches every connected Envoy within one push.
Compiling runs in a worker thread (a large identity map takes a while); every result is
validated (``rbac_validation``) before it is installed, and one that fails is logged and
never served: the previous config stays in force.

With a ``revoked_filter_name``, revoked SPIFFE IDs are not compiled into the rules filter but
into a second, small one (``revoked_filter``): a revocation recompiles and pushes that alone,
on the loop and before any recompile of the rules, so its cost does not grow with the policy.
Without one (``[xds] native_only``), and for a revoked registration entry, the revocations
are in the rules filter: when they are all that changed since the config in force, it is
re-assembled around its cached rules (``rbac_revocations``, on a thread: milliseconds where
a full compile takes seconds), the revoked map alone validated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from authd.policy.rules import RulesPolicy
from authd.xds.rbac_compiler import CompiledRbac, compile_rbac
from authd.xds.rbac_revocations import with_revocations
from authd.xds.rbac_validation import InvalidRbacConfig, validate_rbac
from authd.xds.revoked_filter import compile_revoked

__all__ = ["RbacInputs", "RbacPublisher", "served_version", "warn_native_only"]

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
    native_only: bool = False


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
        native_only=inputs.native_only,
    )


def served_version(served: dict[str, CompiledRbac], names: tuple[str, ...]) -> str:
    """The version of what a stream asking for ``names`` is served ("" if nothing of it)."""
    return "+".join(served[name].version for name in names if name in served)


def warn_native_only(compiled: CompiledRbac) -> None:
    """``[xds] native_only``: one warning line per rule that needs ext_authz (denied)."""
    if not compiled.native_only:
        return
    for rule in compiled.denied_rules():
        log.warning(
            "xds: native_only: %s rule %r (%s line %d) needs ext_authz (%s): the requests "
            "it would decide are denied",
            rule.effect,
            rule.rule,
            rule.rule_set,
            rule.line,
            rule.why,
        )
    if not compiled.routing:
        log.warning("xds: native_only: no rule is compiled natively: every request is denied")


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
        revoked_filter_name: str = "",
        native_only: bool = False,
    ) -> None:
        self.filter_name = filter_name
        self.revoked_filter_name = revoked_filter_name
        self._policy = policy
        self._revoked = revoked
        self._rule_set = rule_set
        self._headers = tuple(credential_headers)
        self._everything = everything_to_extauthz
        self._native_only = native_only
        self._interval = interval
        self._compile = compile_config
        self._validate = validate
        self.current: CompiledRbac | None = None
        self.compiled_at = 0.0
        # The revocation filter's config (None without a revoked_filter_name).
        self.revocations: CompiledRbac | None = None
        self.revocations_at = 0.0
        self._revoked_ids: frozenset[str] | None = None
        self.generation = 0
        self.refused = 0
        self.last_refusal = ""
        self._inputs: RbacInputs | None = None  # the last compiled (or refused)
        self._current_inputs: RbacInputs | None = None  # what ``current`` was compiled from
        self._dirty = asyncio.Event()
        self._changed = asyncio.Event()

    def resources(self) -> dict[str, CompiledRbac]:
        """The configs served, by ECDS resource (filter) name."""
        served = {}
        if self.current is not None:
            served[self.filter_name] = self.current
        if self.revocations is not None:
            served[self.revoked_filter_name] = self.revocations
        return served

    def inputs(self, revoked: frozenset[str] | None = None) -> RbacInputs:
        """What the rules filter is compiled from (revoked IDs only without a revocation
        filter)."""
        all_revoked, to_extauthz = self._revoked()
        if revoked is None:
            revoked = frozenset() if self.revoked_filter_name else all_revoked
        return RbacInputs(
            policy=self._policy(),
            rule_set=self._rule_set,
            revoked=revoked,
            to_extauthz=to_extauthz,
            credential_headers=self._headers,
            everything_to_extauthz=self._everything,
            native_only=self._native_only,
        )

    def mark_dirty(self) -> None:
        """Revocations changed: recompile now (called on the loop, from the revoker)."""
        self._dirty.set()

    def refresh_revocations(self) -> bool:
        """Recompile the revocation filter if the revoked IDs changed (on the loop: it is
        small); True if a new config of it is in force."""
        if not self.revoked_filter_name:
            return False
        revoked, _ = self._revoked()
        if revoked == self._revoked_ids:
            return False
        started = time.monotonic()
        try:
            compiled = compile_revoked(revoked, filter_name=self.revoked_filter_name)
            self._validate(compiled.config)
        except Exception as exc:
            self.refused += 1
            self.last_refusal = f"revocation filter: {exc}"
            log.exception("xds: compiling the revocation filter failed, keeping the last")
            return False
        finally:
            self._revoked_ids = revoked
        self.install(compiled)
        log.info(
            "xds: revocation filter %s (%d bytes, %d revoked) compiled in %.1f ms",
            compiled.version,
            len(compiled.payload),
            compiled.revoked,
            (time.monotonic() - started) * 1000,
        )
        return True

    def _reassembled(self, inputs: RbacInputs) -> CompiledRbac | None:
        """The config in force with the revocations of ``inputs``, if they are all that
        changed since it was compiled (None: compile in full)."""
        current, before = self.current, self._current_inputs
        if current is None or before is None:
            return None
        if replace(before, revoked=inputs.revoked, to_extauthz=inputs.to_extauthz) != inputs:
            return None
        return with_revocations(
            current, revoked=inputs.revoked, to_extauthz=inputs.to_extauthz, validate=self._validate
        )

    async def refresh(self) -> bool:
        """Recompile what changed (the revocation filter first); True if a new config is in
        force."""
        revoked = self.refresh_revocations()
        inputs = self.inputs()
        if inputs == self._inputs:
            return revoked
        started = time.monotonic()
        how = "re-assembled around the cached rules"
        try:
            # Off the loop, as a compile: at 10,000 callers the bytes are megabytes.
            compiled = await asyncio.to_thread(self._reassembled, inputs)
            if compiled is None:
                how = "compiled"
                compiled = await asyncio.to_thread(self._compile, inputs, self.filter_name)
                self._validate(compiled.config)
        except InvalidRbacConfig as exc:
            self._inputs = inputs  # not again until something changes
            self.refused += 1
            self.last_refusal = str(exc)
            log.error("xds: not pushing the compiled RBAC config, keeping the last: %s", exc)
            return revoked
        except Exception:
            self._inputs = inputs
            self.refused += 1
            self.last_refusal = "the compiler failed (see the log)"
            log.exception("xds: compiling the RBAC config failed, keeping the last")
            return revoked
        self._inputs = self._current_inputs = inputs
        if self.current is not None and compiled.version == self.current.version:
            return revoked
        self.install(compiled)
        log.info(
            "xds: RBAC config %s (%d bytes, %d identities, %d revoked) %s in %.1f ms",
            compiled.version,
            len(compiled.payload),
            compiled.identities,
            compiled.revoked,
            how,
            (time.monotonic() - started) * 1000,
        )
        warn_native_only(compiled)
        return True

    def install(self, compiled: CompiledRbac) -> None:
        """Serve ``compiled`` (the rules filter's or the revocation filter's, by its name)
        from now on and wake every stream."""
        if self.revoked_filter_name and compiled.filter_name == self.revoked_filter_name:
            self.revocations = compiled
            self.revocations_at = time.time()
        else:
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

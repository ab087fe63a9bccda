"""The Check pipeline: CheckContext → identities → policy decision → Outcome.

Transport-free: the gRPC and HTTP adapters build the CheckContext and turn the Outcome into
their own response. This is where the rules that hold for every policy engine live:

- a credential that was presented and did not verify denies with 401 (``revoked`` when it
  was revoked), whatever the policy would have said;
- a policy deny for a caller with no verified identity is 401 ``missing_credentials``
  (with WWW-Authenticate); for a known caller it is 403;
- on allow, the verified identities go upstream in configured headers, client-sent copies of
  those headers and the consumed credential headers are removed;
- dry-run answers allow but logs and counts what would have been denied;
- the path policies see is normalised first (``authd.check.request_path``);
- what the caller sent can never make a check fail: input that cannot be parsed is a deny.

Caller input versus authd's own failures. A ``MalformedRequest`` raised anywhere during a
check means the caller sent something that cannot be read: an ambiguous path (encoded
``/``), a credential or request body a parser could not handle, an input document that
cannot be built or handed to Rego. It is answered with a deny, reason ``malformed_request``,
status 400, logged once (with the traceback when a parser failed unexpectedly) and counted
(``authd_malformed_requests``). Every other exception is a failure of authd itself (a policy
engine's evaluation error, an unreachable OPA, a revocation store that cannot be read) and
propagates: the adapters answer it as a gRPC error / HTTP 500, so Envoy's
``status_on_error`` decides, as documented for those.

Policy ``dynamic_metadata`` goes to Envoy with authd's own keys (``AUTHD_METADATA_KEYS``)
taken out: authd's values win, and a key authd does not set this time is not set at all.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from authd.authz.decision_log import DecisionSink
from authd.authz.metrics import AuthzMetrics
from authd.authz.opa_envoy_outcome import ExtraHeaders, opa_envoy_outcome
from authd.authz.txn_tokens import TxnTokens, mints_here, user_scope
from authd.check.errors import MalformedRequest
from authd.check.header_values import check_names, sendable_opa_envoy_outcome, sendable_outcome
from authd.check.input_document import input_document, pruned_input_document
from authd.check.model import (
    CheckContext,
    CredentialProblem,
    Decision,
    Identities,
    Outcome,
    PolicyTrace,
    Reason,
)
from authd.check.opa_envoy_input import DEFAULT_BODY_PARSING, BodyParsing, check_parsable
from authd.policy.base import Policy

log = logging.getLogger(__name__)

UNAUTHENTICATED = 401
FORBIDDEN = 403
BAD_REQUEST = 400
# Dynamic metadata keys that only authd sets; a policy's values for them are dropped.
AUTHD_METADATA_KEYS = frozenset(
    {"decision_id", "reason", "rule", "caller", "dry_run_would_deny", "txn"}
)
_NOBODY = Identities()


@dataclass(frozen=True, slots=True)
class AuthzSettings:
    caller_header: str = "x-authd-caller"  # verified caller SPIFFE ID, to the upstream
    subject_header: str = "x-authd-subject"  # verified end-user subject, to the upstream
    decision_id_header: str = "x-authd-decision-id"
    # Inbound credential headers stripped from the upstream request on allow.
    remove_headers: tuple[str, ...] = ("authorization", "x-api-key")
    realm: str = "authd"
    dry_run: bool = False
    # "authd" (the rules above) or "opa-envoy": answer exactly as the OPA-Envoy plugin does,
    # plus only the ``extras`` named (authd.authz.opa_envoy_outcome).
    compat: str = "authd"
    extras: frozenset[str] = frozenset()
    # How request bodies become parsed_body in OPA-Envoy mode (authd.check.opa_envoy_input).
    body_parsing: BodyParsing = DEFAULT_BODY_PARSING


class _LazyInput:
    """The OPA-Envoy input document plus ``input.authd``, built on first use only, then kept.

    ``pruned(paths)`` gives only the parts at ``paths`` (what ``prune_input`` keeps of the
    whole document) and computes nothing else: a Rego policy reading static paths asks so.
    """

    __slots__ = ("_ctx", "_doc", "_identities", "_opa_envoy")

    def __init__(self, ctx: CheckContext, identities: Identities, opa_envoy: bool = False) -> None:
        self._ctx = ctx
        self._identities = identities
        self._opa_envoy = opa_envoy
        self._doc: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        if self._doc is None:
            try:
                document = input_document(self._ctx, self._opa_envoy)
            except MalformedRequest:
                raise
            except Exception as exc:  # built from the request alone: the caller's input
                raise _unreadable_input(exc) from exc
            document["authd"] = self._authd()
            self._doc = document
        return self._doc

    def pruned(self, paths: Sequence[tuple[str, ...]]) -> dict[str, Any]:
        try:
            return pruned_input_document(self._ctx, paths, {"authd": self._authd}, self._opa_envoy)
        except MalformedRequest:
            raise
        except Exception as exc:
            raise _unreadable_input(exc) from exc

    def _authd(self) -> dict[str, Any]:
        document = identity_document(self._identities)
        if self._opa_envoy:
            # Nothing was refused before the policy: it sees what failed to verify, and a
            # path with no single normalised meaning has none (the plugin does not refuse it).
            document["problems"] = [
                {"kind": p.kind, "reason": p.reason, "revoked": p.revoked}
                for p in self._identities.problems
            ]
            try:
                document["path"] = self._ctx.normalized_path
            except MalformedRequest:
                document["path"] = None
        else:
            document["path"] = self._ctx.normalized_path
        document["raw_path"] = self._ctx.path_only
        return document


def _unreadable_input(exc: Exception) -> MalformedRequest:
    return MalformedRequest("input", f"the input document cannot be built: {type(exc).__name__}")


def logged_input(ctx: CheckContext, identities: Identities, opa_envoy: bool) -> dict[str, Any]:
    """The whole input document a policy was given for ``ctx``, as decision logs record it."""
    return _LazyInput(ctx, identities, opa_envoy)()


def identity_document(identities: Identities) -> dict[str, Any]:
    """``input.authd``'s identities, for Rego policies: each one separately.

    ``peer`` (the mTLS peer) and ``workload`` (a JWT-SVID's subject) are both given, so a
    policy can judge each; ``caller`` is the one the upstream is told (``workload`` if any).
    The pipeline adds ``path`` (normalised) and ``raw_path`` (as sent), both without query.
    """
    user = identities.user
    return {
        "caller": str(identities.caller) if identities.caller else None,
        "peer": str(identities.peer) if identities.peer else None,
        "peer_serial": identities.peer_serial,
        "workload": str(identities.workload) if identities.workload else None,
        "user": None
        if user is None
        else {"issuer": user.issuer, "subject": user.subject, "claims": dict(user.claims)},
        "api_key": identities.api_key,
        "authenticated": identities.authenticated,
        "txn_token": None if identities.txn_token is None else identities.txn_token.document(),
    }


class Resolver(Protocol):
    """What the pipeline needs of the identity resolver (authd.authz.identity)."""

    async def resolve(self, ctx: CheckContext) -> Identities: ...


class Authorizer:
    def __init__(
        self,
        *,
        resolver: Resolver,
        policy: Callable[[], Policy],
        settings: AuthzSettings | None = None,
        decision_log: DecisionSink | None = None,
        metrics: AuthzMetrics | None = None,
        fresh: Callable[[], bool] = lambda: True,
        stale_reason: Callable[[], Reason] = lambda: Reason.STALE,
        txn_tokens: TxnTokens | None = None,
    ) -> None:
        """``fresh`` says whether this replica's view may decide; when it may not, the check
        fails closed (503) with ``stale_reason()``: the view is too old, or the store went
        backwards."""
        self._resolver = resolver
        self._txn_tokens = txn_tokens
        self._policy = policy
        self.settings = settings or AuthzSettings()
        self._log = decision_log
        self._metrics = metrics
        self._fresh = fresh
        self._stale_reason = stale_reason
        s = self.settings
        self._id_header = s.decision_id_header
        self._identity_headers = [s.caller_header, s.subject_header, s.decision_id_header]
        self._strip = [*self._identity_headers, *s.remove_headers]
        self._txn_header = txn_tokens.settings.header if txn_tokens is not None else ""
        # Once: the checks add only the policy's names.
        check_names([*self._strip, self._txn_header] if self._txn_header else self._strip)
        self._prefix = os.urandom(4).hex()
        self._counter = 0
        self._opa_envoy = s.compat == "opa-envoy"
        # Credential problems deny before the policy (always in authd's own mode).
        self._credential_denials = not self._opa_envoy or "credential_denials" in s.extras
        self._extra_headers = ExtraHeaders(
            caller=s.caller_header,
            subject=s.subject_header,
            decision_id=s.decision_id_header,
            strip=tuple(self._strip),
        )

    def _new_decision_id(self) -> str:
        self._counter += 1
        return f"{self._prefix}-{self._counter:x}"

    async def check(self, ctx: CheckContext) -> Outcome:
        started = time.perf_counter()
        policy = self._policy()
        identities = _NOBODY
        try:
            if self._opa_envoy:
                # What the plugin cannot parse it refuses, 400.
                check_parsable(ctx, self.settings.body_parsing)
            else:
                ctx.normalized_path  # noqa: B018 (an ambiguous path is refused before any work)
            identities = await self._resolver.resolve(ctx)
            if not self._fresh():
                # Fail closed: past the maximum staleness a revocation may have been missed.
                reason = self._stale_reason()
                rule = "store" if reason == Reason.STORE_REGRESSED else "revocations"
                decision = Decision(allowed=False, reason=reason, rule=rule, http_status=503)
            elif (
                identities.problems
                and (problem := self._refused_credential(identities)) is not None
            ):
                reason = Reason.REVOKED if problem.revoked else Reason.INVALID_CREDENTIALS
                decision = Decision(allowed=False, reason=reason, rule=problem.kind)
            else:
                document = _LazyInput(ctx, identities, self._opa_envoy)
                evaluating = time.perf_counter_ns()
                decision = await policy.evaluate(ctx, identities, document)
                if decision.trace is not None:  # OPA-format decision logs record the time
                    eval_ns = time.perf_counter_ns() - evaluating
                    decision.trace = PolicyTrace(decision.trace.result, eval_ns)
        except MalformedRequest as exc:
            decision = self._malformed(ctx, exc)
        tokens = self._txn_tokens
        if tokens is None or (
            identities.txn_token is None and not mints_here(ctx, tokens.settings)
        ):
            txn = _NO_TXN  # nothing to mint, narrow or carry: the step would change nothing
        else:
            txn = _TxnStep()
            decision = self._txn_step(ctx, identities, decision, txn)
        if self._opa_envoy and not (decision.envoy is None and self._authd_answers(decision)):
            outcome = opa_envoy_outcome(
                decision,
                identities,
                self._new_decision_id(),
                extras=self.settings.extras,
                names=self._extra_headers,
                dry_run=self.settings.dry_run,
            )
            outcome = sendable_opa_envoy_outcome(outcome)
        else:
            outcome = self._outcome(decision, identities, txn)
            if not _authd_values_only(outcome):
                outcome = sendable_outcome(outcome, self._id_header)
        elapsed = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.observe(ctx.transport, outcome, elapsed)
        if self._log is not None:
            self._log.write(ctx, outcome, policy.name, elapsed, dry_run=self.settings.dry_run)
        return outcome

    def _txn_step(
        self, ctx: CheckContext, identities: Identities, decision: Decision, step: _TxnStep
    ) -> Decision:
        """Mint a Txn-Token at a front door, or narrow the one carried; never widen one."""
        tokens = self._txn_tokens
        assert tokens is not None
        carried = identities.txn_token
        step.minting = mints_here(ctx, tokens.settings)
        if not step.minting and carried is not None:
            step.txn = carried.txn
        if not decision.allowed:
            return decision
        scope = decision.txn_scope
        if step.minting:
            widest = user_scope(identities)
            if scope is not None and widest is not None and not set(scope) <= set(widest):
                return _widened(decision, "the end user's scope")
            txn = tokens.new_txn()
            token = tokens.mint(ctx, identities, txn=txn, scope=scope, rule=decision.rule)
            if token is not None:
                step.txn, step.token = txn, token
        elif carried is not None and scope is not None:
            if not set(scope) <= set(carried.scope):
                return _widened(decision, "the Txn-Token's scope")
            if tuple(scope) != carried.scope:
                step.token = tokens.replace(carried, scope) or ""
        return decision

    def _refused_credential(self, identities: Identities) -> CredentialProblem | None:
        """The credential problem that denies before the policy runs: the first one in
        authd's mode (or with the ``credential_denials`` extra); in OPA-Envoy mode only a
        revoked credential, since revocation bites in every mode and the plugin has none."""
        if not identities.problems:
            return None
        if self._credential_denials:
            return identities.problems[0]
        return next((p for p in identities.problems if p.revoked), None)

    @staticmethod
    def _authd_answers(decision: Decision) -> bool:
        """In OPA-Envoy mode, whether authd's own answer goes out (a credential denial)."""
        return decision.reason in (Reason.INVALID_CREDENTIALS, Reason.REVOKED)

    def _malformed(self, ctx: CheckContext, exc: MalformedRequest) -> Decision:
        """The deny for input the caller sent that cannot be read; logged once and counted."""
        if exc.__cause__ is not None:
            # A parser failed in a way nobody foresaw: keep the traceback to fix it.
            log.warning("%s check denied, malformed request: %s", ctx.transport, exc, exc_info=exc)
        else:
            log.info("%s check denied, malformed request: %s", ctx.transport, exc)
        if self._metrics is not None:
            self._metrics.malformed(ctx.transport, exc.rule)
        return Decision(
            allowed=False, reason=Reason.MALFORMED_REQUEST, rule=exc.rule, http_status=BAD_REQUEST
        )

    def _outcome(self, decision: Decision, identities: Identities, txn: _TxnStep) -> Outcome:
        s = self.settings
        # A transaction minted here is known by its txn everywhere, from this decision on.
        decision_id = txn.txn if txn.token and txn.minting else self._new_decision_id()
        metadata: dict[str, Any] = (
            {
                key: value
                for key, value in decision.dynamic_metadata.items()
                if key not in AUTHD_METADATA_KEYS
            }
            if decision.dynamic_metadata
            else {}
        )
        metadata["decision_id"] = decision_id
        metadata["reason"] = str(decision.reason)
        if decision.rule:
            metadata["rule"] = decision.rule
        if txn.txn:
            metadata["txn"] = txn.txn
        if decision.allowed:
            return self._allow(decision, identities, decision_id, metadata, txn)
        status = decision.http_status
        bad_credentials = decision.reason in (Reason.INVALID_CREDENTIALS, Reason.REVOKED)
        if not identities.authenticated and not bad_credentials and not status:
            decision.reason = Reason.MISSING_CREDENTIALS
            metadata["reason"] = str(decision.reason)
        if not status:
            status = (
                UNAUTHENTICATED if bad_credentials or not identities.authenticated else FORBIDDEN
            )
        headers = {
            "content-type": "application/json",
            s.decision_id_header: decision_id,
            **decision.headers,
        }
        if status == UNAUTHENTICATED:
            missing = decision.reason == Reason.MISSING_CREDENTIALS
            error = "" if missing else ', error="invalid_token"'
            headers.setdefault("www-authenticate", f'Bearer realm="{s.realm}"{error}')
        body = decision.body or (
            '{"error":"%s","decision_id":"%s"}' % (decision.reason, decision_id)  # noqa: UP031
        )
        if s.dry_run:
            metadata["dry_run_would_deny"] = True
            outcome = self._allow(decision, identities, decision_id, metadata, txn)
            outcome.status = status
            return outcome
        return Outcome(
            txn=txn.txn,
            decision=decision,
            identities=identities,
            decision_id=decision_id,
            status=status,
            allowed=False,
            deny_headers=headers,
            deny_body=body,
            dynamic_metadata=metadata,
        )

    def _allow(
        self,
        decision: Decision,
        identities: Identities,
        decision_id: str,
        metadata: dict[str, Any],
        txn: _TxnStep,
    ) -> Outcome:
        s = self.settings
        # Client-sent copies of the identity headers never reach the upstream: they are
        # removed, then set again from what was verified.
        headers = {s.decision_id_header: decision_id}
        caller = identities.caller
        if caller is not None:
            headers[s.caller_header] = str(caller)
            metadata["caller"] = headers[s.caller_header]
        if identities.user is not None:
            headers[s.subject_header] = identities.user.subject
        headers.update(decision.headers)
        if txn.token:
            headers[self._txn_header] = txn.token
        remove = [h for h in self._strip if h not in headers]
        if txn.minting and not txn.token:
            remove.append(self._txn_header)  # a client's own Txn-Token never enters the mesh
        remove.extend(decision.request_headers_to_remove)
        return Outcome(
            decision=decision,
            identities=identities,
            decision_id=decision_id,
            status=decision.http_status or 200,
            allowed=True,
            upstream_headers=headers,
            remove_headers=remove,
            dynamic_metadata=metadata,
            txn=txn.txn,
        )


def _authd_values_only(outcome: Outcome) -> bool:
    """An allow whose headers are all authd's own values, sendable by construction: the
    decision id (hex), SPIFFE IDs (their syntax admits no space, control or non-ASCII
    character) and a Txn-Token authd minted (base64url and dots); names checked at start.
    A subject, or anything the policy added, goes through ``sendable_outcome``."""
    decision = outcome.decision
    return (
        outcome.allowed
        and outcome.identities.user is None
        and not decision.headers
        and not decision.response_headers_to_add
        and not decision.request_headers_to_remove
    )


class _TxnStep:
    """What the Txn-Token step decided: the transaction, and a token to send upstream."""

    __slots__ = ("minting", "token", "txn")

    def __init__(self) -> None:
        self.minting = False
        self.txn = ""
        self.token = ""


# The step of a check with no Txn-Token to mint or carry (never written to: only _txn_step
# writes, and it gets a fresh one).
_NO_TXN = _TxnStep()


def _widened(decision: Decision, than: str) -> Decision:
    log.info("Txn-Token scope %s is wider than %s: refused", decision.txn_scope, than)
    return Decision(
        allowed=False,
        reason=Reason.TXN_SCOPE_WIDENED,
        rule=decision.rule,
        http_status=FORBIDDEN,
    )

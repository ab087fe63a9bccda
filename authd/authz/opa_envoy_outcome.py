"""A decided check answered as the OPA-Envoy plugin answers it (``authz.policy_compat``).

The plugin's answer (``internal/internal.go``): on allow, gRPC OK with the policy's header,
query and response-header mutations (nothing at all for a boolean result); on deny,
PERMISSION_DENIED with the policy's ``http_status`` (403 when it gives none), ``headers`` and
``body`` (nothing but the status for a boolean result: Envoy answers 403 with an empty
body); the policy's ``dynamic_metadata`` plus ``decision_id``. Nothing else is added unless
``authz.opa_envoy_extras`` asks for it:

- ``decision_id_header``: the decision id upstream on allow and to the client on deny;
- ``identity_headers``: the verified caller and subject upstream, client-sent copies of those
  headers and the credential headers (``authz.remove_headers``) removed;
- ``credential_denials``: a presented credential that does not verify denies 401 before the
  policy runs (with ``www-authenticate`` and authd's JSON body), as in authd's own mode;
- ``json_deny_body``: a deny whose policy gave no body gets authd's JSON body.

Decisions authd makes itself keep their status: a request the plugin could not parse is 400
with the reason as body (``request_parse_error: ...``), stale revocations 503.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from authd.check.model import Decision, EnvoyResponse, Identities, Outcome, Reason

EXTRAS: Final = ("decision_id_header", "identity_headers", "credential_denials", "json_deny_body")
_DRY_RUN_ALLOW = EnvoyResponse(form="object")


@dataclass(frozen=True, slots=True)
class ExtraHeaders:
    """The header names the extras use (the same keys as authd's own mode)."""

    caller: str
    subject: str
    decision_id: str
    strip: tuple[str, ...]  # identity headers and credential headers, removed on allow


def _envoy_of(decision: Decision) -> EnvoyResponse:
    """What the plugin answers for a decision authd made before or without the policy."""
    if decision.envoy is not None:
        return decision.envoy
    if decision.reason == Reason.MALFORMED_REQUEST:
        return EnvoyResponse(
            body=f"request_parse_error: {decision.rule} cannot be parsed", http_status=400
        )
    return EnvoyResponse(http_status=decision.http_status or 403)


def opa_envoy_outcome(
    decision: Decision,
    identities: Identities,
    decision_id: str,
    *,
    extras: frozenset[str],
    names: ExtraHeaders,
    dry_run: bool,
) -> Outcome:
    envoy = _envoy_of(decision)
    metadata: dict[str, Any] = dict(decision.dynamic_metadata)
    metadata["decision_id"] = decision_id  # the plugin's own key wins, as there
    if decision.allowed:
        return _allowed(decision, identities, decision_id, envoy, metadata, extras, names)
    headers: dict[str, str] = {}
    body = envoy.body
    if "json_deny_body" in extras and not body:
        headers["content-type"] = "application/json"
        body = '{"error":"%s","decision_id":"%s"}' % (decision.reason, decision_id)  # noqa: UP031
    if "decision_id_header" in extras:
        headers[names.decision_id] = decision_id
    if dry_run:
        # The plugin answers an empty OkHttpResponse and keeps the metadata.
        outcome = _allowed(
            decision, identities, decision_id, _DRY_RUN_ALLOW, metadata, extras, names
        )
        outcome.status = envoy.http_status
        return outcome
    return Outcome(
        decision=decision,
        identities=identities,
        decision_id=decision_id,
        status=envoy.http_status,
        allowed=False,
        deny_headers=headers,
        deny_body=body,
        dynamic_metadata=metadata,
        envoy=envoy,
    )


def _allowed(
    decision: Decision,
    identities: Identities,
    decision_id: str,
    envoy: EnvoyResponse,
    metadata: dict[str, Any],
    extras: frozenset[str],
    names: ExtraHeaders,
) -> Outcome:
    headers: dict[str, str] = {}
    remove: list[str] = []
    if "identity_headers" in extras:
        if identities.caller is not None:
            headers[names.caller] = str(identities.caller)
        if identities.user is not None:
            headers[names.subject] = identities.user.subject
        remove = [name for name in names.strip if name not in headers]
    if "decision_id_header" in extras:
        headers[names.decision_id] = decision_id
    return Outcome(
        decision=decision,
        identities=identities,
        decision_id=decision_id,
        status=200,
        allowed=True,
        upstream_headers=headers,
        remove_headers=remove,
        dynamic_metadata=metadata,
        envoy=envoy,
    )

"""authz.policy_compat = "opa-envoy": the CheckResponse and HTTP answer the plugin gives.

The expected CheckResponses are written from the plugin's code (open-policy-agent/
opa-envoy-plugin, ``internal/internal.go`` ``check()`` and ``envoyauth/response.go``): a
boolean result sets only ``status`` (and ``dynamic_metadata.decision_id``); an object sets
``ok_response`` or ``denied_response`` from the fields it reads on that side; header options
carry no append action; a deny without ``http_status`` is 403; nothing else is added.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.protobuf import json_format

from authd.authz.opa_envoy_outcome import EXTRAS
from authd.authz.pipeline import Authorizer, AuthzSettings
from authd.check.model import CheckContext, CredentialProblem, Identities, Outcome
from authd.config.model import OPA_ENVOY_EXTRAS
from authd.extauthz.grpc_servicer import check_response
from authd.extauthz.http_service import http_response
from authd.policy.base import PolicyError
from authd.policy.opa_envoy_result import opa_envoy_decision
from authd.policy.rego import RegoPolicy
from ca.spiffe_id import SpiffeId
from tests.support.authz import FixedIdentities

WEB = SpiffeId.parse("spiffe://example.org/web")
COMPAT = AuthzSettings(compat="opa-envoy")


def rego(result: str, *, rules: str = "") -> RegoPolicy:
    source = f"package envoy.authz\n\nimport rego.v1\n\n{rules}\nresponse := {result}\n"
    return RegoPolicy.from_sources(
        {"p.rego": source}, "envoy/authz/response", results=opa_envoy_decision
    )


def decide(
    policy: RegoPolicy,
    *,
    path: str = "/orders/7?x=1",
    identities: Identities | None = None,
    settings: AuthzSettings = COMPAT,
    headers: dict[str, str] | None = None,
) -> Outcome:
    authorizer = Authorizer(
        resolver=FixedIdentities(identities or Identities()),
        policy=lambda: policy,
        settings=settings,
    )
    ctx = CheckContext(
        method="GET",
        host="api.example.com",
        path=path,
        headers={"authorization": "Bearer not-a-jwt", **(headers or {})},
    )
    return asyncio.run(authorizer.check(ctx))


def as_dict(outcome: Outcome) -> dict[str, Any]:
    answer = json_format.MessageToDict(check_response(outcome))
    metadata = answer.pop("dynamicMetadata")
    assert metadata.pop("decisionId") if "decisionId" in metadata else metadata.pop("decision_id")
    if metadata:
        answer["dynamicMetadata"] = metadata
    return answer


def test_boolean_allow_sets_only_the_status() -> None:
    assert as_dict(decide(rego("true"))) == {"status": {}}


def test_boolean_deny_is_a_bare_permission_denied_which_envoy_answers_403_empty() -> None:
    outcome = decide(rego("false"))
    assert as_dict(outcome) == {"status": {"code": 7}}
    assert http_response(outcome) == b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"


def test_object_deny_without_status_is_403_with_the_policy_body_and_no_content_type() -> None:
    outcome = decide(rego('{"allowed": false, "body": "nope", "headers": {"x-why": "rule-7"}}'))
    assert as_dict(outcome) == {
        "status": {"code": 7},
        "deniedResponse": {
            "status": {"code": "Forbidden"},
            "headers": [{"header": {"key": "x-why", "value": "rule-7"}}],
            "body": "nope",
        },
    }
    assert http_response(outcome) == (
        b"HTTP/1.1 403 Forbidden\r\nx-why: rule-7\r\ncontent-length: 4\r\n\r\nnope"
    )


def test_object_allow_keeps_every_header_value_as_its_own_option() -> None:
    outcome = decide(
        rego(
            '{"allowed": true, "headers": [{"x-a": "1"}, {"x-a": ["2", "3"]}], '
            '"request_headers_to_remove": ["authorization"], '
            '"response_headers_to_add": {"x-served-by": "authd"}, '
            '"query_parameters_to_set": {"tenant": ["a", "b"]}, '
            '"query_parameters_to_remove": ["x"]}'
        )
    )
    assert as_dict(outcome) == {
        "status": {},
        "okResponse": {
            "headers": [{"header": {"key": "x-a", "value": v}} for v in ("1", "2", "3")],
            "headersToRemove": ["authorization"],
            "responseHeadersToAdd": [{"header": {"key": "x-served-by", "value": "authd"}}],
            "queryParametersToSet": [
                {"key": "tenant", "value": "a"},
                {"key": "tenant", "value": "b"},
            ],
            "queryParametersToRemove": ["x"],
        },
    }
    assert http_response(outcome) == (
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\nx-a: 2\r\nx-a: 3\r\n"
        b"x-envoy-auth-headers-to-remove: authorization\r\nx-served-by: authd\r\n"
        b"content-length: 0\r\n\r\n"
    )


def test_dynamic_metadata_is_the_policys_plus_the_decision_id() -> None:
    outcome = decide(rego('{"allowed": true, "dynamic_metadata": {"decision_id": "mine", "t": 1}}'))
    response = check_response(outcome)
    metadata = json_format.MessageToDict(response.dynamic_metadata)
    assert metadata == {"decision_id": outcome.decision_id, "t": 1.0}


@pytest.mark.parametrize("status", [418, 425, 999, 306])
def test_a_deny_status_outside_envoys_enum_is_an_error_as_in_the_plugin(status: int) -> None:
    with pytest.raises(PolicyError, match=f"invalid HTTP status code {status}"):
        decide(rego(f'{{"allowed": false, "http_status": {status}}}'))


def test_a_status_outside_the_enum_on_allow_is_not_read_as_in_the_plugin() -> None:
    assert decide(rego('{"allowed": true, "http_status": 418, "body": 7}')).allowed


def test_an_undefined_result_is_an_error_as_in_the_plugin() -> None:
    policy = rego('{"allowed": true}', rules="")
    undefined = RegoPolicy.from_sources(
        {"p.rego": "package envoy.authz\n\nimport rego.v1\n\nresponse := true if input.x\n"},
        "envoy/authz/response",
        results=opa_envoy_decision,
    )
    assert decide(policy).allowed
    with pytest.raises(PolicyError, match="undefined decision"):
        decide(undefined)


def test_an_unverified_bearer_is_never_refused_before_the_policy() -> None:
    problem = CredentialProblem("user_jwt", "user-jwt/iss: token issuer not trusted")
    policy = rego('{"allowed": true, "headers": {"x-problem": input.authd.problems[0].kind}}')
    outcome = decide(policy, identities=Identities(problems=(problem,)))
    assert outcome.allowed
    assert outcome.envoy is not None and outcome.envoy.headers == (("x-problem", "user_jwt"),)
    # No decision-id header, no identity headers, the credential not stripped.
    assert (outcome.upstream_headers, outcome.remove_headers) == ({}, [])


def test_a_revoked_credential_is_refused_before_the_policy_in_every_mode() -> None:
    """OPA-Envoy has no revocation; a policy written for it would let a revoked SVID in.
    Revocation bites everywhere: the one deny authd adds in compat mode."""
    problem = CredentialProblem("peer_certificate", "serial 1f is revoked", revoked=True)
    unverified = CredentialProblem("user_jwt", "user-jwt/iss: token issuer not trusted")
    outcome = decide(rego("true"), identities=Identities(problems=(unverified, problem)))
    decision = outcome.decision
    assert (outcome.allowed, decision.reason, decision.rule) == (
        False,
        "revoked",
        "peer_certificate",
    )
    assert outcome.status == 401 and "www-authenticate" in outcome.deny_headers


def test_extras_are_opt_in() -> None:
    problem = CredentialProblem("jwt_svid", "jwt-svid/exp: token has expired")
    settings = AuthzSettings(compat="opa-envoy", extras=frozenset(EXTRAS))
    refused = decide(rego("true"), identities=Identities(problems=(problem,)), settings=settings)
    assert (refused.allowed, refused.status) == (False, 401)
    assert "www-authenticate" in refused.deny_headers
    allowed = decide(rego("true"), identities=Identities(peer=WEB), settings=settings)
    assert allowed.upstream_headers["x-authd-caller"] == str(WEB)
    assert "x-authd-decision-id" in allowed.upstream_headers
    assert "authorization" in allowed.remove_headers
    denied = decide(rego("false"), identities=Identities(peer=WEB), settings=settings)
    assert denied.deny_headers["content-type"] == "application/json"
    assert set(EXTRAS) == set(OPA_ENVOY_EXTRAS)


def test_dry_run_answers_an_empty_ok_response_as_the_plugin() -> None:
    settings = AuthzSettings(compat="opa-envoy", dry_run=True)
    outcome = decide(rego('{"allowed": false, "body": "no"}'), settings=settings)
    assert as_dict(outcome) == {"status": {}, "okResponse": {}}


def test_a_path_the_plugin_cannot_parse_is_400_with_the_reason() -> None:
    outcome = decide(rego("true"), path="/a%zz")
    assert (outcome.allowed, outcome.status) == (False, 400)
    assert outcome.deny_body.startswith("request_parse_error: ")

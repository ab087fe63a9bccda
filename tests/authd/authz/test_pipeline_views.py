"""Paths and identities as policy sees them: one spelling per path, each identity on its own.

Real engines (Rego through regopy, the rules engine) behind the pipeline; identities are
given (the resolver has its own tests).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from authd.authz.pipeline import Authorizer
from authd.check.model import CheckContext, Decision, Identities, Outcome, Reason
from authd.policy.base import InputDocument, Policy
from authd.policy.rego import RegoPolicy
from authd.policy.rules import RulesPolicy
from ca.spiffe_id import SpiffeId
from tests.support.authz import FixedIdentities

PUBLIC_REGO = """\
package envoy.authz

import rego.v1

default allow := false

allow if input.parsed_path[0] == "public"
"""
PUBLIC_RULES = """\
version: 1
rule_sets:
  default:
    rules:
      - {name: public, effect: allow, paths: ["/public/*"]}
"""
STAGING_DENIED = """\
version: 1
rule_sets:
  default:
    rules:
      - {name: no-staging, effect: deny, callers: ["spiffe://example.org/staging/*"]}
      - {name: prod, effect: allow, callers: ["spiffe://example.org/prod/*"]}
"""
STAGING = SpiffeId.parse("spiffe://example.org/staging/web")
PROD = SpiffeId.parse("spiffe://example.org/prod/web")
CONFUSING_PATHS = [
    "/public/../orders/1",
    "/public/%2e%2e/orders/1",
    "/public/%2E%2e/orders/1",
    "/public/./../orders/1",
    "/public/..%2forders/1",
    "/public/..%2Forders/1",
    "/public/..%5corders/1",
    "/public/..\\\\orders/1",
]


def check(policy: Policy, path: str, identities: Identities | None = None) -> Outcome:
    authorizer = Authorizer(
        resolver=FixedIdentities(identities or Identities()), policy=lambda: policy
    )
    ctx = CheckContext(method="GET", host="api.example.org", path=path, headers={})
    return asyncio.run(authorizer.check(ctx))


@pytest.mark.parametrize("path", CONFUSING_PATHS)
def test_dot_segments_and_encoded_slashes_do_not_pass_a_rego_rule_on_parsed_path(
    path: str,
) -> None:
    policy = RegoPolicy.from_sources({"authz.rego": PUBLIC_REGO}, name="public")
    assert check(policy, "/public/orders/1").allowed
    assert not check(policy, path).allowed


@pytest.mark.parametrize("path", CONFUSING_PATHS)
def test_dot_segments_and_encoded_slashes_do_not_pass_a_rules_path_prefix(path: str) -> None:
    policy = RulesPolicy.from_text(PUBLIC_RULES, "policy.yaml")
    assert check(policy, "/public/orders/1").allowed
    assert not check(policy, path).allowed


def test_encoded_slash_is_a_malformed_request_deny_whatever_the_policy() -> None:
    outcome = check(RulesPolicy.from_text(PUBLIC_RULES, "policy.yaml"), "/public/..%2forders")
    assert (outcome.status, outcome.decision.reason) == (400, Reason.MALFORMED_REQUEST)
    assert outcome.decision.rule == "path"
    assert outcome.dynamic_metadata["reason"] == "malformed_request"


class RecordingPolicy:
    """Allows, and keeps the input document it was given."""

    name = "test:recording"

    def __init__(self) -> None:
        self.document: dict[str, Any] = {}

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        self.document = input_document()
        return Decision(allowed=True, reason=Reason.ALLOWED, rule="recording")


def test_input_has_the_normalised_path_beside_the_path_as_envoy_sent_it() -> None:
    policy = RecordingPolicy()
    check(policy, "/public/%2e%2e/orders//1?x=%2F..")
    document = policy.document
    assert document["attributes"]["request"]["http"]["path"] == "/public/%2e%2e/orders//1?x=%2F.."
    assert document["parsed_path"] == ["orders", "1"]
    assert document["parsed_query"] == {"x": ["/.."]}
    assert document["authd"]["path"] == "/orders/1"
    assert document["authd"]["raw_path"] == "/public/%2e%2e/orders//1"


def test_input_carries_the_peer_and_the_jwt_svid_subject_separately() -> None:
    policy = RecordingPolicy()
    check(policy, "/x", Identities(peer=STAGING, workload=PROD))
    authd = policy.document["authd"]
    assert (authd["peer"], authd["workload"], authd["caller"]) == (
        str(STAGING),
        str(PROD),
        str(PROD),
    )


def test_a_deny_rule_on_the_peer_applies_when_a_jwt_svid_names_another_caller() -> None:
    policy = RulesPolicy.from_text(STAGING_DENIED, "policy.yaml")
    outcome = check(policy, "/x", Identities(peer=STAGING, workload=PROD))
    assert not outcome.allowed
    assert outcome.decision.rule == "no-staging"


def test_a_deny_rule_on_the_jwt_svid_subject_applies_whatever_the_peer() -> None:
    policy = RulesPolicy.from_text(STAGING_DENIED, "policy.yaml")
    outcome = check(policy, "/x", Identities(peer=PROD, workload=STAGING))
    assert outcome.decision.rule == "no-staging"


def test_an_allow_rule_on_callers_still_matches_the_caller() -> None:
    policy = RulesPolicy.from_text(STAGING_DENIED, "policy.yaml")
    assert check(policy, "/x", Identities(peer=PROD)).allowed
    assert check(policy, "/x", Identities(workload=PROD)).allowed


def test_explain_names_both_identities_a_deny_rule_looked_at() -> None:
    policy = RulesPolicy.from_text(STAGING_DENIED, "policy.yaml")
    ctx = CheckContext(method="GET", host="h", path="/x", headers={})
    lines = policy.explain(ctx, Identities(peer=PROD, workload=PROD))
    assert any("neither peer" in line and "nor JWT-SVID" in line for line in lines), lines


def test_explain_of_an_encoded_slash_says_it_was_refused() -> None:
    policy = RulesPolicy.from_text(PUBLIC_RULES, "policy.yaml")
    ctx = CheckContext(method="GET", host="h", path="/public/..%2fadmin", headers={})
    lines = policy.explain(ctx, Identities())
    assert lines[-1] == "decision: deny (malformed_request)"

"""The RBAC compiler: every native decision is the one authd's rules engine makes.

The compiled tree is read back by a reference reading of Envoy's matcher
(``tests.support.rbac_matcher``) and compared, request by request, with
``RuleSet.decide``: a native allow must be an allow, a native deny a deny; anything else
must be handed to ext_authz. Hypothesis searches rule sets and requests for a disagreement.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authd.check.errors import MalformedRequest
from authd.check.model import CheckContext, Identities
from authd.policy.rules import RulesPolicy
from authd.policy.rules_evaluator import RequestView, RuleSet
from authd.xds.rbac_compiler import EXTAUTHZ_PREFIX, compile_rbac
from authd.xds.rbac_validation import validate_rbac
from ca.spiffe_id import SpiffeId
from tests.support.rbac_matcher import evaluate, rbac_matcher
from tests.support.rbac_rules import IDS, METHODS, PATHS, policy, rules_yaml

EXAMPLES = int(os.environ.get("AUTHD_HYPOTHESIS_EXAMPLES", "60"))

WEB = "spiffe://example.org/web"
ADMIN = "spiffe://example.org/admin"
PROD_API = "spiffe://example.org/ns/prod/api"


def rule_set(text: str, name: str = "s") -> RuleSet:
    return RulesPolicy.from_text(text, "t.yaml").rule_sets[name]


def native(rules: RuleSet, peer: str | None, method: str, path: str, **headers: str) -> str:
    compiled = compile_rbac(rules, rule_set_name="s", filter_name="authd.rbac")
    request = {":method": method, ":path": path, **headers}
    return evaluate(rbac_matcher(compiled.config), peer, request)


def authd_allows(rules: RuleSet, peer: str | None, method: str, path: str, **headers: str) -> bool:
    ctx = CheckContext(method=method, host="svc", path=path, headers=headers)
    identities = Identities(peer=SpiffeId.parse(peer) if peer else None)
    try:
        return rules.decide(RequestView(ctx, identities)).allowed
    except MalformedRequest:
        return False


MESH = rule_set(
    policy(
        """\
      - {name: web-orders, effect: allow, methods: [GET], paths: ["/orders", "/orders/{id}"],
         callers: ["spiffe://example.org/web"]}
      - {name: prod-reads, effect: allow, methods: [GET], callers: ["spiffe://example.org/ns/prod/*"]}
      - {name: admin, effect: allow, callers: ["spiffe://example.org/admin"]}
      - {name: no-admin-internal, effect: deny, paths: ["/internal/*"],
         callers: ["spiffe://example.org/admin"]}
      - {name: acme-reports, effect: allow, paths: ["/reports"], headers: {x-tenant: acme},
         callers: ["spiffe://example.org/web"]}
"""
    )
)


def test_identity_method_and_path_rules_are_decided_natively() -> None:
    assert native(MESH, WEB, "GET", "/orders/7") == "allow:web-orders"
    assert native(MESH, WEB, "GET", "/orders?page=2") == "allow:web-orders"
    assert native(MESH, WEB, "POST", "/orders") == "deny:no_matching_rule"
    assert native(MESH, WEB, "GET", "/orders/7/items") == "deny:no_matching_rule"
    assert native(MESH, ADMIN, "PUT", "/x") == "allow:admin"
    assert native(MESH, ADMIN, "GET", "/internal") == "deny:no-admin-internal"
    assert native(MESH, ADMIN, "GET", "/internal/a/b?c") == "deny:no-admin-internal"


def test_a_condition_envoy_cannot_see_hands_the_request_to_ext_authz() -> None:
    assert native(MESH, WEB, "GET", "/reports").startswith(EXTAUTHZ_PREFIX)
    assert "acme-reports" in native(MESH, WEB, "GET", "/reports")


def test_caller_prefixes_are_decided_natively_longest_first() -> None:
    assert native(MESH, PROD_API, "GET", "/x") == "allow:prod-reads"
    assert native(MESH, PROD_API, "POST", "/x") == "deny:no_matching_rule"
    assert native(MESH, "spiffe://example.org/other", "GET", "/x") == "deny:no_matching_rule"
    nested = rule_set(
        policy(
            """\
      - {name: td, effect: allow, methods: [GET], callers: ["spiffe://example.org/*"]}
      - {name: no-staging, effect: deny, callers: ["spiffe://example.org/ns/staging/*"]}
"""
        )
    )
    assert native(nested, "spiffe://example.org/ns/staging/db", "GET", "/") == "deny:no-staging"
    assert native(nested, "spiffe://example.org/ns/prod/db", "GET", "/") == "allow:td"


def test_no_peer_and_credential_headers_go_to_ext_authz() -> None:
    assert native(MESH, None, "GET", "/orders").startswith(EXTAUTHZ_PREFIX)
    bearer = {"authorization": "Bearer x"}
    assert native(MESH, WEB, "GET", "/orders", **bearer).startswith(EXTAUTHZ_PREFIX)


def test_paths_that_may_normalise_differently_go_to_ext_authz() -> None:
    for path in ("/orders/%37", "/orders/./7", "/orders//7", "/orders/7/..", "*", "/a\\b"):
        assert native(MESH, WEB, "GET", path).startswith(EXTAUTHZ_PREFIX), path


def test_revoked_ids_are_denied_first_and_revoked_entries_go_to_ext_authz() -> None:
    compiled = compile_rbac(
        MESH, rule_set_name="s", filter_name="f", revoked=[ADMIN], to_extauthz=[WEB]
    )
    matcher = rbac_matcher(compiled.config)
    headers = {":method": "GET", ":path": "/orders", "authorization": "Bearer x"}
    assert evaluate(matcher, ADMIN, headers) == "deny:revoked-spiffe-id"
    assert evaluate(matcher, WEB, {":method": "GET", ":path": "/orders"}).startswith(
        EXTAUTHZ_PREFIX
    )
    assert compiled.revoked == 1


def test_another_engine_sends_everything_but_revocations_to_ext_authz() -> None:
    compiled = compile_rbac(
        None, rule_set_name="s", filter_name="f", revoked=[ADMIN], everything_to_extauthz="rego"
    )
    matcher = rbac_matcher(compiled.config)
    assert evaluate(matcher, WEB, {":method": "GET", ":path": "/"}) == "extauthz:rego"
    assert evaluate(matcher, ADMIN, {":method": "GET", ":path": "/"}) == "deny:revoked-spiffe-id"


def test_the_output_is_deterministic() -> None:
    text = policy(
        """\
      - {name: a, effect: allow, methods: [GET, POST, PUT], callers: ["spiffe://example.org/b", "spiffe://example.org/a"]}
      - {name: b, effect: deny, paths: ["/z", "/y/{id}", "/x/*"], callers: ["spiffe://example.org/c"]}
"""
    )
    first = compile_rbac(
        rule_set(text), rule_set_name="s", filter_name="f", revoked=["spiffe://x/1", "spiffe://x/0"]
    )
    again = compile_rbac(
        rule_set(text), rule_set_name="s", filter_name="f", revoked=["spiffe://x/0", "spiffe://x/1"]
    )
    assert first.payload == again.payload
    assert first.version == again.version
    other = compile_rbac(rule_set(text), rule_set_name="s", filter_name="f")
    assert other.version != first.version


def test_routing_says_where_each_rule_runs_and_why() -> None:
    routing = {r.rule: r for r in compile_rbac(MESH, rule_set_name="s", filter_name="f").routing}
    assert routing["web-orders"].native
    assert not routing["acme-reports"].native
    assert "headers" in routing["acme-reports"].why
    assert routing["prod-reads"].native


# --- properties --------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=rules_yaml(),
    peer=st.sampled_from([*IDS, None]),
    method=st.sampled_from([*METHODS, "PATCH"]),
    path=st.sampled_from(PATHS),
    tenant=st.sampled_from([None, "acme", "evil"]),
)
def test_a_native_decision_is_always_authds_decision(
    text: str, peer: str | None, method: str, path: str, tenant: str | None
) -> None:
    rules = rule_set(text)
    headers = {"x-tenant": tenant} if tenant else {}
    compiled = compile_rbac(rules, rule_set_name="s", filter_name="f")
    validate_rbac(compiled.config)
    action = evaluate(
        rbac_matcher(compiled.config), peer, {":method": method, ":path": path, **headers}
    )
    if action.startswith(EXTAUTHZ_PREFIX):
        return
    assert action.startswith(("allow:", "deny:")), action
    assert authd_allows(rules, peer, method, path, **headers) == action.startswith("allow:"), action


@settings(max_examples=EXAMPLES, deadline=None)
@given(text=rules_yaml())
def test_the_same_rules_always_compile_to_the_same_bytes(text: str) -> None:
    first = compile_rbac(rule_set(text), rule_set_name="s", filter_name="f")
    second = compile_rbac(rule_set(text), rule_set_name="s", filter_name="f")
    assert first.payload == second.payload

"""The declarative rules engine: what each condition matches, how a rule set decides, and
how every mistake in a policy file is reported (file, line, rule)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authd.check.errors import MalformedRequest
from authd.check.model import CheckContext, Decision, Identities, Reason, UserIdentity
from authd.check.request_path import normalize_path
from authd.policy.base import PolicyError
from authd.policy.rules import RulesPolicy, load_rules_policy
from ca.spiffe_id import SpiffeId

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=300)
REPO = Path(__file__).resolve().parents[3]
ANONYMOUS = Identities()


def rules_policy(rules: str, *, extra: str = "") -> RulesPolicy:
    """A policy whose 'default' rule set holds ``rules`` (YAML list items, 6-space indent)."""
    text = f"version: 1\n{extra}rule_sets:\n  default:\n    rules:\n{rules}"
    return RulesPolicy.from_text(text, "policy.yaml")


def request(
    method: str = "GET",
    host: str = "api.example.com",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    rule_set: str | None = None,
) -> CheckContext:
    return CheckContext(
        method=method,
        host=host,
        path=path,
        headers=headers or {},
        context_extensions={"policy": rule_set} if rule_set is not None else {},
    )


def peer(spiffe_id: str) -> Identities:
    return Identities(peer=SpiffeId.parse(spiffe_id))


def user(issuer: str = "https://idp.example.com", **claims: Any) -> Identities:
    return Identities(user=UserIdentity(issuer=issuer, subject="alice", claims=claims))


def decide(policy: RulesPolicy, ctx: CheckContext, identities: Identities = ANONYMOUS) -> Decision:
    return policy.decide(ctx, identities)


def allowed(policy: RulesPolicy, ctx: CheckContext, identities: Identities = ANONYMOUS) -> bool:
    return decide(policy, ctx, identities).allowed


def load_error(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        RulesPolicy.from_text(text, "policy.yaml")
    return str(info.value)


def rule_error(rules: str) -> str:
    return load_error(f"version: 1\nrule_sets:\n  default:\n    rules:\n{rules}")


# --- how a rule set decides -------------------------------------------------------------


def test_matching_allow_rule_allows_and_names_the_rule() -> None:
    policy = rules_policy("      - {name: read, effect: allow, methods: [GET]}\n")
    decision = decide(policy, request("GET"))
    assert decision.allowed
    assert decision.reason is Reason.ALLOWED
    assert decision.rule == "read"


def test_deny_rule_wins_over_allow() -> None:
    policy = rules_policy(
        "      - {name: everyone, effect: allow}\n"
        "      - {name: no-admin, effect: deny, paths: ['/admin/*']}\n"
    )
    decision = decide(policy, request(path="/admin/users"))
    assert not decision.allowed
    assert decision.reason is Reason.DENIED_BY_RULE
    assert decision.rule == "no-admin"
    assert decide(policy, request(path="/orders")).rule == "everyone"


def test_request_no_rule_matches_is_denied_with_no_matching_rule() -> None:
    policy = rules_policy("      - {name: read, effect: allow, methods: [GET]}\n")
    decision = decide(policy, request("POST"))
    assert not decision.allowed
    assert decision.reason is Reason.NO_MATCHING_RULE
    assert "default" in decision.rule


def test_first_matching_allow_rule_in_file_order_decides() -> None:
    policy = rules_policy(
        "      - {name: first, effect: allow, methods: [GET]}\n"
        "      - {name: second, effect: allow}\n"
    )
    assert decide(policy, request("GET")).rule == "first"
    assert decide(policy, request("PUT")).rule == "second"


def test_rule_without_conditions_matches_every_request() -> None:
    policy = rules_policy("      - {name: all, effect: allow}\n")
    assert allowed(policy, request("DELETE", "x.test", "/anything/at/all"))


def test_every_condition_of_a_rule_must_hold() -> None:
    policy = rules_policy(
        "      - name: r\n        effect: allow\n        methods: [GET]\n"
        "        paths: ['/orders']\n        hosts: [api.example.com]\n"
    )
    assert allowed(policy, request("GET", "api.example.com", "/orders"))
    assert not allowed(policy, request("POST", "api.example.com", "/orders"))
    assert not allowed(policy, request("GET", "other.example.com", "/orders"))
    assert not allowed(policy, request("GET", "api.example.com", "/invoices"))


def test_rule_set_with_no_rules_denies_everything() -> None:
    policy = RulesPolicy.from_text("version: 1\nrule_sets:\n  default:\n    rules: []\n", "p")
    assert decide(policy, request()).reason is Reason.NO_MATCHING_RULE


def test_rules_never_build_the_input_document() -> None:
    policy = rules_policy("      - {name: all, effect: allow}\n")
    built: list[bool] = []

    def input_document() -> dict[str, Any]:
        built.append(True)
        return {}

    decision = asyncio.run(policy.evaluate(request(), ANONYMOUS, input_document))
    assert decision.rule == "all"
    assert built == []


# --- which rule set ---------------------------------------------------------------------

TWO_SETS = """\
version: 1
default_rule_set: gateway
rule_sets:
  gateway:
    rules:
      - {name: gateway-rule, effect: allow}
  mesh:
    rules:
      - {name: mesh-rule, effect: deny}
"""


def test_policy_context_extension_selects_the_rule_set() -> None:
    policy = RulesPolicy.from_text(TWO_SETS, "p")
    assert decide(policy, request(rule_set="mesh")).rule == "mesh-rule"
    assert decide(policy, request(rule_set="gateway")).rule == "gateway-rule"


def test_request_without_policy_extension_uses_default_rule_set() -> None:
    policy = RulesPolicy.from_text(TWO_SETS, "p")
    assert decide(policy, request()).rule == "gateway-rule"


def test_empty_policy_extension_means_not_set() -> None:
    policy = RulesPolicy.from_text(TWO_SETS, "p")
    assert decide(policy, request(rule_set="")).rule == "gateway-rule"


def test_default_rule_set_is_named_default_unless_configured() -> None:
    policy = rules_policy("      - {name: r, effect: allow}\n")
    assert policy.default_rule_set == "default"
    assert decide(policy, request()).rule == "r"


def test_unknown_rule_set_denies_with_no_matching_rule_and_names_it() -> None:
    policy = RulesPolicy.from_text(TWO_SETS, "p")
    decision = decide(policy, request(rule_set="x"))
    assert not decision.allowed
    assert decision.reason is Reason.NO_MATCHING_RULE
    assert decision.rule == "unknown rule set 'x'"


def test_missing_default_rule_set_denies_requests_without_extension() -> None:
    policy = RulesPolicy.from_text(
        "version: 1\nrule_sets:\n  mesh:\n    rules:\n      - {name: r, effect: allow}\n", "p"
    )
    assert decide(policy, request()).rule == "unknown rule set 'default'"
    assert decide(policy, request(rule_set="mesh")).allowed


# --- hosts ------------------------------------------------------------------------------

HOSTS = "      - {name: r, effect: allow, hosts: ['api.example.com', '*.apps.example.com']}\n"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", True),
        ("API.Example.COM", True),
        ("api.example.com:8443", True),
        ("api.example.com.", True),
        ("other.example.com", False),
        ("api.example.com.evil.test", False),
        ("a.apps.example.com", True),
        ("a.b.apps.example.com:443", True),
        ("apps.example.com", False),
        ("xapps.example.com", False),
    ],
)
def test_host_matches_case_insensitively_without_port_and_wildcards_need_a_label(
    host: str, expected: bool
) -> None:
    assert allowed(rules_policy(HOSTS), request(host=host)) is expected


def test_host_patterns_are_compared_case_insensitively() -> None:
    policy = rules_policy("      - {name: r, effect: allow, hosts: ['API.Example.com']}\n")
    assert allowed(policy, request(host="api.example.com"))


# --- methods ----------------------------------------------------------------------------


def test_method_must_be_one_of_the_listed() -> None:
    policy = rules_policy("      - {name: r, effect: allow, methods: [GET, HEAD]}\n")
    assert allowed(policy, request("HEAD"))
    assert not allowed(policy, request("DELETE"))


def test_lower_case_method_in_policy_is_refused_with_the_upper_case_hint() -> None:
    message = rule_error("      - {name: r, effect: allow, methods: [get]}\n")
    assert "policy.yaml:5: rule 'r' in rule set 'default': bad method 'get'" in message
    assert "'GET'" in message


# --- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/orders", "/orders", True),
        ("/orders", "/orders?page=2", True),
        ("/orders", "/orders/", False),
        ("/orders", "/orders/1", False),
        ("/orders/", "/orders/", True),
        ("/orders/{id}", "/orders/42", True),
        ("/orders/{id}", "/orders/42/items", False),
        ("/orders/{id}", "/orders/", False),
        ("/orders/{id}/items/{item}", "/orders/1/items/2", True),
        ("/static/*", "/static", True),
        ("/static/*", "/static/", True),
        ("/static/*", "/static/a/b.css", True),
        ("/static/*", "/staticx", False),
        ("/static/*", "/stat", False),
        ("/users/{id}/*", "/users/7", True),
        ("/users/{id}/*", "/users/7/photos/1", True),
        ("/users/{id}/*", "/users", False),
        ("/*", "/", True),
        ("/*", "/anything/below", True),
        ("/", "/", True),
        ("/", "/x", False),
    ],
)
def test_path_pattern_matches(pattern: str, path: str, expected: bool) -> None:
    policy = rules_policy(f"      - {{name: r, effect: allow, paths: ['{pattern}']}}\n")
    assert allowed(policy, request(path=path)) is expected


@given(st.lists(st.text("ab/.%", max_size=6), max_size=4))
@DETERMINISTIC
def test_prefix_pattern_is_segment_aware(parts: list[str]) -> None:
    path = normalize_path("/" + "/".join(parts))
    policy = rules_policy("      - {name: r, effect: allow, paths: ['/a/*']}\n")
    expected = path == "/a" or path.startswith("/a/")
    assert allowed(policy, request(path=path)) is expected


@pytest.mark.parametrize(
    "path",
    [
        "/admin/users",
        "/public/../admin/users",
        "/./admin/users",
        "//admin/users",
        "/%61dmin/users",
        "/%2e%2e/admin/users",
        "/public/%2E%2E/admin",
    ],
)
def test_encoded_or_dotted_spelling_cannot_slip_past_a_deny_rule(path: str) -> None:
    policy = rules_policy(
        "      - {name: everyone, effect: allow}\n"
        "      - {name: no-admin, effect: deny, paths: ['/admin/*']}\n"
    )
    assert decide(policy, request(path=path)).rule == "no-admin"


@pytest.mark.parametrize("path", ["/files/a%2Fb", "/files/a%2fb", "/files/a%5Cb", "/files/a\\b"])
def test_encoded_slash_or_backslash_is_refused_not_matched(path: str) -> None:
    # Upstreams disagree on whether %2F separates segments: no rule can know what is meant.
    policy = rules_policy("      - {name: r, effect: allow, paths: ['/files/{name}']}\n")
    with pytest.raises(MalformedRequest, match="path"):
        decide(policy, request(path=path))


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("orders", "must start with '/'"),
        ("/a/*/b", "'*' is only allowed as the whole last segment"),
        ("/a*", "'*' is only allowed as the whole last segment"),
        ("/a/{id", "a template variable is a whole segment"),
        ("/a/x{id}", "a template variable is a whole segment"),
        ("/a/{id}/{id}", "used twice"),
        ("/a?b=1", "a query or fragment is not matched"),
        ("/files/a%2Fb", "never matches: such request paths are refused"),
        ("/a//b", "empty segment"),
        ("/a/../b", "never matches a normalized path"),
        ("/a b", "characters not allowed"),
    ],
)
def test_bad_path_pattern_is_refused_at_load(pattern: str, why: str) -> None:
    message = rule_error(f"      - name: r\n        effect: allow\n        paths: ['{pattern}']\n")
    assert message.startswith("policy.yaml:7: rule 'r' in rule set 'default': bad path pattern")
    assert why in message


# --- callers ----------------------------------------------------------------------------

CALLERS = (
    "      - name: r\n        effect: allow\n        callers:\n"
    "          - spiffe://example.org/web\n"
    "          - spiffe://example.org/ns/prod/*\n"
    "          - spiffe://partner.org/*\n"
)


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        ("spiffe://example.org/web", True),
        ("spiffe://example.org/web/admin", False),
        ("spiffe://example.org/webx", False),
        ("spiffe://example.org/ns/prod", True),
        ("spiffe://example.org/ns/prod/sa/orders", True),
        ("spiffe://example.org/ns/production", False),
        ("spiffe://example.org/ns/staging/sa/orders", False),
        ("spiffe://partner.org/any/workload", True),
        ("spiffe://partner.org.evil/x", False),
        ("spiffe://other.org/web", False),
    ],
)
def test_caller_matches_exact_id_or_everything_below_a_slash_star(
    caller: str, expected: bool
) -> None:
    assert allowed(rules_policy(CALLERS), request(), peer(caller)) is expected


def test_rule_that_needs_a_caller_does_not_match_a_request_without_one() -> None:
    policy = rules_policy(CALLERS)
    decision = decide(policy, request(), user(scope="x"))
    assert decision.reason is Reason.NO_MATCHING_RULE


def test_jwt_svid_subject_is_the_caller_over_the_mtls_peer() -> None:
    policy = rules_policy(
        "      - {name: r, effect: allow, callers: ['spiffe://example.org/web']}\n"
    )
    via_gateway = Identities(
        peer=SpiffeId.parse("spiffe://example.org/gateway"),
        workload=SpiffeId.parse("spiffe://example.org/web"),
    )
    assert allowed(policy, request(), via_gateway)
    assert not allowed(policy, request(), peer("spiffe://example.org/gateway"))


@pytest.mark.parametrize(
    ("caller", "why"),
    [
        ("spiffe://Example.org/web", "trust domain character 'E'"),
        ("spiffe://example.org", "a trust domain ID is never a caller"),
        ("spiffe://example.org/ns/*/sa", "'*' is only allowed as a final '/*'"),
        ("https://example.org/web", "scheme must be 'spiffe'"),
        ("spiffe://example.org/a//*", "empty segment"),
    ],
)
def test_malformed_caller_pattern_is_refused_at_load(caller: str, why: str) -> None:
    message = rule_error(
        f"      - name: r\n        effect: allow\n        callers:\n          - '{caller}'\n"
    )
    assert message.startswith("policy.yaml:8: rule 'r' in rule set 'default': bad caller")
    assert why in message


# --- authenticated, users, API keys, headers --------------------------------------------


def test_authenticated_requires_some_verified_credential() -> None:
    policy = rules_policy("      - {name: r, effect: allow, authenticated: true}\n")
    assert not allowed(policy, request(), ANONYMOUS)
    assert allowed(policy, request(), Identities(api_key="ci-bot"))
    assert allowed(policy, request(), peer("spiffe://example.org/web"))


def test_authenticated_false_adds_no_condition() -> None:
    policy = rules_policy("      - {name: r, effect: allow, authenticated: false}\n")
    assert allowed(policy, request(), ANONYMOUS)


USERS = """\
      - name: r
        effect: allow
        users:
          issuers: ["https://idp.example.com"]
          claims:
            scope: "orders:read"
            groups: ["admins", "ops"]
            email_verified: true
"""


def test_user_with_every_listed_claim_matches() -> None:
    identities = user(
        scope="openid orders:read", groups=["ops", "admins", "dev"], email_verified=True
    )
    assert allowed(rules_policy(USERS), request(), identities)


@pytest.mark.parametrize(
    "identities",
    [
        ANONYMOUS,
        peer("spiffe://example.org/web"),
        user(
            "https://other.example.com",
            scope="orders:read",
            groups=["admins", "ops"],
            email_verified=True,
        ),
        user(scope="orders:write", groups=["admins", "ops"], email_verified=True),
        user(scope="orders:read", groups=["admins"], email_verified=True),
        user(scope="orders:read", groups="admins ops", email_verified=True),
        user(scope="orders:read", groups=["admins", "ops"], email_verified=1),
        user(scope="orders:read", groups=["admins", "ops"]),
    ],
    ids=[
        "anonymous",
        "workload-only",
        "other-issuer",
        "scope-missing",
        "one-group-missing",
        "groups-string-is-not-split",
        "true-is-not-1",
        "claim-absent",
    ],
)
def test_user_condition_fails_unless_issuer_and_every_claim_match(
    identities: Identities,
) -> None:
    assert not allowed(rules_policy(USERS), request(), identities)


def test_users_with_no_keys_requires_any_verified_user() -> None:
    policy = rules_policy("      - {name: r, effect: allow, users: {}}\n")
    assert allowed(policy, request(), user())
    assert not allowed(policy, request(), peer("spiffe://example.org/web"))


def test_scope_given_as_a_list_claim_is_matched_by_membership() -> None:
    policy = rules_policy("      - {name: r, effect: allow, users: {claims: {scp: [a, b]}}}\n")
    assert allowed(policy, request(), user(scp=["b", "a", "c"]))
    assert allowed(policy, request(), user(scp="a b"))
    assert not allowed(policy, request(), user(scp="a"))


def test_api_key_condition_matches_the_key_name() -> None:
    policy = rules_policy("      - {name: r, effect: allow, api_keys: [ci-bot]}\n")
    assert allowed(policy, request(), Identities(api_key="ci-bot"))
    assert not allowed(policy, request(), Identities(api_key="other"))
    assert not allowed(policy, request(), ANONYMOUS)


HEADERS = """\
      - name: r
        effect: allow
        headers:
          X-Tenant: acme
          x-env: [prod, staging]
          x-trace: {present: true}
          x-debug: {present: false}
"""


def test_header_conditions_compare_exact_values_and_presence() -> None:
    policy = rules_policy(HEADERS)
    good = {"x-tenant": "acme", "x-env": "staging", "x-trace": ""}
    assert allowed(policy, request(headers=good))
    assert not allowed(policy, request(headers={**good, "x-tenant": "ACME"}))
    assert not allowed(policy, request(headers={**good, "x-env": "dev"}))
    assert not allowed(policy, request(headers={"x-tenant": "acme", "x-env": "prod"}))
    assert not allowed(policy, request(headers={**good, "x-debug": "1"}))


# --- mistakes in the file ---------------------------------------------------------------


def test_unknown_key_names_file_line_rule_and_suggests_the_right_key() -> None:
    message = load_error(
        "version: 1\n"
        "rule_sets:\n"
        "  default:\n"
        "    rules:\n"
        "      - name: orders-read\n"
        "        effect: allow\n"
        "        method: [GET]\n"
    )
    assert message == (
        "policy.yaml:7: rule 'orders-read' in rule set 'default': unknown key 'method' "
        "(did you mean 'methods'?)"
    )


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("methods: GET", "methods must be a list, not str 'GET'"),
        ("methods: []", "methods must not be empty"),
        ("paths: [1]", "each of paths must be a string, not int '1'"),
        ("authenticated: yes please", "authenticated must be true or false"),
        ("headers: {x-version: 2}", "header 'x-version' must be a string, not int '2'"),
        ("headers: {x-a: {present: maybe}}", "present must be true or false"),
        ("users: {claims: {scope: [[a]]}}", "claim 'scope' must be a string, number"),
        ("users: [alice]", "users must be a mapping, not a list"),
        ("hosts: ['api.example.com:443']", "a port is not allowed"),
        ("hosts: ['api.*.com']", "'*.' is only allowed as a leading label"),
    ],
)
def test_wrong_type_or_value_is_refused_with_file_line_and_rule(line: str, why: str) -> None:
    message = rule_error(f"      - name: r\n        effect: allow\n        {line}\n")
    assert message.startswith("policy.yaml:7: rule 'r' in rule set 'default': ")
    assert why in message


def test_effect_must_be_allow_or_deny() -> None:
    message = rule_error("      - name: r\n        effect: permit\n")
    assert message == (
        "policy.yaml:6: rule 'r' in rule set 'default': effect must be 'allow' or 'deny', "
        "not str 'permit'"
    )


def test_rule_without_name_is_named_by_its_position() -> None:
    message = rule_error("      - {name: a, effect: allow}\n      - {effect: allow}\n")
    assert message == "policy.yaml:6: rule #2 in rule set 'default': missing required key 'name'"


def test_duplicate_rule_name_points_at_both_definitions() -> None:
    message = rule_error("      - {name: a, effect: allow}\n      - {name: a, effect: deny}\n")
    assert message == (
        "policy.yaml:6: rule 'a' in rule set 'default': duplicate rule name "
        "(first defined at line 5)"
    )


def test_duplicate_key_in_a_rule_is_refused() -> None:
    message = rule_error(
        "      - name: a\n        effect: allow\n        methods: [GET]\n        methods: [PUT]\n"
    )
    assert (
        message
        == "policy.yaml:8: rule 'a' in rule set 'default': duplicate key 'methods' in a rule"
    )


def test_yaml_syntax_error_names_the_line() -> None:
    message = load_error(
        "version: 1\nrule_sets:\n  default:\n    rules:\n"
        "      - name: a\n        effect: allow\n         methods: [GET\n"
    )
    assert message.startswith("policy.yaml:7: YAML syntax error: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "policy.yaml:1: the policy file is empty"),
        ("rule_sets: {}\n", "policy.yaml:1: missing 'version: 1'"),
        ("version: 2\nrule_sets: {}\n", "policy.yaml:1: unsupported version int '2'; use 1"),
        ("version: 1\n", "policy.yaml:1: missing 'rule_sets'"),
        ("version: 1\nrule_sets: {}\n", "policy.yaml:2: rule_sets must name at least one"),
        (
            "version: 1\nrules: []\n",
            "policy.yaml:2: unknown key 'rules' (did you mean 'rule_sets'?)",
        ),
        (
            "version: 1\nrule_sets:\n  a:\n    rule: []\n",
            "policy.yaml:4: rule set 'a': unknown key 'rule' (did you mean 'rules'?)",
        ),
        (
            "version: 1\ndefault_rule_set: main\nrule_sets:\n  default:\n    rules: []\n",
            "policy.yaml:2: default_rule_set 'main' is not a rule set (have: default)",
        ),
        ("- a\n- b\n", "policy.yaml:1: the policy file must be a mapping, not a list"),
    ],
)
def test_file_level_mistakes_are_refused_with_the_line(text: str, expected: str) -> None:
    assert load_error(text).startswith(expected)


def test_loading_a_file_names_the_path_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nrule_sets:\n  default:\n    rules:\n      - {name: a}\n")
    with pytest.raises(PolicyError) as info:
        load_rules_policy(path)
    assert str(info.value).startswith(f"{path}:5: rule 'a' in rule set 'default': missing")


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_rules_policy(tmp_path / "absent.yaml")


def test_policy_is_named_after_its_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nrule_sets:\n  default:\n    rules: []\n")
    assert load_rules_policy(path).name == f"rules:{path}"


# --- the shipped example and explain ----------------------------------------------------


def test_example_policy_in_deploy_loads_and_decides_as_its_comments_say() -> None:
    policy = load_rules_policy(REPO / "deploy/policy/rules.yaml")
    web = peer("spiffe://example.org/ns/prod/sa/web")
    assert decide(policy, request(path="/healthz")).rule == "health"
    assert decide(policy, request(path="/internal/metrics")).rule == "block-internal"
    reader = user(scope="openid orders:read")
    assert decide(policy, request(path="/orders/1"), reader).rule == "orders-read"
    assert decide(policy, request(path="/orders/1", rule_set="mesh"), web).rule == "web-to-orders"
    staging = peer("spiffe://example.org/ns/staging/sa/web")
    assert decide(policy, request(rule_set="mesh"), staging).rule == "no-staging-in-prod"


def test_explain_says_which_rules_matched_and_which_condition_failed() -> None:
    policy = rules_policy(
        "      - {name: reads, effect: allow, methods: [GET], paths: ['/orders/{id}']}\n"
        "      - {name: writes, effect: allow, methods: [POST], api_keys: [ci-bot]}\n"
    )
    lines = policy.explain(request("GET", path="/orders/7"), ANONYMOUS)
    assert lines[0] == "rule set 'default', selected by default (no 'policy' context extension)"
    assert lines[1] == "allow rule 'reads' (line 5): matched"
    assert lines[2] == (
        "allow rule 'writes' (line 6): no match: methods: method 'GET' is not one of POST; "
        "api_keys: no verified API key"
    )
    assert lines[3] == "decision: allow (allowed: reads)"


def test_explain_reports_an_unknown_rule_set() -> None:
    policy = RulesPolicy.from_text(TWO_SETS, "p")
    lines = policy.explain(request(rule_set="nope"), ANONYMOUS)
    assert lines[0].startswith("unknown rule set 'nope', selected by context extension")
    assert "known: gateway, mesh" in lines[0]
    assert lines[-1] == "decision: deny (no_matching_rule)"

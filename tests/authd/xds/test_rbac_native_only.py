"""``[xds] native_only``: every request that would go to ext_authz is denied, nothing else moves.

The same rules are compiled both ways and read back request by request
(``tests.support.rbac_matcher``): where the normal tree decides natively the native-only one
decides the same; where it hands over to ext_authz the native-only one denies
(``deny:native_only:<why>``, an RBAC ``DENY``). Hypothesis searches for a request where
native-only allows what the normal tree would not have allowed natively.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authd.config.errors import ConfigError
from authd.config.loader import load_config
from authd.policy.rules import RulesPolicy
from authd.policy.rules_evaluator import RuleSet
from authd.xds.publisher import warn_native_only
from authd.xds.rbac_compiler import EXTAUTHZ_PREFIX, NATIVE_ONLY_PREFIX, compile_rbac
from authd.xds.rbac_validation import validate_rbac
from tests.support.rbac_matcher import evaluate, rbac_matcher
from tests.support.rbac_rules import ADMIN, IDS, METHODS, PATHS, WEB, policy, rules_yaml

EXAMPLES = int(os.environ.get("AUTHD_HYPOTHESIS_EXAMPLES", "60"))

MESH = """\
      - {name: web-orders, effect: allow, methods: [GET], paths: ["/orders/{id}"],
         callers: ["spiffe://example.org/web"]}
      - {name: admin, effect: allow, callers: ["spiffe://example.org/admin"]}
      - {name: acme-reports, effect: allow, paths: ["/reports"], headers: {x-tenant: acme},
         callers: ["spiffe://example.org/web"]}
"""


def rule_set(text: str) -> RuleSet:
    return RulesPolicy.from_text(text, "t.yaml").rule_sets["s"]


def actions(matcher: Any) -> Iterator[Any]:
    """Every ``envoy.config.rbac.v3.Action`` in a matcher tree."""
    on_matches = [matcher.on_no_match] if matcher.HasField("on_no_match") else []
    on_matches += [m.on_match for m in matcher.matcher_list.matchers]
    tree = matcher.matcher_tree
    on_matches += list(tree.exact_match_map.map.values()) + list(tree.prefix_match_map.map.values())
    for on_match in on_matches:
        if on_match.HasField("matcher"):
            yield from actions(on_match.matcher)
        else:
            action = rbac_config_pb2.Action()
            on_match.action.typed_config.Unpack(action)
            yield action


def both(rules: RuleSet | None, **kwargs: Any) -> tuple[Any, Any]:
    normal = compile_rbac(rules, rule_set_name="s", filter_name="f", **kwargs)
    only = compile_rbac(rules, rule_set_name="s", filter_name="f", native_only=True, **kwargs)
    validate_rbac(only.config)
    return normal, only


def test_every_hand_over_is_a_deny_named_after_why() -> None:
    _, only = both(rule_set(policy(MESH)), to_extauthz=[ADMIN])
    matcher = rbac_matcher(only.config)
    found = list(actions(matcher))
    assert not [a.name for a in found if a.name.startswith(EXTAUTHZ_PREFIX)]
    assert {a.action for a in found if a.name.startswith("deny:")} == {rbac_config_pb2.RBAC.DENY}
    get = {":method": "GET", ":path": "/orders/7"}
    assert evaluate(matcher, WEB, get) == "allow:web-orders"
    reports = {":method": "GET", ":path": "/reports", "x-tenant": "acme"}
    assert evaluate(matcher, WEB, reports).startswith(NATIVE_ONLY_PREFIX)
    assert "acme-reports" in evaluate(matcher, WEB, reports)
    bearer = {**get, "authorization": "Bearer x"}
    assert evaluate(matcher, WEB, bearer) == NATIVE_ONLY_PREFIX + "credential header"
    assert evaluate(matcher, None, get) == NATIVE_ONLY_PREFIX + "no SPIFFE peer"
    assert evaluate(matcher, WEB, {**get, ":path": "/orders/%37"}).startswith(NATIVE_ONLY_PREFIX)
    assert evaluate(matcher, ADMIN, get) == NATIVE_ONLY_PREFIX + "entry revoked"


def test_everything_to_ext_authz_is_everything_denied() -> None:
    _, only = both(None, everything_to_extauthz="rego")
    matcher = rbac_matcher(only.config)
    assert evaluate(matcher, WEB, {":method": "GET", ":path": "/"}) == NATIVE_ONLY_PREFIX + "rego"
    assert [a.action for a in actions(matcher)] == [rbac_config_pb2.RBAC.DENY] * 2


def test_the_denied_rules_are_named_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    normal, only = both(rule_set(policy(MESH)))
    assert normal.denied_rules() == ()
    assert [r.rule for r in only.denied_rules()] == ["acme-reports"]
    assert only.version != normal.version
    with caplog.at_level(logging.WARNING, logger="authd.xds.publisher"):
        warn_native_only(only)
        warn_native_only(normal)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "'acme-reports'" in lines[0] and "headers" in lines[0] and "denied" in lines[0]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=rules_yaml(),
    peer=st.sampled_from([*IDS, None]),
    method=st.sampled_from([*METHODS, "PATCH"]),
    path=st.sampled_from(PATHS),
    tenant=st.sampled_from([None, "acme"]),
    bearer=st.booleans(),
)
def test_native_only_decides_as_the_normal_tree_or_denies(
    text: str, peer: str | None, method: str, path: str, tenant: str | None, bearer: bool
) -> None:
    normal, only = both(rule_set(text))
    request = {":method": method, ":path": path}
    request |= {"x-tenant": tenant} if tenant else {}
    request |= {"authorization": "Bearer x"} if bearer else {}
    expected = evaluate(rbac_matcher(normal.config), peer, request)
    got = evaluate(rbac_matcher(only.config), peer, request)
    if expected.startswith(EXTAUTHZ_PREFIX):
        assert got == NATIVE_ONLY_PREFIX + expected[len(EXTAUTHZ_PREFIX) :]
    else:
        assert got == expected
    assert not [a for a in actions(rbac_matcher(only.config)) if a.name.startswith("extauthz")]


def test_the_key_names_the_rules_filter_apart_and_refuses_a_dry_run() -> None:
    config = load_config(None, env={}, overrides={"xds.enabled": True, "xds.native_only": True})
    assert config.xds.served_filter_name == "authd.rbac.native_only"
    assert load_config(None, env={}).xds.served_filter_name == "authd.rbac"
    with pytest.raises(ConfigError, match="dry run"):
        load_config(None, env={}, overrides={"xds.native_only": True, "authz.dry_run": True})
    with pytest.raises(ConfigError, match="two names"):
        load_config(None, env={}, overrides={"xds.revoked_filter_name": "authd.rbac"})


def test_native_only_folds_revocations_into_the_rules_filter() -> None:
    only = {"xds.enabled": True, "xds.native_only": True}
    config = load_config(None, env={}, overrides=only)
    assert config.xds.served_revoked_filter_name == ""
    assert load_config(None, env={}).xds.served_revoked_filter_name == "authd.rbac.revoked"
    # "" says what native_only does anyway: allowed.
    emptied = load_config(None, env={}, overrides={**only, "xds.revoked_filter_name": ""})
    assert emptied.xds.served_revoked_filter_name == ""


def test_native_only_refuses_a_revocation_filter_named_by_the_operator(tmp_path: Path) -> None:
    named = {"xds.native_only": True, "xds.revoked_filter_name": "authd.rbac.revoked"}
    with pytest.raises(ConfigError, match="no revocation filter to name") as refused:
        load_config(None, env={}, overrides=named)
    assert refused.value.key == "xds.revoked_filter_name"
    toml = tmp_path / "authd.toml"
    toml.write_text('[xds]\nnative_only = true\nrevoked_filter_name = "x.revoked"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(toml, env={})
    assert str(toml) in str(refused.value) and 'set it to ""' in str(refused.value)

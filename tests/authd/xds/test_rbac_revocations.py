"""Revocations re-assembled into a compiled rules filter: the bytes of a full compile.

Hypothesis draws rule sets, a first set of revocations (compiled in full) and a second one
(re-assembled around the first compile's cached rules): the result must be byte for byte
what compiling the rules with the second set gives, in every mode the compiler has. The
publisher is driven on an event loop with a counting compiler: a change of revocations
alone never reaches the compiler, anything else does.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authd.policy.rules import RulesPolicy
from authd.policy.rules_evaluator import RuleSet
from authd.xds.publisher import RbacPublisher, compile_inputs
from authd.xds.rbac_compiler import REVOKED_ACTION, CompiledRbac, compile_rbac
from authd.xds.rbac_revocations import with_revocations
from authd.xds.rbac_validation import InvalidRbacConfig, validate_rbac
from tests.support.rbac_compiler import CountingCompiler
from tests.support.rbac_matcher import evaluate, rbac_matcher
from tests.support.rbac_rules import ADMIN, IDS, WEB, policy, rules_yaml

EXAMPLES = int(os.environ.get("AUTHD_HYPOTHESIS_EXAMPLES", "60"))

GONE = "spiffe://example.org/gone"  # named by no rule
REVOCABLE = [*IDS, GONE]
GET = {":method": "GET", ":path": "/orders/7"}
RULES = policy(
    """\
      - {name: web, effect: allow, methods: [GET], callers: ["spiffe://example.org/web"]}
      - {name: admin, effect: allow, callers: ["spiffe://example.org/admin"]}
"""
)


def rule_set(text: str) -> RuleSet:
    return RulesPolicy.from_text(text, "t.yaml").rule_sets["s"]


def same_compile(got: CompiledRbac | None, full: CompiledRbac) -> None:
    assert got is not None
    assert got.payload == full.payload
    assert got.version == full.version
    assert got.config == full.config
    assert (got.identities, got.revoked, got.routing) == (
        full.identities,
        full.revoked,
        full.routing,
    )
    assert (got.filter_name, got.native_only) == (full.filter_name, full.native_only)


ids = st.frozensets(st.sampled_from(REVOCABLE), max_size=4)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(rules_yaml(), st.none()),
    first=st.tuples(ids, ids),
    then=st.tuples(ids, ids),
    native_only=st.booleans(),
    everything=st.sampled_from(["", "rego"]),
    headers=st.sampled_from([("authorization",), ("authorization", "x-api-key"), ()]),
)
def test_reassembled_revocations_are_the_bytes_of_a_full_compile(
    text: str | None,
    first: tuple[frozenset[str], frozenset[str]],
    then: tuple[frozenset[str], frozenset[str]],
    native_only: bool,
    everything: str,
    headers: tuple[str, ...],
) -> None:
    rules = rule_set(text) if text is not None else None
    common: dict[str, Any] = {
        "rule_set_name": "s",
        "filter_name": "authd.rbac",
        "credential_headers": headers,
        "everything_to_extauthz": everything,
        "native_only": native_only,
    }
    base = compile_rbac(rules, revoked=first[0], to_extauthz=first[1], **common)
    full = compile_rbac(rules, revoked=then[0], to_extauthz=then[1], **common)
    validate_rbac(full.config)
    same_compile(with_revocations(base, revoked=then[0], to_extauthz=then[1]), full)


def test_a_revoked_caller_named_by_a_rule_is_denied_and_back_when_lifted() -> None:
    rules = rule_set(RULES)
    base = compile_rbac(rules, rule_set_name="s", filter_name="f", native_only=True)
    revoked = with_revocations(base, revoked=[ADMIN], to_extauthz=[])
    assert revoked is not None
    assert evaluate(rbac_matcher(revoked.config), ADMIN, GET) == REVOKED_ACTION
    assert evaluate(rbac_matcher(revoked.config), WEB, GET) == "allow:web"
    lifted = with_revocations(revoked, revoked=[], to_extauthz=[])
    assert lifted is not None and lifted.payload == base.payload
    assert evaluate(rbac_matcher(lifted.config), ADMIN, GET) == "allow:admin"


def test_only_the_revoked_map_is_validated_and_a_bad_one_is_refused() -> None:
    base = compile_rbac(rule_set(RULES), rule_set_name="s", filter_name="f")
    seen: list[Any] = []
    assert with_revocations(base, revoked=[GONE], to_extauthz=[], validate=seen.append)
    assert len(seen) == 1 and list(seen[0].matcher.matcher_tree.exact_match_map.map) == [GONE]
    assert not seen[0].matcher.HasField("on_no_match")  # the rules were validated once
    with pytest.raises(InvalidRbacConfig, match="empty key"):
        with_revocations(base, revoked=[""], to_extauthz=[])


def test_the_publisher_reassembles_when_only_revocations_change() -> None:
    async def scenario() -> None:
        revoked: set[str] = set()
        entries: set[str] = set()
        policies = [RulesPolicy.from_text(RULES, "t.yaml")]
        compiler = CountingCompiler()
        publisher = RbacPublisher(
            filter_name="authd.rbac.native_only",
            policy=lambda: policies[-1],
            revoked=lambda: (frozenset(revoked), frozenset(entries)),
            rule_set="s",
            compile_config=compiler,
            native_only=True,
        )
        assert await publisher.refresh() and compiler.calls == 1
        first = publisher.current
        assert first is not None
        revoked.add(ADMIN)
        entries.add(WEB)
        assert await publisher.refresh()
        assert compiler.calls == 1  # re-assembled, not compiled
        now = publisher.current
        assert now is not None
        same_compile(now, compile_inputs(publisher.inputs(), "authd.rbac.native_only"))
        assert evaluate(rbac_matcher(now.config), ADMIN, GET) == REVOKED_ACTION
        revoked.clear()
        entries.clear()
        assert await publisher.refresh() and compiler.calls == 1
        assert publisher.current is not None and publisher.current.version == first.version
        # A bad revoked map is refused and the config in force stays.
        revoked.add("")
        assert not await publisher.refresh()
        assert publisher.refused == 1 and "empty key" in publisher.last_refusal
        assert publisher.current.version == first.version
        # A policy reload (and the revocations with it) compiles in full.
        revoked.discard("")
        revoked.add(GONE)
        policies.append(RulesPolicy.from_text(RULES, "t.yaml"))
        assert await publisher.refresh() and compiler.calls == 2

    asyncio.run(scenario())

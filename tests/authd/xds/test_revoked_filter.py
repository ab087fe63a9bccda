"""The revocation filter: revoked SPIFFE IDs denied in a small config of their own.

Read back with the reference matcher (``tests.support.rbac_matcher``); the publisher is
driven on an event loop with a counting compiler, so a revocation is seen to recompile the
revocation filter alone.
"""

from __future__ import annotations

import asyncio

from authd.policy.rules import RulesPolicy
from authd.xds.publisher import RbacPublisher, served_version
from authd.xds.rbac_compiler import REVOKED_ACTION, CompiledRbac
from authd.xds.revoked_filter import PASS_ACTION, compile_revoked
from tests.support.rbac_compiler import CountingCompiler
from tests.support.rbac_matcher import evaluate, rbac_matcher
from tests.support.rbac_rules import policy

WEB = "spiffe://example.org/web"
ADMIN = "spiffe://example.org/admin"
GET = {":method": "GET", ":path": "/orders/7"}
RULES = policy(
    """\
      - {name: web, effect: allow, methods: [GET], callers: ["spiffe://example.org/web"]}
      - {name: admin, effect: allow, callers: ["spiffe://example.org/admin"]}
"""
)


def decide(compiled: CompiledRbac, peer: str | None) -> str:
    return evaluate(rbac_matcher(compiled.config), peer, GET)


def test_revoked_ids_are_denied_and_everyone_else_passes_on() -> None:
    compiled = compile_revoked([ADMIN], filter_name="authd.rbac.revoked")
    assert compiled.config.name == compiled.filter_name == "authd.rbac.revoked"
    assert decide(compiled, ADMIN) == REVOKED_ACTION
    assert decide(compiled, WEB) == PASS_ACTION
    assert decide(compiled, ADMIN + "/x") == PASS_ACTION  # exact IDs, never prefixes
    assert decide(compiled, None) == PASS_ACTION  # no peer: the rules filter decides
    assert compiled.revoked == 1


def test_with_nothing_revoked_everything_passes_on() -> None:
    compiled = compile_revoked([], filter_name="r")
    assert decide(compiled, ADMIN) == PASS_ACTION
    assert decide(compiled, None) == PASS_ACTION


def test_the_config_is_deterministic_and_grows_with_the_revocations_only() -> None:
    ids = [f"spiffe://example.org/caller/{i}" for i in range(100)]
    one = compile_revoked(ids, filter_name="r")
    assert one.payload == compile_revoked(reversed(ids), filter_name="r").payload
    assert one.version == compile_revoked(ids + ids[:3], filter_name="r").version
    assert compile_revoked(ids[:1], filter_name="r").version != one.version


def publisher_with(
    revoked: set[str], revoked_filter_name: str
) -> tuple[RbacPublisher, CountingCompiler]:
    rules = RulesPolicy.from_text(RULES, "t.yaml")
    compiler = CountingCompiler()
    publisher = RbacPublisher(
        filter_name="authd.rbac",
        policy=lambda: rules,
        revoked=lambda: (frozenset(revoked), frozenset()),
        rule_set="s",
        compile_config=compiler,
        revoked_filter_name=revoked_filter_name,
    )
    return publisher, compiler


def test_a_revocation_recompiles_the_revocation_filter_alone() -> None:
    async def scenario() -> None:
        revoked: set[str] = set()
        publisher, compiler = publisher_with(revoked, "authd.rbac.revoked")
        assert await publisher.refresh()
        rules, before = publisher.current, publisher.revocations
        assert rules is not None and before is not None
        assert set(publisher.resources()) == {"authd.rbac", "authd.rbac.revoked"}
        assert decide(rules, ADMIN) == "allow:admin"
        generation = publisher.generation
        revoked.add(ADMIN)
        assert await publisher.refresh()
        after = publisher.revocations
        assert after is not None and after.version != before.version
        assert decide(after, ADMIN) == REVOKED_ACTION
        assert publisher.current is rules and compiler.calls == 1  # the rules untouched
        assert publisher.generation == generation + 1
        served = publisher.resources()
        assert served_version(served, ("authd.rbac.revoked",)) == after.version
        assert served_version(served, ("authd.rbac", "authd.rbac.revoked")) == (
            f"{rules.version}+{after.version}"
        )
        assert not await publisher.refresh()  # nothing changed

    asyncio.run(scenario())


def test_without_a_revocation_filter_revoked_ids_are_in_the_rules_filter() -> None:
    async def scenario() -> None:
        revoked = {ADMIN}
        publisher, compiler = publisher_with(revoked, "")
        assert await publisher.refresh()
        assert publisher.revocations is None
        assert set(publisher.resources()) == {"authd.rbac"}
        assert publisher.current is not None
        assert decide(publisher.current, ADMIN) == REVOKED_ACTION
        revoked.discard(ADMIN)
        assert await publisher.refresh()
        assert compiler.calls == 1  # re-assembled around the cached rules
        assert decide(publisher.current, ADMIN) == "allow:admin"

    asyncio.run(scenario())

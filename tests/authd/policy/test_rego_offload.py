"""A slow Rego policy leaves the event loop: other callers' checks finish meanwhile.

Ordering, not timing: one caller's check runs a rule that takes rego-cpp hundreds of
milliseconds; the checks of another caller, started after it, must all be decided before it
is. Evaluated inline (``workers = 0``, authd before this) they cannot be: the slow
evaluation holds the loop until it is done.
"""

from __future__ import annotations

import asyncio

import pytest

from authd.authz.pipeline import Authorizer
from authd.check.model import CheckContext, Identities
from authd.policy.rego import RegoPolicy
from authd.policy.rego_offload import OffLoopRego
from tests.support.authz import FixedIdentities

POLICY = """\
package envoy.authz

import rego.v1

default allow := false

allow if input.parsed_path[0] == "cheap"

allow if {
	input.parsed_path[0] == "slow"
	n := to_number(input.parsed_query.n[0])
	count([x | some x in numbers.range(1, 60000); (x + n) % 7 == 0]) > 0
}
"""
CHEAP_CHECKS = 20


def ctx(path: str) -> CheckContext:
    return CheckContext(method="GET", host="h", path=path, headers={})


async def race(policy: OffLoopRego, n: int = 2) -> list[str]:
    """The slow check (``n``: an input not decided before, so never a cache hit), then the
    cheap ones; the names in the order they finished."""
    authorizer = Authorizer(resolver=FixedIdentities(Identities()), policy=lambda: policy)
    finished: list[str] = []

    async def check(name: str, path: str) -> None:
        outcome = await authorizer.check(ctx(path))
        assert outcome.allowed, (name, outcome.decision)
        finished.append(name)

    slow = asyncio.create_task(check("slow", f"/slow?n={n}"))
    await asyncio.sleep(0)  # the slow check starts first
    cheap = [asyncio.create_task(check(f"cheap-{i}", "/cheap")) for i in range(CHEAP_CHECKS)]
    await asyncio.gather(slow, *cheap)
    return finished


def rego(workers: int) -> OffLoopRego:
    return OffLoopRego(RegoPolicy.from_sources({"p.rego": POLICY}), workers=workers)


def test_the_first_slow_evaluation_takes_the_policy_off_the_loop() -> None:
    policy = rego(workers=2)
    asyncio.run(race(policy, n=1))  # the slow check is inline: it exceeds the budget
    assert policy.offloading
    finished = asyncio.run(race(policy, n=2))
    assert finished[-1] == "slow", finished
    assert policy.offloaded >= 1


def test_cheap_checks_finish_while_a_slow_one_runs_off_the_loop() -> None:
    policy = rego(workers=2)
    policy.offloading = True
    finished = asyncio.run(race(policy))
    assert finished.index("slow") == CHEAP_CHECKS, finished


def test_without_workers_the_slow_evaluation_holds_the_loop() -> None:
    policy = rego(workers=0)
    policy.offloading = False
    finished = asyncio.run(race(policy))
    assert finished[0] == "slow" and not policy.offloading


@pytest.mark.parametrize("path", ["/cheap", "/nothing"])
def test_off_loop_decisions_are_the_inline_ones(path: str) -> None:
    inline, off = rego(workers=0), rego(workers=2)
    off.offloading = True
    authorizers = [
        Authorizer(resolver=FixedIdentities(Identities()), policy=lambda p=p: p)
        for p in (inline, off)
    ]
    outcomes = [asyncio.run(a.check(ctx(path))) for a in authorizers]
    assert outcomes[0].allowed == outcomes[1].allowed
    assert outcomes[0].status == outcomes[1].status

"""A slow Rego policy leaves the event loop: other callers' checks finish meanwhile.

Ordering, not timing: one caller's check runs a rule that takes rego-cpp hundreds of
milliseconds; the checks of another caller, started after it, must all be decided before it
is. Evaluated inline (``workers = 0``, authd before this) they cannot be: the slow
evaluation holds the loop until it is done.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from authd.authz.pipeline import Authorizer
from authd.check.model import CheckContext, Identities
from authd.policy.base import PolicyError
from authd.policy.rego import RegoPolicy
from authd.policy.rego_offload import OffLoopRego, available_cpus, worker_cpus
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


def rego(workers: int, cpus: frozenset[int] | None = None) -> OffLoopRego:
    return OffLoopRego(RegoPolicy.from_sources({"p.rego": POLICY}), workers=workers, cpus=cpus)


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


# -- where the workers run -------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "chosen"),
    [
        (range(1), None),  # one CPU: nothing to keep apart
        (range(2), {1}),
        (range(4), {3}),
        (range(8), {6, 7}),
        ({0, 2, 5, 9}, {9}),  # a cpuset with holes: the highest it has
        (range(64), set(range(48, 64))),
    ],
)
def test_auto_keeps_the_workers_on_the_last_quarter_of_the_cpus(
    available: range | set[int], chosen: set[int] | None
) -> None:
    assert worker_cpus("auto", frozenset(available)) == chosen


def test_all_lets_the_workers_run_anywhere_and_a_list_names_their_cpus() -> None:
    assert worker_cpus("all", frozenset(range(4))) is None
    assert worker_cpus("1-2", frozenset(range(4))) == {1, 2}
    assert worker_cpus("2-5", frozenset(range(4))) == {2, 3}  # those authd may use


def test_a_list_of_cpus_authd_may_not_use_is_a_policy_error() -> None:
    with pytest.raises(PolicyError) as info:
        worker_cpus("6-7", frozenset(range(2)))
    assert str(info.value) == (
        "authz.rego_worker_cpus = '6-7': authd may not run on any of these CPUs (it may run on 0-1)"
    )


def test_the_workers_run_on_their_cpus_at_idle_priority() -> None:
    """Read back from the kernel, thread by thread: the workers' affinity and scheduling
    class, and the event loop's thread left as it was."""
    cpus = frozenset({max(available_cpus())})
    policy = rego(workers=3, cpus=cpus)
    policy.offloading = True
    # A cheap check (a cache miss, so evaluated by a worker): at SCHED_IDLE on a busy CPU a
    # slow one could wait long for its turn.
    authorizer = Authorizer(resolver=FixedIdentities(Identities()), policy=lambda: policy)
    assert asyncio.run(authorizer.check(ctx("/cheap"))).allowed
    assert policy.offloaded == 1
    name = f"rego@{max(cpus)}_"
    workers = [t.native_id for t in threading.enumerate() if t.name.startswith(name)]
    assert workers, "no Rego worker thread named after its CPU"
    for tid in workers:
        assert tid is not None
        assert os.sched_getaffinity(tid) == cpus
        assert os.sched_getscheduler(tid) == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert os.sched_getaffinity(0) == available_cpus()


def test_workers_that_cannot_be_set_apart_say_so_once(caplog: pytest.LogCaptureFixture) -> None:
    """CPUs the kernel refuses (as a seccomp filter would refuse the calls): one warning,
    and the evaluations still run."""
    policy = rego(workers=2, cpus=frozenset({4000}))
    policy.offloading = True
    with caplog.at_level("WARNING", logger="authd.policy.rego_offload"):
        finished = asyncio.run(race(policy, n=4))
    assert finished[-1] == "slow"
    warnings = [r.getMessage() for r in caplog.records if "cannot be set apart" in r.getMessage()]
    assert len(warnings) == 1, warnings

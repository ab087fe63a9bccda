"""Hot reload: a changed policy file is picked up, a broken one is reported and ignored, and a
check in flight finishes with the policy it started with."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from authd.check.model import CheckContext, Decision, Identities, Reason
from authd.policy.base import InputDocument, Policy, PolicyError
from authd.policy.rego import RegoPolicy
from authd.policy.reload import PolicyHolder
from authd.policy.rules import load_rules_policy

CTX = CheckContext(method="GET", host="api.example.com", path="/orders", headers={})
NO_INPUT: InputDocument = dict


def rules(rule_name: str) -> str:
    return (
        "version: 1\nrule_sets:\n  default:\n    rules:\n"
        f"      - {{name: {rule_name}, effect: allow}}\n"
    )


BROKEN = (
    "version: 1\nrule_sets:\n  default:\n    rules:\n"
    "      - name: r\n        effect: allow\n        method: [GET]\n"
)


def deciding_rule(holder: PolicyHolder) -> str:
    return asyncio.run(holder.evaluate(CTX, Identities(), NO_INPUT)).rule


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> None:
    """Poll ``condition`` until it holds; fail if it does not within ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not observed within {within}s")
        await asyncio.sleep(0.005)


async def watching(
    holder: PolicyHolder, change: Callable[[], None], until: Callable[[], bool]
) -> None:
    """Run the holder's poll loop, make ``change``, and wait until ``until`` holds."""
    task = asyncio.create_task(holder.run(interval=0.01))
    try:
        change()
        await eventually(until)
    finally:
        task.cancel()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(rules("first"))
    return path


def test_changed_file_is_picked_up_within_a_second(policy_file: Path) -> None:
    holder = PolicyHolder(lambda: load_rules_policy(policy_file), [policy_file])
    assert deciding_rule(holder) == "first"
    asyncio.run(
        watching(
            holder, lambda: policy_file.write_text(rules("second-one")), lambda: holder.reloads == 1
        )
    )
    assert deciding_rule(holder) == "second-one"
    assert holder.last_error is None


def test_atomic_replace_by_rename_is_picked_up(policy_file: Path) -> None:
    holder = PolicyHolder(lambda: load_rules_policy(policy_file), [policy_file])
    before = policy_file.stat()

    def replace() -> None:
        staged = policy_file.with_name("policy.yaml.new")
        staged.write_text(rules("secnd"))  # same size as "first"
        os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))  # and same mtime
        os.replace(staged, policy_file)

    asyncio.run(watching(holder, replace, lambda: holder.reloads == 1))
    assert policy_file.stat().st_size == before.st_size
    assert deciding_rule(holder) == "secnd"


def test_broken_file_keeps_the_old_policy_and_reports_line_and_rule(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = PolicyHolder(lambda: load_rules_policy(policy_file), [policy_file])
    old = holder.current
    with caplog.at_level(logging.ERROR, logger="authd.policy.reload"):
        asyncio.run(
            watching(
                holder, lambda: policy_file.write_text(BROKEN), lambda: holder.reload_failures == 1
            )
        )
    expected = (
        f"{policy_file}:7: rule 'r' in rule set 'default': unknown key 'method' "
        "(did you mean 'methods'?)"
    )
    assert holder.last_error == expected
    assert holder.current is old
    assert holder.reloads == 0
    assert deciding_rule(holder) == "first"
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert expected in caplog.records[0].getMessage()


def test_broken_file_is_not_retried_until_it_changes_and_a_fix_recovers(
    policy_file: Path,
) -> None:
    loads: list[int] = []

    def loader() -> Policy:
        loads.append(1)
        return load_rules_policy(policy_file)

    holder = PolicyHolder(loader, [policy_file])
    policy_file.write_text(BROKEN)
    assert asyncio.run(holder.reload_if_changed()) is False
    assert asyncio.run(holder.reload_if_changed()) is None
    assert (len(loads), holder.reload_failures) == (2, 1)

    policy_file.write_text(rules("fixed"))
    assert asyncio.run(holder.reload_if_changed()) is True
    assert holder.last_error is None
    assert deciding_rule(holder) == "fixed"


def test_unchanged_files_are_not_reloaded(policy_file: Path) -> None:
    loads: list[int] = []

    def loader() -> Policy:
        loads.append(1)
        return load_rules_policy(policy_file)

    holder = PolicyHolder(loader, [policy_file])
    assert asyncio.run(holder.reload_if_changed()) is None
    assert len(loads) == 1


def test_reload_now_reloads_at_once_for_sighup(policy_file: Path) -> None:
    holder = PolicyHolder(lambda: load_rules_policy(policy_file), [policy_file])
    policy_file.write_text(rules("by-signal"))
    assert holder.reload_now() is True
    assert deciding_rule(holder) == "by-signal"
    assert holder.reloads == 1


def test_reload_now_of_a_broken_file_keeps_the_old_policy(policy_file: Path) -> None:
    holder = PolicyHolder(lambda: load_rules_policy(policy_file), [policy_file])
    policy_file.write_text(BROKEN)
    assert holder.reload_now() is False
    assert holder.reload_failures == 1
    assert deciding_rule(holder) == "first"


def test_loader_crash_is_counted_and_the_old_policy_kept(policy_file: Path) -> None:
    calls: list[int] = []

    def loader() -> Policy:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("bug in a loader")
        return load_rules_policy(policy_file)

    holder = PolicyHolder(loader, [policy_file])
    assert holder.reload_now() is False
    assert holder.last_error == "bug in a loader"
    assert deciding_rule(holder) == "first"


def test_first_load_failure_raises_so_the_daemon_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(BROKEN)
    with pytest.raises(PolicyError, match="unknown key 'method'"):
        PolicyHolder(lambda: load_rules_policy(path), [path])


class GatedPolicy:
    """A Policy whose evaluation waits until the test opens its gate."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        self.entered.set()
        await self.gate.wait()
        return Decision(allowed=True, reason=Reason.ALLOWED, rule=self.name)


def test_evaluation_in_flight_during_a_swap_completes_with_the_old_policy() -> None:
    async def scenario() -> None:
        old, new = GatedPolicy("old"), GatedPolicy("new")
        policies = iter([old, new])
        holder = PolicyHolder(lambda: next(policies))
        in_flight = asyncio.create_task(holder.evaluate(CTX, Identities(), NO_INPUT))
        await old.entered.wait()

        assert holder.reload_now() is True
        assert holder.current is new
        new.gate.set()
        assert (await holder.evaluate(CTX, Identities(), NO_INPUT)).rule == "new"

        old.gate.set()
        assert (await in_flight).rule == "old"

    asyncio.run(scenario())


def test_a_slow_older_load_never_replaces_a_newer_one(policy_file: Path) -> None:
    stale = policy_file.with_name("stale.yaml")
    stale.write_text(rules("stale"))
    release = threading.Event()
    loads: list[int] = []

    def loader() -> Policy:
        loads.append(1)
        if len(loads) == 2:  # the poll's load, in a worker thread: held until released
            release.wait(timeout=10)
            return load_rules_policy(stale)
        return load_rules_policy(policy_file)

    async def scenario() -> None:
        holder = PolicyHolder(loader, [policy_file])
        policy_file.write_text(rules("newest"))
        poll = asyncio.create_task(holder.reload_if_changed())
        await eventually(lambda: len(loads) == 2)
        assert holder.reload_now() is True  # SIGHUP while the poll's load is running
        release.set()
        assert await poll is False
        assert (await holder.evaluate(CTX, Identities(), NO_INPUT)).rule == "newest"

    asyncio.run(scenario())


def test_editing_a_rego_file_in_a_watched_directory_is_picked_up(tmp_path: Path) -> None:
    module = tmp_path / "authz.rego"
    module.write_text(
        'package envoy.authz\n\nimport rego.v1\n\nallow if input.parsed_path[0] == "a"\n'
    )
    holder = PolicyHolder(lambda: RegoPolicy.load([tmp_path]), [tmp_path])
    document = {"parsed_path": ["b"]}
    assert not asyncio.run(holder.evaluate(CTX, Identities(), lambda: document)).allowed
    asyncio.run(
        watching(
            holder,
            lambda: module.write_text(module.read_text().replace('== "a"', 'in {"a", "b"}')),
            lambda: holder.reloads == 1,
        )
    )
    assert asyncio.run(holder.evaluate(CTX, Identities(), lambda: document)).allowed

"""Decision events in OPA's format: shape, drop and mask rules in Rego, the file they go to."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authd.authz.opa_decision_log import rfc3339_nanos
from authd.authz.opa_log_sink import OpaDecisionLog, console_line, open_log_file, traced
from authd.authz.pipeline import Authorizer, AuthzSettings
from authd.check.model import CheckContext, Identities
from authd.config.decision_logs import DecisionLogSettings
from authd.policy.opa_envoy_result import opa_envoy_decision
from authd.policy.rego import RegoPolicy
from authd.policy.rego_log_rules import LogRules
from tests.support.authz import PathPolicy

POLICY = """\
package envoy.authz

import rego.v1

default allow := false

allow if input.parsed_path[0] == "public"
"""
LOG_RULES = """\
package system.log

import rego.v1

mask contains "/input/attributes/request/http/headers/authorization"

mask contains {"op": "upsert", "path": api_key, "value": "**"} if {
	input.input.attributes.request.http.headers["x-api-key"]
}

api_key := "/input/attributes/request/http/headers/x-api-key"

drop if input.input.parsed_path[0] == "healthz"
"""
SOURCES = {"policy.rego": POLICY, "log.rego": LOG_RULES}
NOW_NS = 1_764_921_600_123_456_789  # 2025-12-05T08:00:00.123456789Z


def test_timestamps_are_rfc3339_with_nanoseconds_as_go_writes_them() -> None:
    assert rfc3339_nanos(NOW_NS) == "2025-12-05T08:00:00.123456789Z"
    assert rfc3339_nanos(1_764_921_600_120_000_000) == "2025-12-05T08:00:00.12Z"
    assert rfc3339_nanos(1_764_921_600_000_000_000) == "2025-12-05T08:00:00Z"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[OpaDecisionLog]:
    settings = DecisionLogSettings(file=str(tmp_path / "decisions.log"), labels=(("env", "test"),))
    log = OpaDecisionLog(
        settings,
        path="envoy/authz/allow",
        version="9.9",
        rules=LogRules(SOURCES, settings.mask_decision, settings.drop_decision),
        file=open_log_file(tmp_path / "decisions.log"),
        clock_ns=lambda: NOW_NS,
    )
    log.start()
    yield log
    log.close()


def check(sink: OpaDecisionLog, path: str, headers: dict[str, str]) -> str:
    policy = RegoPolicy.from_sources(
        {"policy.rego": POLICY}, "envoy/authz/allow", results=traced(opa_envoy_decision)
    )
    authorizer = Authorizer(
        resolver=_Nobody(),
        policy=lambda: policy,
        settings=AuthzSettings(compat="opa-envoy"),
        decision_log=sink,
    )
    ctx = CheckContext(method="GET", host="api.example.com", path=path, headers=headers)
    return asyncio.run(authorizer.check(ctx)).decision_id


class _Nobody:
    async def resolve(self, ctx: CheckContext) -> Identities:
        return Identities()


def logged(tmp_path: Path, sink: OpaDecisionLog) -> list[dict[str, Any]]:
    assert sink.wait_written()
    sink.close()
    return [json.loads(line) for line in (tmp_path / "decisions.log").read_text().splitlines()]


def test_an_event_has_opas_fields_in_opas_order(tmp_path: Path, sink: OpaDecisionLog) -> None:
    decision_id = check(sink, "/public/a?x=1", {"authorization": "Bearer secret"})
    (event,) = logged(tmp_path, sink)
    assert list(event) == [
        "labels",
        "decision_id",
        "path",
        "input",
        "result",
        "erased",
        "timestamp",
        "metrics",
    ]
    assert event["labels"]["version"] == "9.9"
    assert event["labels"]["env"] == "test"
    assert re.fullmatch(r"[0-9a-f-]{36}", event["labels"]["id"])
    assert event["decision_id"] == decision_id
    assert event["path"] == "envoy/authz/allow"
    assert event["result"] is True
    assert event["timestamp"] == "2025-12-05T08:00:00.123456789Z"
    assert event["input"]["parsed_path"] == ["public", "a"]
    assert event["input"]["parsed_query"] == {"x": ["1"]}
    assert set(event["metrics"]) == {"timer_server_handler_ns", "timer_rego_query_eval_ns"}
    assert all(isinstance(v, int) and v > 0 for v in event["metrics"].values())


def test_mask_rules_in_rego_erase_and_upsert(tmp_path: Path, sink: OpaDecisionLog) -> None:
    check(sink, "/public/a", {"authorization": "Bearer secret", "x-api-key": "k-123"})
    (event,) = logged(tmp_path, sink)
    headers = event["input"]["attributes"]["request"]["http"]["headers"]
    assert "authorization" not in headers
    assert headers["x-api-key"] == "**"
    assert event["erased"] == ["/input/attributes/request/http/headers/authorization"]
    assert event["masked"] == ["/input/attributes/request/http/headers/x-api-key"]
    text = (tmp_path / "decisions.log").read_text()
    assert "secret" not in text and "k-123" not in text


def test_the_drop_rule_keeps_an_event_out(tmp_path: Path, sink: OpaDecisionLog) -> None:
    check(sink, "/healthz", {})
    check(sink, "/private", {})
    events = logged(tmp_path, sink)
    assert [e["input"]["parsed_path"] for e in events] == [["private"]]
    assert events[0]["result"] is False
    assert sink.counters.snapshot()["dropped_by_policy"] == 1


def test_a_mask_rule_set_opa_refuses_means_no_event(tmp_path: Path) -> None:
    bad = 'package system.log\n\nimport rego.v1\n\nmask contains "input/no-slash"\n'
    settings = DecisionLogSettings(file=str(tmp_path / "decisions.log"))
    log = OpaDecisionLog(
        settings,
        rules=LogRules({"p.rego": POLICY, "l.rego": bad}, "system/log/mask", "system/log/drop"),
        file=open_log_file(tmp_path / "decisions.log"),
    )
    log.start()
    check(log, "/public/a", {})
    assert logged(tmp_path, log) == []
    assert log.counters.snapshot()["mask_failure"] == 1


def test_the_log_file_is_created_0600_and_an_existing_one_made_0600(tmp_path: Path) -> None:
    path = tmp_path / "wide.log"
    path.write_text("")
    path.chmod(0o644)
    open_log_file(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh.log"
    open_log_file(fresh).close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path: Path) -> None:
    settings = DecisionLogSettings(file=str(tmp_path / "q.log"), queue_size=2)
    log = OpaDecisionLog(settings, file=open_log_file(tmp_path / "q.log"))  # not started
    for _ in range(5):
        check(log, "/public/a", {})
    assert log.counters.snapshot()["dropped_queue_full"] == 3
    log.start()
    log.close()
    assert len((tmp_path / "q.log").read_text().splitlines()) == 2


def test_edited_log_rules_mask_with_the_new_rules_and_a_bad_edit_keeps_the_old(
    tmp_path: Path,
) -> None:
    (tmp_path / "policy.rego").write_text(POLICY)
    log_file = tmp_path / "log.rego"
    log_file.write_text(LOG_RULES)
    rules = LogRules.load([tmp_path], "system/log/mask", "system/log/drop")
    assert rules.refreshed() is rules
    event = {"input": {"parsed_path": ["x"]}}
    assert rules.mask(event) == ["/input/attributes/request/http/headers/authorization"]
    log_file.write_text('package system.log\n\nimport rego.v1\n\nmask contains "/input/a"\n')
    os.utime(log_file, ns=(1, 1))  # a different mtime even within one clock tick
    fresh = rules.refreshed()
    assert fresh is not rules
    assert fresh.mask(event) == ["/input/a"]
    log_file.write_text("package system.log\n\nmask contains {{{\n")
    os.utime(log_file, ns=(2, 2))
    assert fresh.refreshed() is fresh  # does not compile: the previous rules stay
    assert fresh.mask(event) == ["/input/a"]


def test_the_rules_engine_logs_its_answer_as_a_boolean_result(tmp_path: Path) -> None:
    settings = DecisionLogSettings(file=str(tmp_path / "decisions.log"))
    log = OpaDecisionLog(settings, file=open_log_file(tmp_path / "decisions.log"))
    log.start()
    authorizer = Authorizer(resolver=_Nobody(), policy=PathPolicy, decision_log=log)
    for path in ("/public/a", "/nope"):
        ctx = CheckContext(method="GET", host="h", path=path, headers={})
        asyncio.run(authorizer.check(ctx))
    events = logged(tmp_path, log)
    assert [(e["result"], "error" in e) for e in events] == [(True, False), (False, False)]


def test_console_lines_are_opas_console_logger_lines() -> None:
    event = {"decision_id": "d", "labels": {"id": "i", "version": "v"}, "result": True}
    line = json.loads(console_line(event, NOW_NS))
    assert line == {
        **event,
        "level": "info",
        "msg": "Decision Log",
        "time": "2025-12-05T08:00:00Z",
        "type": "openpolicyagent.org/decision_logs",
    }
    assert list(line) == sorted(line)


def test_bundle_revisions_are_in_the_event_when_known(tmp_path: Path) -> None:
    settings = DecisionLogSettings(file=str(tmp_path / "decisions.log"))
    log = OpaDecisionLog(
        settings,
        file=open_log_file(tmp_path / "decisions.log"),
        bundles=lambda: {"authz": "rev-42"},
    )
    log.start()
    check(log, "/public/a", {})
    (event,) = logged(tmp_path, log)
    assert event["bundles"] == {"authz": {"revision": "rev-42"}}
    assert list(event)[:3] == ["labels", "decision_id", "bundles"]


@settings(max_examples=150, deadline=None)
@given(
    path=st.text(alphabet="/%2fF.a?=&#\\ \x00é", max_size=24).map(lambda p: "/" + p),
    headers=st.dictionaries(
        st.sampled_from(["authorization", "content-type", "x-api-key", "x"]),
        st.text(max_size=12),
        max_size=3,
    ),
    body=st.binary(max_size=64),
)
def test_any_request_gives_a_json_event_or_none_and_never_raises(
    path: str, headers: dict[str, str], body: bytes
) -> None:
    settings = DecisionLogSettings(file="unused")
    log = OpaDecisionLog(settings, rules=LogRules(SOURCES, "system/log/mask", "system/log/drop"))
    policy = RegoPolicy.from_sources(
        {"policy.rego": POLICY}, "envoy/authz/allow", results=traced(opa_envoy_decision)
    )
    authorizer = Authorizer(
        resolver=_Nobody(), policy=lambda: policy, settings=AuthzSettings(compat="opa-envoy")
    )
    ctx = CheckContext(method="POST", host="h", path=path, headers=headers, body=body)
    outcome = asyncio.run(authorizer.check(ctx))
    event = log.event(ctx, outcome, 0.001, NOW_NS)
    if event is not None:
        json.dumps(event, allow_nan=False)
        assert event["decision_id"] == outcome.decision_id


def test_remembered_rule_answers_follow_the_parts_the_rules_read(
    tmp_path: Path, sink: OpaDecisionLog
) -> None:
    for headers in ({"x-api-key": "a"}, {}, {"x-api-key": "a"}, {"x-api-key": "b"}):
        check(sink, "/public/a", headers)
    events = logged(tmp_path, sink)
    assert [e.get("masked") for e in events] == [
        ["/input/attributes/request/http/headers/x-api-key"],
        None,
        ["/input/attributes/request/http/headers/x-api-key"],
        ["/input/attributes/request/http/headers/x-api-key"],
    ]
    assert all(
        e["input"]["attributes"]["request"]["http"]["headers"].get("x-api-key") != "a"
        for e in events
    )

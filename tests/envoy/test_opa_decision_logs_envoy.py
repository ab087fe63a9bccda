"""OPA-format decision logs end to end: real Envoy, ext_authz over native gRPC and HTTP mode,
the Rego engine, and a log service (an in-test collector) that receives OPA's events, masked
by the policy's own ``system.log.mask`` rules, in gzip batches as OPA posts them."""

from __future__ import annotations

import gzip
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.envoy import (
    Authd,
    EchoUpstream,
    Envoy,
    authd_config,
    gateway_config,
    read_json_lines,
    request,
    start_authd,
    start_envoy,
    wait_for,
)
from tests.support.log_collector import LogCollector

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
TRANSPORTS = ("grpc", "http")
SECRET = "Bearer end-user-secret"
API_KEY = "k-live-0123456789"
RFC3339_NANOS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z"


@dataclass
class Gateway:
    authd: Authd
    collector: LogCollector
    envoys: dict[str, Envoy]
    ports: dict[str, int]


@pytest.fixture(scope="module")
def gateway(upstream: EchoUpstream, tmp: Path) -> Iterator[Gateway]:
    collector = LogCollector()
    config = authd_config(
        extra='rego_files = ["authz.rego", "log.rego"]\n'
        "\n[decision_logs]\n"
        'file = "opa-decisions.log"\n'
        f'service_url = "{collector.url}"\n'
        "min_delay_seconds = 1\n"
        "max_delay_seconds = 1\n"
        'labels = {env = "e2e"}\n'
    )
    config = config.replace('policy_engine = "rules"', 'policy_engine = "rego"')
    config = config.replace('policy_file = "policy.yaml"', 'policy_file = ""')
    authd = start_authd(tmp / "authd", config, files={"authz.rego": POLICY, "log.rego": LOG_RULES})
    envoys: dict[str, Envoy] = {}
    try:
        for mode in TRANSPORTS:
            text = gateway_config(mode, authd, upstream, tmp / f"access-{mode}.log")
            envoys[mode] = start_envoy(text, tmp / f"envoy-{mode}", name=f"envoy-{mode}")
        ports = {mode: envoy.listener_port("gateway") for mode, envoy in envoys.items()}
        yield Gateway(authd, collector, envoys, ports)
    finally:
        for envoy in envoys.values():
            envoy.stop()
        authd.stop()
        collector.close()


def event_for(gateway: Gateway, path: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in gateway.collector.events
                if e["input"]["attributes"]["request"]["http"]["path"] == path
            ),
            None,
        )

    return wait_for(f"the event of {path} at the collector", find, timeout=30)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_collector_receives_opa_events_masked_by_the_policys_rules(
    gateway: Gateway, transport: str
) -> None:
    path = f"/public/{transport}?q=1"
    reply = request(
        gateway.ports[transport], path, headers={"authorization": SECRET, "x-api-key": API_KEY}
    )
    assert reply.status == 200, reply.body
    event = event_for(gateway, path)
    assert list(event) == [
        "labels",
        "decision_id",
        "path",
        "input",
        "result",
        "erased",
        "masked",
        "timestamp",
        "metrics",
    ]
    assert event["labels"]["env"] == "e2e"
    assert set(event["labels"]) == {"id", "version", "env"}
    assert event["path"] == "envoy/authz/allow"
    assert event["result"] is True
    assert re.fullmatch(RFC3339_NANOS, event["timestamp"])
    assert {"timer_server_handler_ns", "timer_rego_query_eval_ns"} <= set(event["metrics"])
    headers = event["input"]["attributes"]["request"]["http"]["headers"]
    assert "authorization" not in headers
    assert headers["x-api-key"] == "**"
    assert event["erased"] == ["/input/attributes/request/http/headers/authorization"]
    assert event["masked"] == ["/input/attributes/request/http/headers/x-api-key"]
    assert event["input"]["parsed_path"] == ["public", transport]
    assert event["input"]["parsed_query"] == {"q": ["1"]}
    # Nothing secret anywhere the events went.
    sent = b"".join(gzip.decompress(body) for _, _, body in gateway.collector.requests)
    logged = (gateway.authd.data_dir / "opa-decisions.log").read_text()
    for secret in (SECRET, API_KEY):
        assert secret not in logged
        assert secret.encode() not in sent


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_deny_is_logged_and_a_dropped_path_is_not(gateway: Gateway, transport: str) -> None:
    denied = f"/private/{transport}"
    assert request(gateway.ports[transport], denied).status == 403
    assert request(gateway.ports[transport], f"/healthz/{transport}").status == 403
    event = event_for(gateway, denied)
    assert event["result"] is False
    # The collector got the deny, which was checked after the health probe: had the probe's
    # event not been dropped, it would have been in the same or an earlier batch.
    paths = [e["input"]["attributes"]["request"]["http"]["path"] for e in gateway.collector.events]
    assert f"/healthz/{transport}" not in paths


def test_the_file_holds_the_same_events_and_is_0600(gateway: Gateway) -> None:
    path = f"/public/file-{id(gateway)}"
    assert request(gateway.ports["grpc"], path).status == 200
    uploaded = event_for(gateway, path)
    log_file = gateway.authd.data_dir / "opa-decisions.log"
    written = wait_for(
        "the event in the file",
        lambda: next(
            (e for e in read_json_lines(log_file) if e["decision_id"] == uploaded["decision_id"]),
            None,
        ),
    )
    assert written == uploaded
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert gateway.authd.counter("authd_decision_logs_total", kind="uploaded") >= 1

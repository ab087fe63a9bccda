"""Dry run behind a real Envoy: would-be denials get through, and the decision log says so.

A second authd, with ``dry_run = true`` and its decision log in a file, behind the gateway
configs of deploy/envoy in both ext_authz modes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.envoy import (
    ADMIN,
    WEB,
    Authd,
    EchoUpstream,
    authd_config,
    gateway_config,
    policy_yaml,
    request,
    start_authd,
    start_envoy,
    tampered,
)


@pytest.fixture(scope="module")
def authd(tmp: Path) -> Iterator[Authd]:
    config = authd_config(
        decision_log="decisions.jsonl", extra='jwt_svid_audiences = ["gateway"]\ndry_run = true'
    )
    daemon = start_authd(tmp / "d", config, files={"policy.yaml": policy_yaml("gateway")})
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module", params=["grpc", "http"])
def gateway_port(
    request: pytest.FixtureRequest, authd: Authd, upstream: EchoUpstream, tmp: Path
) -> Iterator[int]:
    mode = request.param
    access_log = tmp / f"gateway-{mode}.access.log"
    config = gateway_config(
        mode, authd, upstream, access_log, POLICY="gateway", JWT_AUDIENCE="gateway"
    )
    envoy = start_envoy(config, tmp, name=f"gateway-{mode}")
    yield envoy.listener_port("gateway")
    envoy.stop()


def test_request_that_would_be_denied_passes_and_is_logged_as_would_deny(
    gateway_port: int, authd: Authd
) -> None:
    would_deny = authd.checks_total(decision="dry_run_deny")
    reply = request(gateway_port, "/api/orders")  # no credentials: 401 if enforced
    assert reply.status == 200, reply.body
    decision_id = reply.upstream.one("x-authd-decision-id")
    line = authd.decision(decision_id)
    assert line["dry_run"] is True
    assert (line["decision"], line["status"], line["reason"]) == (
        "deny",
        401,
        "missing_credentials",
    )
    assert authd.checks_total(decision="dry_run_deny") == would_deny + 1


def test_tampered_token_passes_but_never_names_a_caller(gateway_port: int, authd: Authd) -> None:
    token = tampered(authd.mint_jwt(WEB, "gateway"), sub=ADMIN)
    reply = request(gateway_port, "/admin/users", headers={"authorization": f"Bearer {token}"})
    assert reply.status == 200, reply.body
    assert reply.upstream.values("x-authd-caller") == []
    line = authd.decision(reply.upstream.one("x-authd-decision-id"))
    assert (line["decision"], line["reason"], line["caller"]) == (
        "deny",
        "invalid_credentials",
        None,
    )


def test_allowed_request_is_logged_as_allowed(gateway_port: int, authd: Authd) -> None:
    token = authd.mint_jwt(WEB, "gateway")
    reply = request(gateway_port, "/api/orders", headers={"authorization": f"Bearer {token}"})
    assert reply.status == 200, reply.body
    assert reply.upstream.one("x-authd-caller") == WEB
    line = authd.decision(reply.upstream.one("x-authd-decision-id"))
    assert (line["decision"], line["status"], line["dry_run"]) == ("allow", 200, True)

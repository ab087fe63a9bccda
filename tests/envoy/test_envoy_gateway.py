"""The front door: deploy/envoy/gateway-{grpc,http}.yaml with a real Envoy and a real authd.

Every test runs against both ext_authz modes unless the feature exists in one only, and with
both of authd's gRPC engines (its own HTTP/2 server, and grpc.aio). The client speaks
plaintext HTTP/1.1 to the gateway; the echo upstream reports what got through.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.envoy import (
    ADMIN,
    API_KEY,
    INTRUDER,
    WEB,
    Authd,
    EchoUpstream,
    Envoy,
    access_log_entry,
    api_keys_toml,
    authd_config,
    free_port,
    gateway_config,
    policy_yaml,
    request,
    start_authd,
    start_envoy,
    tampered,
    url_encoded_pem,
)


@dataclass
class Gateway:
    mode: str  # "grpc" or "http"
    envoy: Envoy
    port: int
    access_log: Path


@pytest.fixture(scope="module", params=["native", "grpcio"])
def authd(request: pytest.FixtureRequest, tmp: Path) -> Iterator[Authd]:
    engine = request.param
    config = authd_config(
        extra=f'grpc_engine = "{engine}"\n'
        'jwt_svid_audiences = ["gateway"]\napi_keys_file = "api-keys.toml"'
    )
    files = {"policy.yaml": policy_yaml("gateway"), "api-keys.toml": api_keys_toml()}
    daemon = start_authd(tmp / f"d-{engine}", config, files=files)
    daemon.engine = engine
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def tokens(authd: Authd) -> dict[str, str]:
    """JWT-SVIDs minted by authd: web and intruder for the gateway, web for orders."""
    wanted = {
        "web": (WEB, "gateway"),
        "intruder": (INTRUDER, "gateway"),
        "web@orders": (WEB, "orders"),
    }
    with ThreadPoolExecutor(len(wanted)) as pool:
        minted = {name: pool.submit(authd.mint_jwt, *args) for name, args in wanted.items()}
        return {name: future.result() for name, future in minted.items()}


@pytest.fixture(scope="module")
def admin_svid(authd: Authd, tmp: Path) -> Path:
    return authd.mint_x509(ADMIN, tmp / "admin")


@pytest.fixture(scope="module", params=["grpc", "http"])
def gateway(
    request: pytest.FixtureRequest, authd: Authd, upstream: EchoUpstream, tmp: Path
) -> Iterator[Gateway]:
    mode = request.param
    name = f"gateway-{mode}-{authd.engine}"
    access_log = tmp / f"{name}.access.log"
    envoy = start_envoy(gateway_config(mode, authd, upstream, access_log), tmp, name=name)
    yield Gateway(mode, envoy, envoy.listener_port("gateway"), access_log)
    envoy.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --- allow -------------------------------------------------------------------------------


def test_allowed_request_carries_verified_caller_and_no_credentials_upstream(
    gateway: Gateway, tokens: dict[str, str]
) -> None:
    reply = request(
        gateway.port, "/api/orders", headers={**bearer(tokens["web"]), "x-api-key": API_KEY}
    )
    assert reply.status == 200, reply.body
    seen = reply.upstream
    assert seen.one("x-authd-caller") == WEB
    assert seen.one("x-authd-decision-id")
    assert seen.values("authorization") == []
    assert seen.values("x-api-key") == []


def test_api_key_alone_allows_without_a_caller_header(gateway: Gateway) -> None:
    reply = request(gateway.port, "/api/orders", headers={"x-api-key": API_KEY})
    assert reply.status == 200, reply.body
    assert reply.upstream.values("x-api-key") == []
    assert reply.upstream.values("x-authd-caller") == []


def test_client_sent_identity_headers_are_replaced_by_verified_ones(
    gateway: Gateway, tokens: dict[str, str]
) -> None:
    forged = {
        "x-authd-caller": ADMIN,
        "x-authd-subject": "alice",
        "x-authd-decision-id": "forged-id",
    }
    reply = request(gateway.port, "/api/orders", headers={**bearer(tokens["web"]), **forged})
    assert reply.status == 200, reply.body
    seen = reply.upstream
    assert seen.values("x-authd-caller") == [WEB]
    assert seen.values("x-authd-subject") == []
    assert seen.one("x-authd-decision-id") != "forged-id"


def test_client_sent_caller_header_is_removed_when_no_caller_is_verified(
    gateway: Gateway,
) -> None:
    reply = request(gateway.port, "/public/logo.png", headers={"x-authd-caller": ADMIN})
    assert reply.status == 200, reply.body
    assert reply.upstream.values("x-authd-caller") == []


def test_request_body_reaches_upstream_intact(gateway: Gateway, tokens: dict[str, str]) -> None:
    body = b'{"item": "book", "quantity": 2}'
    headers = {**bearer(tokens["web"]), "content-type": "application/json"}
    reply = request(gateway.port, "/api/orders", method="POST", headers=headers, body=body)
    assert reply.status == 200, reply.body
    assert reply.upstream.body == body.decode()


# --- deny --------------------------------------------------------------------------------


def test_no_credentials_is_401_with_www_authenticate_and_json_reason(
    gateway: Gateway, upstream: EchoUpstream
) -> None:
    reached = len(upstream.seen)
    reply = request(gateway.port, "/api/orders")
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == 'Bearer realm="authd"'
    body = reply.json()
    assert body["error"] == "missing_credentials"
    assert body["decision_id"]
    assert len(upstream.seen) == reached


def test_known_caller_not_allowed_is_403_with_json_reason(
    gateway: Gateway, authd: Authd, tokens: dict[str, str]
) -> None:
    reply = request(gateway.port, "/api/orders", headers=bearer(tokens["intruder"]))
    assert reply.status == 403
    assert "www-authenticate" not in reply.headers
    body = reply.json()
    assert body["error"] == "no_matching_rule"
    assert authd.decision(body["decision_id"])["caller"] == INTRUDER


def test_jwt_svid_with_tampered_claims_is_401_invalid_token(
    gateway: Gateway, tokens: dict[str, str]
) -> None:
    reply = request(
        gateway.port, "/admin/users", headers=bearer(tampered(tokens["web"], sub=ADMIN))
    )
    assert reply.status == 401
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    assert reply.json()["error"] == "invalid_credentials"


def test_jwt_svid_for_another_audience_is_401(gateway: Gateway, tokens: dict[str, str]) -> None:
    reply = request(gateway.port, "/api/orders", headers=bearer(tokens["web@orders"]))
    assert reply.status == 401
    assert reply.json()["error"] == "invalid_credentials"


# --- no identity from the client's word --------------------------------------------------


def test_peer_headers_sent_over_plaintext_are_never_believed(
    gateway: Gateway, authd: Authd, admin_svid: Path
) -> None:
    smuggled = {
        "x-authd-peer-uri-san": ADMIN,
        "x-authd-peer-cert": url_encoded_pem(admin_svid),  # a real, valid admin certificate
    }
    reply = request(gateway.port, "/admin/users", headers=smuggled)
    assert reply.status == 401
    body = reply.json()
    assert body["error"] == "missing_credentials"
    assert authd.decision(body["decision_id"])["caller"] is None


def test_peer_headers_sent_by_a_client_never_reach_the_upstream(
    gateway: Gateway, admin_svid: Path
) -> None:
    smuggled = {"x-authd-peer-uri-san": ADMIN, "x-authd-peer-cert": url_encoded_pem(admin_svid)}
    reply = request(gateway.port, "/public/logo.png", headers=smuggled)
    assert reply.status == 200, reply.body
    assert reply.upstream.values("x-authd-peer-uri-san") == []
    assert reply.upstream.values("x-authd-peer-cert") == []


# --- logs ---------------------------------------------------------------------------------


def test_access_log_carries_authd_decision_id_on_allow_and_deny(
    gateway: Gateway, authd: Authd, tokens: dict[str, str]
) -> None:
    allowed = request(gateway.port, "/api/orders?log=allow", headers=bearer(tokens["web"]))
    allowed_id = allowed.upstream.one("x-authd-decision-id")
    denied = request(gateway.port, "/api/orders?log=deny")
    denied_id = denied.json()["decision_id"]

    allow_line = access_log_entry(gateway.access_log, "path", "/api/orders?log=allow")
    deny_line = access_log_entry(gateway.access_log, "path", "/api/orders?log=deny")
    assert (allow_line["decision_id"], allow_line["status"]) == (allowed_id, 200)
    assert (deny_line["decision_id"], deny_line["status"]) == (denied_id, 401)
    assert allow_line["caller"] == WEB
    # The same id joins Envoy's line with authd's decision log.
    assert authd.decision(allowed_id)["decision"] == "allow"
    assert authd.decision(denied_id)["decision"] == "deny"


# --- configuration-dependent behaviour ------------------------------------------------------


def test_authd_unreachable_fails_closed_with_503(
    gateway: Gateway, authd: Authd, upstream: EchoUpstream, tmp: Path
) -> None:
    dead_port = free_port()  # nothing listens there
    config = gateway_config(gateway.mode, authd, upstream, tmp / "outage.log", AUTHZ_PORT=dead_port)
    envoy = start_envoy(config, tmp, name=f"outage-{gateway.mode}-{authd.engine}")
    try:
        reached = len(upstream.seen)
        reply = request(envoy.listener_port("gateway"), "/public/logo.png")
        assert reply.status == 503
        assert len(upstream.seen) == reached
    finally:
        envoy.stop()


def test_grpc_context_extensions_select_rule_set_and_jwt_audience(
    authd: Authd, upstream: EchoUpstream, tokens: dict[str, str], tmp: Path
) -> None:
    """``policy`` and ``audience`` per route (gRPC only: HTTP mode cannot carry them)."""
    config = gateway_config(
        "grpc",
        authd,
        upstream,
        tmp / f"orders-route-{authd.engine}.log",
        POLICY="orders",
        JWT_AUDIENCE="orders",
    )
    envoy = start_envoy(config, tmp, name=f"orders-route-{authd.engine}")
    try:
        port = envoy.listener_port("gateway")
        allowed = request(port, "/orders/42", headers=bearer(tokens["web@orders"]))
        assert allowed.status == 200, allowed.body
        assert allowed.upstream.one("x-authd-caller") == WEB
        # The gateway rule set's path is not in "orders"...
        elsewhere = request(port, "/api/orders", headers=bearer(tokens["web@orders"]))
        assert (elsewhere.status, elsewhere.json()["error"]) == (403, "no_matching_rule")
        # ...and a token for the gateway's audience is not one for this route.
        wrong_audience = request(port, "/orders/42", headers=bearer(tokens["web"]))
        assert wrong_audience.status == 401
    finally:
        envoy.stop()


def test_the_configured_grpc_engine_serves(authd: Authd) -> None:
    assert f"({authd.engine} engine)" in authd.stderr_path.read_text()

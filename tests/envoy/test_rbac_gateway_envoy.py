"""The front door with the native fast path: deploy/envoy/gateway-rbac.yaml, real Envoy.

One authd (``[xds] enabled``, ``rule_set = "gateway"``) and the gateway. A caller that
presents an X.509-SVID is decided in Envoy (authd's ``authd_checks_total`` does not move); a
client without a certificate, or with a credential header, goes to ext_authz (it moves).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    api_keys_toml,
    authd_config,
    mtls_context,
    policy_yaml,
    request,
    start_authd,
    wait_for,
)
from tests.support.rbac import in_step, rbac_gateway


@pytest.fixture(scope="module")
def authd(tmp: Path) -> Iterator[Authd]:
    config = authd_config(extra='jwt_svid_audiences = ["gateway"]\napi_keys_file = "api-keys.toml"')
    config += '\n[xds]\nenabled = true\nrule_set = "gateway"\n'
    files = {"policy.yaml": policy_yaml("gateway"), "api-keys.toml": api_keys_toml()}
    daemon = start_authd(tmp / "d", config, files=files)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def svids(authd: Authd, tmp: Path) -> dict[str, Path]:
    ids = {"gateway": "spiffe://example.org/gateway", "web": WEB, "admin": ADMIN}
    ids["intruder"] = INTRUDER
    with ThreadPoolExecutor(len(ids)) as pool:
        futures = {n: pool.submit(authd.mint_x509, i, tmp / n) for n, i in ids.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def gateway(
    authd: Authd, svids: dict[str, Path], upstream: EchoUpstream, tmp: Path
) -> Iterator[Envoy]:
    envoy = rbac_gateway(
        tmp / "envoy",
        cert_dir=svids["gateway"],
        workload_socket=authd.data_dir / "workload.sock",
        upstream_port=upstream.port,
        authz_port=authd.grpc_port,
        policy="gateway",
        access_log=tmp / "access.log",
    )
    try:
        wait_for("the gateway to apply authd's configs", lambda: in_step(authd, envoy))
        yield envoy
    finally:
        envoy.stop()


def no_certificate(svids: dict[str, Path]) -> ssl.SSLContext:
    """A TLS client that trusts the gateway but presents no certificate (a browser)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(svids["gateway"] / "bundle.pem")
    return context


def status(gateway: Envoy, context: ssl.SSLContext, path: str, **kwargs: object) -> int:
    port = gateway.listener_port("gateway")
    return request(port, path, context=context, **kwargs).status  # type: ignore[arg-type]


def test_workload_callers_are_decided_in_envoy(
    authd: Authd, gateway: Envoy, svids: dict[str, Path], upstream: EchoUpstream
) -> None:
    before = authd.checks_total()
    port = gateway.listener_port("gateway")
    reply = request(
        port,
        "/api/orders",
        context=mtls_context(svids["web"]),
        headers={"x-authd-caller": ADMIN},
    )
    assert reply.status == 200
    assert reply.upstream.values("x-authd-caller") == []  # a client's copy never passes
    assert WEB in reply.upstream.values("x-forwarded-client-cert")[0]
    assert status(gateway, mtls_context(svids["admin"]), "/admin/users") == 200
    assert status(gateway, mtls_context(svids["web"]), "/admin/users") == 403
    assert status(gateway, mtls_context(svids["intruder"]), "/admin/users") == 403
    assert authd.checks_total() == before


def test_clients_without_a_certificate_go_to_ext_authz(
    authd: Authd, gateway: Envoy, svids: dict[str, Path]
) -> None:
    before = authd.checks_total()
    browser = no_certificate(svids)
    assert status(gateway, browser, "/public/index.html") == 200
    assert status(gateway, browser, "/api/orders") == 401  # no credential at all
    assert status(gateway, browser, "/api/orders", headers={"x-api-key": API_KEY}) == 200
    assert authd.checks_total() == before + 3


def test_a_credential_header_from_a_workload_goes_to_ext_authz(
    authd: Authd, gateway: Envoy, svids: dict[str, Path]
) -> None:
    before = authd.checks_total()
    headers = {"x-api-key": "not-a-key"}
    assert status(gateway, mtls_context(svids["web"]), "/api/orders", headers=headers) == 401
    assert authd.checks_total() == before + 1


def test_a_revoked_caller_is_refused_at_the_door_without_ext_authz(
    authd: Authd, gateway: Envoy, svids: dict[str, Path]
) -> None:
    admin = mtls_context(svids["admin"])
    assert status(gateway, admin, "/admin/users") == 200
    authd.cli("revoke", "spiffe-id", ADMIN, "--reason", "key-compromise")
    before = authd.checks_total()
    wait_for("the revocation at the door", lambda: status(gateway, admin, "/admin/users") == 403)
    assert authd.checks_total() == before
    assert status(gateway, mtls_context(svids["web"]), "/api/orders") == 200

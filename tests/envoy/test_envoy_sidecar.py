"""East-west: two sidecars from deploy/envoy/sidecar-{grpc,http}.yaml, real mTLS between them.

The web service's sidecar (outbound: plaintext in, mTLS out with web's SVID) calls the
orders service's sidecar (inbound: mTLS with a client certificate required, ext_authz, then
the echo upstream as the orders app). Other tests connect to the orders sidecar directly
with Python's TLS client and an SVID of their choosing. Every SVID is minted by authd's CA,
except the foreign one.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.envoy import (
    ADMIN,
    HOST,
    INTRUDER,
    ORDERS,
    TRUST_DOMAIN,
    WEB,
    Authd,
    EchoUpstream,
    Envoy,
    access_log_entry,
    authd_config,
    foreign_svid,
    mtls_context,
    policy_yaml,
    render,
    request,
    start_authd,
    start_envoy,
    tampered,
    url_encoded_pem,
)


@dataclass
class Mesh:
    mode: str
    orders: Envoy  # the callee's sidecar
    web: Envoy  # the caller's sidecar
    inbound_port: int  # orders' mTLS listener
    outbound_port: int  # web's plaintext listener towards orders
    access_log: Path  # orders' access log


@pytest.fixture(scope="module")
def authd(tmp: Path) -> Iterator[Authd]:
    config = authd_config(extra='jwt_svid_audiences = ["orders"]')
    daemon = start_authd(tmp / "d", config, files={"policy.yaml": policy_yaml("orders")})
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def svids(authd: Authd, tmp: Path) -> dict[str, Path]:
    """Certificate directories by name: four from authd, one from a foreign CA."""
    ids = {"web": WEB, "orders": ORDERS, "admin": ADMIN, "intruder": INTRUDER}
    with ThreadPoolExecutor(len(ids)) as pool:
        futures = {n: pool.submit(authd.mint_x509, i, tmp / n) for n, i in ids.items()}
        dirs = {name: future.result() for name, future in futures.items()}
    dirs["foreign-admin"] = foreign_svid(tmp / "foreign-admin", ADMIN)
    return dirs


@pytest.fixture(scope="module")
def app() -> Iterator[EchoUpstream]:
    server = EchoUpstream()
    yield server
    server.close()


def sidecar_config(
    mode: str,
    authd: Authd,
    cert_dir: Path,
    *,
    app_port: int,
    peer_port: int,
    peer_id: str,
    policy: str,
    access_log: Path,
) -> str:
    values: dict[str, object] = {
        "ADMIN_PORT": 0,
        "CERT_DIR": cert_dir,
        "TRUST_DOMAIN": TRUST_DOMAIN,
        "INBOUND_ADDRESS": HOST,
        "INBOUND_PORT": 0,
        "APP_ADDRESS": HOST,
        "APP_PORT": app_port,
        "OUTBOUND_PORT": 0,
        "PEER_ADDRESS": HOST,
        "PEER_PORT": peer_port,
        "PEER_SPIFFE_ID": peer_id,
        "AUTHZ_ADDRESS": HOST,
        "AUTHZ_PORT": authd.grpc_port if mode == "grpc" else authd.http_port,
        "ACCESS_LOG": access_log,
    }
    if mode == "grpc":
        values |= {"POLICY": policy, "JWT_AUDIENCE": policy}
    else:
        values |= {"AUTHZ_PATH_PREFIX": "/check"}
    return render(f"sidecar-{mode}.yaml", **values)


@pytest.fixture(scope="module", params=["grpc", "http"])
def mesh(
    request: pytest.FixtureRequest,
    authd: Authd,
    svids: dict[str, Path],
    app: EchoUpstream,
    tmp: Path,
) -> Iterator[Mesh]:
    mode = request.param
    access_log = tmp / f"orders-{mode}.access.log"
    # The orders sidecar's own outbound side is unused here: it points at the app.
    orders = start_envoy(
        sidecar_config(
            mode,
            authd,
            svids["orders"],
            app_port=app.port,
            peer_port=app.port,
            peer_id=WEB,
            policy="orders",
            access_log=access_log,
        ),
        tmp,
        name=f"orders-{mode}",
    )
    try:
        inbound = orders.listener_port("inbound")
        web = start_envoy(
            sidecar_config(
                mode,
                authd,
                svids["web"],
                app_port=app.port,
                peer_port=inbound,
                peer_id=ORDERS,
                policy="web",
                access_log=tmp / f"web-{mode}.access.log",
            ),
            tmp,
            name=f"web-{mode}",
        )
    except BaseException:
        orders.stop()
        raise
    yield Mesh(mode, orders, web, inbound, web.listener_port("outbound"), access_log)
    web.stop()
    orders.stop()


# --- through the sidecar pair --------------------------------------------------------------


def test_caller_is_the_calling_sidecars_svid(mesh: Mesh) -> None:
    reply = request(mesh.outbound_port, "/orders/42")
    assert reply.status == 200, reply.body
    assert reply.upstream.one("x-authd-caller") == WEB
    assert reply.upstream.one("x-authd-decision-id")


def test_client_sent_caller_header_is_replaced_by_the_verified_peer(mesh: Mesh) -> None:
    reply = request(mesh.outbound_port, "/orders/42", headers={"x-authd-caller": ADMIN})
    assert reply.status == 200, reply.body
    assert reply.upstream.values("x-authd-caller") == [WEB]


def test_known_caller_not_allowed_is_403_with_json_reason(mesh: Mesh, authd: Authd) -> None:
    reply = request(mesh.outbound_port, "/admin/users")
    assert reply.status == 403
    body = reply.json()
    assert body["error"] == "no_matching_rule"
    assert authd.decision(body["decision_id"])["caller"] == WEB


def test_tampered_jwt_svid_denies_even_over_valid_mtls(mesh: Mesh, authd: Authd) -> None:
    token = tampered(authd.mint_jwt(WEB, "orders"), sub=ADMIN)
    reply = request(
        mesh.outbound_port, "/admin/users", headers={"authorization": f"Bearer {token}"}
    )
    assert reply.status == 401
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    assert reply.json()["error"] == "invalid_credentials"


def test_jwt_svid_names_the_caller_over_the_mtls_peer(mesh: Mesh, authd: Authd) -> None:
    token = authd.mint_jwt(ADMIN, "orders")
    reply = request(
        mesh.outbound_port, "/admin/users", headers={"authorization": f"Bearer {token}"}
    )
    assert reply.status == 200, reply.body
    assert reply.upstream.one("x-authd-caller") == ADMIN
    assert reply.upstream.values("authorization") == []


def test_authd_verifies_the_callers_certificate_itself(mesh: Mesh, authd: Authd) -> None:
    """Envoy hands over the leaf (include_peer_certificate / x-authd-peer-cert), not only
    the URI SAN: authd checks the chain against its bundle (its peer certificate cache)."""
    before = authd.counter("authd_identity_cache_total", kind="peer_hit")
    before += authd.counter("authd_identity_cache_total", kind="peer_miss")
    assert request(mesh.outbound_port, "/orders/1").status == 200
    after = authd.counter("authd_identity_cache_total", kind="peer_hit")
    after += authd.counter("authd_identity_cache_total", kind="peer_miss")
    assert after == before + 1


def test_access_log_shows_peer_and_decision_id(mesh: Mesh) -> None:
    reply = request(mesh.outbound_port, "/orders/7?log=1")
    decision_id = reply.upstream.one("x-authd-decision-id")
    line = access_log_entry(mesh.access_log, "path", "/orders/7?log=1")
    assert (line["decision_id"], line["peer"], line["status"]) == (decision_id, WEB, 200)


# --- straight to the orders sidecar, with a TLS client of our own --------------------------


def test_admin_svid_is_allowed_to_admin_paths(mesh: Mesh, svids: dict[str, Path]) -> None:
    """The positive control of the smuggling test below: the rule does let admin in."""
    reply = request(mesh.inbound_port, "/admin/users", context=mtls_context(svids["admin"]))
    assert reply.status == 200, reply.body
    assert reply.upstream.one("x-authd-caller") == ADMIN


def test_peer_headers_sent_over_mtls_are_never_believed(
    mesh: Mesh, authd: Authd, svids: dict[str, Path]
) -> None:
    smuggled = {
        "x-authd-peer-uri-san": ADMIN,
        "x-authd-peer-cert": url_encoded_pem(svids["admin"]),
    }
    context = mtls_context(svids["intruder"])
    reply = request(mesh.inbound_port, "/admin/users", headers=smuggled, context=context)
    assert reply.status == 403
    body = reply.json()
    assert body["error"] == "no_matching_rule"
    assert authd.decision(body["decision_id"])["caller"] == INTRUDER


def test_svid_from_a_foreign_ca_fails_the_handshake(
    mesh: Mesh, authd: Authd, svids: dict[str, Path], app: EchoUpstream
) -> None:
    checks, reached = authd.checks_total(), len(app.seen)
    context = mtls_context(svids["foreign-admin"])
    context.load_verify_locations(svids["orders"] / "bundle.pem")  # so only Envoy refuses
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(mesh.inbound_port, "/admin/users", context=context)
    assert authd.checks_total() == checks
    assert len(app.seen) == reached


def test_client_without_certificate_fails_the_handshake(
    mesh: Mesh, svids: dict[str, Path], app: EchoUpstream
) -> None:
    reached = len(app.seen)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(svids["orders"] / "bundle.pem")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(mesh.inbound_port, "/orders/42", context=context)
    assert len(app.seen) == reached

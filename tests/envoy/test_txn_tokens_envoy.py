"""Transaction tokens through a real Envoy: a front door that mints, one hop that verifies.

One Envoy per transport (native gRPC, grpcio, HTTP mode) holds two listeners: the front door
(plaintext, ``txn_token: mint``), whose route goes over mTLS (the gateway's X.509-SVID) to the
hop listener (the orders service's inbound: mTLS required, asking authd again), whose route
reaches the echo upstream. One policy file serves both: rules with ``at`` say where they
apply, and the hop's rule says calls must come ``from`` the gateway.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import pytest

from tests.support.envoy import (
    HOST,
    REPO,
    TRUST_DOMAIN,
    Authd,
    EchoUpstream,
    Envoy,
    Reply,
    authd_config,
    mtls_context,
    read_json_lines,
    request,
    start_authd,
    start_envoy,
    wait_for,
)
from tests.support.idp import TokenIssuer
from tests.support.ports import free_port
from tests.support.txn_tokens import sign_txn_token, txn_claims

GATEWAY = f"spiffe://{TRUST_DOMAIN}/gateway"
ORDERS = f"spiffe://{TRUST_DOMAIN}/orders"
INTRUDER = f"spiffe://{TRUST_DOMAIN}/intruder"
TYP = "txntoken+jwt"
TRANSPORTS = ("native", "grpcio", "http")

POLICY = f"""\
version: 1
rule_sets:
  default:
    rules:
      - name: door
        effect: allow
        at: ["{GATEWAY}"]
        paths: ["/api/*"]
        authenticated: true
      - name: orders-from-gateway
        effect: allow
        at: ["{ORDERS}"]
        paths: ["/api/*"]
        from: ["{GATEWAY}"]
"""

_TLS = """\
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.${KIND}TlsContext
${EXTRA}          common_tls_context:
            tls_certificates:
            - certificate_chain: {filename: "${DIR}/svid.pem"}
              private_key: {filename: "${DIR}/svid.key"}
            validation_context:
              trusted_ca: {filename: "${DIR}/bundle.pem"}
"""

_GRPC_FILTER = """\
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: {envoy_grpc: {cluster_name: authd_grpc}, timeout: 5s}
              include_peer_certificate: true
              failure_mode_allow: false
              status_on_error: {code: ServiceUnavailable}
"""

_HTTP_FILTER = """\
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              status_on_error: {code: ServiceUnavailable}
              allowed_headers:
                patterns: [{exact: authorization}, {exact: x-api-key}, {exact: txn-token}]
              http_service:
                server_uri:
                  uri: "http://127.0.0.1:${AUTHZ_HTTP_PORT}"
                  cluster: authd_http
                  timeout: 5s
                path_prefix: /check
                authorization_request:
                  headers_to_add:
                  - {key: x-authd-peer-uri-san, value: "%DOWNSTREAM_PEER_URI_SAN%"}
                  - {key: x-authd-peer-cert, value: "%DOWNSTREAM_PEER_CERT%"}
                  - key: x-authd-ctx-client_ip
                    value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
${CONTEXT_HEADERS}                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{exact: txn-token}, {prefix: x-authd-}]
                  allowed_client_headers:
                    patterns: [{exact: www-authenticate}, {exact: content-type}]
"""

_ENVOY = """\
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: door
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": ${HCM}
          stat_prefix: door
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: door
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: hop}
${DOOR_ROUTE_CONFIG}          http_filters:
${DOOR_FILTER}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: hop
    address: {socket_address: {address: 127.0.0.1, port_value: ${HOP_PORT}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
${HOP_TLS}      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": ${HCM}
          stat_prefix: hop
          codec_type: AUTO
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "${ACCESS_LOG}"
              log_format:
                json_format:
                  status: "%RESPONSE_CODE%"
                  txn: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:txn)%"
          route_config:
            virtual_hosts:
            - name: hop
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
${HOP_FILTER}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: hop
    type: STATIC
    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
${DOOR_TLS}    load_assignment:
      cluster_name: hop
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: ${HOP_PORT}}}}
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {socket_address: {address: 127.0.0.1, port_value: ${UPSTREAM_PORT}}}
  - name: authd_grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: authd_grpc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {socket_address: {address: 127.0.0.1, port_value: ${AUTHZ_GRPC_PORT}}}
  - name: authd_http
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: authd_http
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {socket_address: {address: 127.0.0.1, port_value: ${AUTHZ_HTTP_PORT}}}
"""


def envoy_config(
    transport: str, authd: Authd, upstream: EchoUpstream, where: Path, hop_port: int
) -> str:
    def tls(kind: str, directory: Path, extra: str = "") -> str:
        return Template(_TLS).substitute(KIND=kind, DIR=directory, EXTRA=extra)

    values = {
        "AUTHZ_GRPC_PORT": authd.grpc_port,
        "AUTHZ_HTTP_PORT": authd.http_port,
        "UPSTREAM_PORT": upstream.port,
        "HCM": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "HOP_PORT": hop_port,
        "ACCESS_LOG": where / "hop-access.log",
        "HOP_TLS": tls(
            "Downstream", where / "orders", "          require_client_certificate: true\n"
        ),
        # One level less indented: the upstream TLS context sits under a cluster.
        "DOOR_TLS": "".join(
            line[2:] + "\n" for line in tls("Upstream", where / "gateway").splitlines()
        ),
    }
    if transport == "http":

        def http_filter(headers: list[tuple[str, str]]) -> str:
            lines = "".join(f'                  - {{key: {k}, value: "{v}"}}\n' for k, v in headers)
            return Template(_HTTP_FILTER).substitute(
                AUTHZ_HTTP_PORT=authd.http_port, CONTEXT_HEADERS=lines
            )

        values["DOOR_FILTER"] = http_filter(
            [("x-authd-ctx-txn_token", "mint"), ("x-authd-ctx-at", GATEWAY)]
        )
        values["HOP_FILTER"] = http_filter([("x-authd-ctx-at", "%DOWNSTREAM_LOCAL_URI_SAN%")])
        values["DOOR_ROUTE_CONFIG"] = ""
    else:
        values["DOOR_FILTER"] = _GRPC_FILTER
        values["HOP_FILTER"] = _GRPC_FILTER  # the hop is known by its certificate (destination)
        values["DOOR_ROUTE_CONFIG"] = (
            "                typed_per_filter_config:\n"
            "                  envoy.filters.http.ext_authz:\n"
            '                    "@type": type.googleapis.com/envoy.extensions.filters.http.'
            "ext_authz.v3.ExtAuthzPerRoute\n"
            "                    check_settings:\n"
            f'                      context_extensions: {{txn_token: mint, at: "{GATEWAY}"}}\n'
        )
    return Template(_ENVOY).substitute(values)


@dataclass
class Mesh:
    transport: str
    authd: Authd
    envoy: Envoy
    door: int
    hop: int
    certs: Path  # gateway/, orders/, intruder/ (each svid.pem, svid.key, bundle.pem)
    idp: TokenIssuer

    def via_door(self, path: str = "/api/orders", **headers: str) -> Reply:
        return request(self.door, path, headers=headers)

    def at_hop(self, who: str, path: str = "/api/orders", **headers: str) -> Reply:
        return request(self.hop, path, headers=headers, context=mtls_context(self.certs / who))

    def user_token(self, **claims: Any) -> str:
        claims.setdefault("scope", "orders:read")
        return self.idp.token("alice", email="alice@example.com", **claims)

    def minted(self) -> str:
        """A Txn-Token the front door minted, as the hop's upstream received it."""
        reply = self.via_door(authorization=f"Bearer {self.user_token()}")
        assert reply.status == 200, reply.body
        return reply.upstream.one("txn-token")


@pytest.fixture(scope="module")
def idp() -> Iterator[TokenIssuer]:
    issuer = TokenIssuer()
    yield issuer
    issuer.close()


@pytest.fixture(scope="module", params=TRANSPORTS)
def mesh(
    request: pytest.FixtureRequest, idp: TokenIssuer, upstream: EchoUpstream, tmp: Path
) -> Iterator[Mesh]:
    transport = request.param
    where = tmp / transport
    engine = "grpcio" if transport == "grpcio" else "native"
    config = authd_config(
        decision_log="decisions.log", extra=f'grpc_engine = "{engine}"\n{idp.authd_toml()}'
    )
    config += '\n[txn_token]\nclaims = ["email"]\n'
    authd = start_authd(where / "authd", config, files={"policy.yaml": POLICY})
    try:
        for name, spiffe_id in (("gateway", GATEWAY), ("orders", ORDERS), ("intruder", INTRUDER)):
            authd.mint_x509(spiffe_id, where / name)
        hop_port = free_port()
        envoy = start_envoy(envoy_config(transport, authd, upstream, where, hop_port), where)
        try:
            yield Mesh(transport, authd, envoy, envoy.listener_port("door"), hop_port, where, idp)
        finally:
            envoy.stop()
    finally:
        authd.stop()


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload = (
        json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        for part in token.split(".")[:2]
    )
    return header, payload


def denial(reply: Reply) -> str:
    return str(reply.json()["error"])


# --- minting at the front door, verifying at the hop -------------------------------------------


def test_the_door_mints_and_the_hop_verifies(mesh: Mesh) -> None:
    user = mesh.user_token()
    reply = mesh.via_door(authorization=f"Bearer {user}")
    assert reply.status == 200, reply.body
    seen = reply.upstream
    assert seen.values("authorization") == []  # the user's credential stays at the door
    token = seen.one("txn-token")
    header, payload = decode(token)
    assert header["typ"] == TYP and header["alg"] == "ES256"
    bundle = json.loads(mesh.authd.cli("bundle", "show").stdout)
    assert header["kid"] in {k.get("kid") for k in bundle["keys"] if k["use"] == "jwt-svid"}
    assert (payload["sub"], payload["aud"], payload["req_wl"], payload["scope"]) == (
        "alice",
        f"spiffe://{TRUST_DOMAIN}",
        GATEWAY,
        "orders:read",
    )
    assert payload["tctx"]["claims"] == {"email": "alice@example.com"}
    assert payload["rctx"] == {"authn": "oidc", "req_ip": HOST}
    assert payload["exp"] - payload["iat"] == 60
    # The hop saw the gateway as its mTLS peer, and the transaction in the token.
    assert seen.one("x-authd-caller") == GATEWAY
    txn = payload["txn"]

    def both() -> list[dict[str, Any]] | None:
        found = [d for d in mesh.authd.decisions() if d.get("txn") == txn]
        return found if len(found) == 2 else None

    door, hop = wait_for("both decisions of the transaction", both)
    assert (door["decision_id"], door["rule"], hop["rule"]) == (txn, "door", "orders-from-gateway")
    # authd log --txn follows the transaction over the local decision log.
    shown = json.loads(mesh.authd.cli("log", "--txn", txn, "--json").stdout)["records"]
    assert [r["rule"] for r in shown] == ["door", "orders-from-gateway"]
    if mesh.transport != "http":  # HTTP mode carries no structured dynamic metadata
        access = mesh.certs / "hop-access.log"
        wait_for("the hop's access log", lambda: any(read_json_lines(access)) or None)
        assert txn in {e.get("txn") for e in read_json_lines(access)}


def test_an_anonymous_call_gets_no_token_and_is_refused(mesh: Mesh) -> None:
    reply = mesh.via_door()
    assert (reply.status, denial(reply)) == (401, "missing_credentials")


def test_a_bound_token_without_its_certificate_is_401(mesh: Mesh) -> None:
    bound = mesh.user_token(cnf={"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})
    reply = mesh.via_door(authorization=f"Bearer {bound}")
    assert (reply.status, denial(reply)) == (401, "invalid_credentials")
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]


@pytest.mark.parametrize(
    "forgery",
    ["tampered", "expired", "wrong_aud", "wrong_typ", "foreign_minter", "garbage"],
)
def test_a_forged_or_stale_token_is_denied_at_the_hop(mesh: Mesh, forgery: str) -> None:
    if forgery == "tampered":
        header, _, signature = mesh.minted().split(".")
        body = base64.urlsafe_b64encode(json.dumps(txn_claims(scope="admin")).encode())
        token = f"{header}.{body.rstrip(b'=').decode()}.{signature}"
    elif forgery == "garbage":
        token = "e30.e30." + "A" * 50
    else:
        changes: dict[str, Any] = {
            "expired": {"iat": int(time.time()) - 120, "exp": int(time.time()) - 60},
            "wrong_aud": {"aud": "spiffe://other.org"},
            "wrong_typ": {},
            "foreign_minter": {"req_wl": "spiffe://other.org/gateway"},
        }[forgery]
        typ = "JWT" if forgery == "wrong_typ" else TYP
        token = sign_txn_token(
            mesh.authd.data_dir,
            mesh.authd.cli("bundle", "show").stdout,
            txn_claims(**changes),
            typ=typ,
        )
    reply = mesh.at_hop("gateway", **{"txn-token": token})
    assert (reply.status, denial(reply)) == (401, "invalid_credentials"), reply.body


# --- call paths -------------------------------------------------------------------------------


def test_a_call_that_skips_the_gateway_is_denied_call_path(mesh: Mesh) -> None:
    # From the gateway's identity but without a transaction; and a real transaction
    # replayed by another workload: neither came through the gateway to here.
    for who, headers in (("gateway", {}), ("intruder", {"txn-token": mesh.minted()})):
        reply = mesh.at_hop(who, **headers)
        assert (reply.status, denial(reply)) == (403, "call-path"), (who, reply.body)
    assert mesh.at_hop("gateway", **{"txn-token": mesh.minted()}).status == 200


def test_policy_check_at_a_hop_explains_the_call_path(mesh: Mesh, tmp_path: Path) -> None:
    token = mesh.minted()
    verdicts = {}
    for who in (GATEWAY, INTRUDER):
        document = {
            "attributes": {
                "source": {"principal": who},
                "request": {
                    "http": {
                        "method": "GET",
                        "host": "orders",
                        "path": "/api/orders",
                        "headers": {"txn-token": token},
                    }
                },
            }
        }
        path = tmp_path / "input.json"
        path.write_text(json.dumps(document))
        done = subprocess.run(
            [
                *(sys.executable, "-m", "authd", "policy", "check", "--input", str(path)),
                *("--at", ORDERS, "--data-dir", str(mesh.authd.data_dir)),
                *("--config", str(mesh.authd.config_path)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        verdicts[who] = (done.returncode, done.stdout)
    code, text = verdicts[GATEWAY]
    assert code == 0 and text.startswith("ALLOW"), text
    code, text = verdicts[INTRUDER]
    assert code == 3 and text.startswith("DENY 403  reason=call-path  rule=orders-from-gateway")
    assert f"the call comes from {INTRUDER}, not {GATEWAY}" in text
    assert f"applies at {GATEWAY}, not at {ORDERS}" in text  # the door's rule, not here


# --- revocation -----------------------------------------------------------------------------


def test_revoking_the_transaction_refuses_its_token_within_a_second(mesh: Mesh) -> None:
    token = mesh.minted()
    txn = decode(token)[1]["txn"]
    assert mesh.at_hop("gateway", **{"txn-token": token}).status == 200
    mesh.authd.cli("revoke", "txn", txn, "--reason", "key-compromise")
    deadline = time.monotonic() + 1.0
    while True:
        reply = mesh.at_hop("gateway", **{"txn-token": token})
        if reply.status != 200 or time.monotonic() > deadline:
            break
    assert (reply.status, denial(reply)) == (401, "revoked")
    # Other transactions go on.
    assert mesh.at_hop("gateway", **{"txn-token": mesh.minted()}).status == 200

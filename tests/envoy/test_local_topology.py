"""The local topology of deploy/local (what `authd demo` runs), through its real Envoys.

One topology for the module: authd, the local IdP, orders and payments, and three Envoys
whose SVIDs come from authd over SDS (each attested by its own binary path); the gateway
mints a Txn-Token, each sidecar verifies it, and deploy/local/policy.yaml's call-path rules
decide at every hop. Each test is a step of the demo, asserted by the status the client gets,
the hop that decided (the Envoy whose access log carries the decision id) and the reason in
authd's decision log. The revocation test changes the topology for good, so it runs last.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from authd.demo.calls import (
    AccessLogs,
    DecisionLog,
    Reply,
    arrived,
    call,
    certificate_thumbprint,
    mtls,
    user_token,
)
from authd.demo.envoy_config import AUTHZ_MODES, render
from authd.demo.topology import SERVICES, Layout, Ports, Topology, spiffe_id
from tests.support.envoy import ENVOY_BINARY, short_tmpdir, tampered
from tests.support.ports import free_port
from tests.support.txn_tokens import sign_txn_token, txn_claims

PATH = "/orders/42"
SCOPE = "orders:read pay"
LEEWAY = 5  # txn_token.leeway's default
LIFETIME = 60  # txn_token.lifetime's default


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    state = short_tmpdir()
    ports = Ports(*(free_port() for _ in fields(Ports)))
    topology = Topology(Layout(state_dir=state, ports=ports), say=lambda _: None)
    try:
        topology.up()
        yield topology
    finally:
        topology.down()
        shutil.rmtree(state, ignore_errors=True)


class Hops:
    """The decisions one call caused, each with the hop that asked for it."""

    def __init__(self, topology: Topology) -> None:
        self.log = DecisionLog(topology.layout.decision_log)
        self.access = AccessLogs({s: topology.layout.access_log(s) for s in SERVICES})

    def during(self, count: int, send: Any) -> tuple[Reply, list[dict[str, Any]]]:
        mark = self.log.mark()
        reply = send()
        return reply, self.access.annotate(self.log.wait(mark, count))


@pytest.fixture(scope="module")
def hops(topology: Topology) -> Hops:
    return Hops(topology)


@pytest.fixture(scope="module")
def token(topology: Topology) -> str:
    return user_token(topology.layout.ports.idp, "alice", scope=SCOPE)


def signed_txn_token(topology: Topology, **changes: Any) -> str:
    """A Txn-Token signed with authd's own JWT authority, as the gateway's would be."""
    bundle = topology.cli("bundle", "show").stdout
    return sign_txn_token(topology.layout.data_dir, bundle, txn_claims(**changes))


def front_door(topology: Topology, headers: dict[str, str] | None = None) -> Reply:
    return call(topology.layout.ports.front_door, PATH, headers)


def svid(topology: Topology, name: str) -> Path:
    out = topology.layout.state_dir / "certs" / name.replace("/", "-")
    if not (out / "svid.pem").exists():
        topology.cli("x509", "mint", "--spiffe-id", spiffe_id(name), "--out", str(out))
    return out


def served_spiffe_id(topology: Topology, service: str) -> str:
    """The URI SAN of the certificate ``service``'s Envoy got over SDS."""
    port = topology.envoy_admin[service]
    url = f"http://127.0.0.1:{port}/config_dump?resource=dynamic_active_secrets"
    with urllib.request.urlopen(url, timeout=5) as response:
        doc = json.loads(response.read())
    secret = next(c["secret"] for c in doc["configs"] if c["name"] == "default")
    chain = secret["tls_certificate"]["certificate_chain"]["inline_bytes"]
    leaf = x509.load_pem_x509_certificates(base64.b64decode(chain))[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(san.get_values_for_type(x509.UniformResourceIdentifier)[0])


# --- the identities ------------------------------------------------------------------------


def test_each_envoy_gets_its_own_svid_over_sds(topology: Topology) -> None:
    for service in SERVICES:
        assert served_spiffe_id(topology, service) == spiffe_id(service)


# --- the front door ------------------------------------------------------------------------


def test_anonymous_call_is_refused_at_the_gateway_with_401(topology: Topology, hops: Hops) -> None:
    reply, decisions = hops.during(1, lambda: front_door(topology))
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    [decision] = decisions
    assert (decision["hop"], decision["reason"]) == ("gateway", "missing_credentials")


def test_forged_user_token_is_refused_at_the_gateway(
    topology: Topology, hops: Hops, token: str
) -> None:
    forged = tampered(token, sub="mallory")
    reply, [decision] = hops.during(
        1, lambda: front_door(topology, {"authorization": f"Bearer {forged}"})
    )
    assert reply.status == 401
    assert (decision["hop"], decision["reason"]) == ("gateway", "invalid_credentials")


def test_client_sent_peer_header_names_no_caller_at_the_gateway(
    topology: Topology, hops: Hops
) -> None:
    headers = {"x-authd-peer-uri-san": spiffe_id("orders")}
    reply, [decision] = hops.during(1, lambda: front_door(topology, headers))
    assert reply.status == 401
    assert decision["caller"] is None


def test_user_call_is_allowed_at_every_hop_in_one_transaction(
    topology: Topology, hops: Hops, token: str
) -> None:
    reply, decisions = hops.during(
        3, lambda: front_door(topology, {"authorization": f"Bearer {token}"})
    )
    assert reply.status == 200
    assert [d["hop"] for d in decisions] == ["gateway", "orders", "payments"]
    assert [d["rule"] for d in decisions] == [
        "user-reads-orders",
        "gateway-to-orders",
        "orders-to-payments",
    ]
    assert decisions[0]["user"] == "alice"
    assert [d["caller"] for d in decisions[1:]] == [spiffe_id("gateway"), spiffe_id("orders")]
    # One transaction across the hops: the gateway minted it, each hop logged its txn.
    [txn] = {d["txn"] for d in decisions}
    assert txn
    body = reply.json()
    # orders' authd removes the gateway's x-authd-subject: a hop does not take the end user
    # on the previous hop's word; the Txn-Token's `sub` carries it, signed.
    assert (body["caller"], body["user"]) == (spiffe_id("gateway"), None)
    assert body["payments"]["status"] == 200
    assert body["payments"]["body"]["caller"] == spiffe_id("orders")
    # Past each sidecar: the Txn-Token (narrowed to `pay` by orders' rule), and none of the
    # end user's own credentials.
    for seen in arrived(reply):
        assert seen["credentials"] == []
        claims = seen["txn_token"]
        assert (claims["txn"], claims["sub"], claims["scope"]) == (txn, "alice", "pay")
        assert claims["req_wl"] == spiffe_id("gateway")
        assert claims["aud"] == "spiffe://example.org"
        assert claims["rctx"] == {"authn": "oidc", "req_ip": "127.0.0.1"}
        assert claims["exp"] - claims["iat"] <= LIFETIME


def test_authd_log_follows_the_transaction_across_hops(
    topology: Topology, hops: Hops, token: str
) -> None:
    _, decisions = hops.during(
        3, lambda: front_door(topology, {"authorization": f"Bearer {token}"})
    )
    txn = decisions[0]["txn"]
    shown = json.loads(topology.cli("log", "--txn", txn, "--json").stdout)["records"]
    assert [r["decision_id"] for r in shown] == [d["decision_id"] for d in decisions]
    text = topology.cli("log", "--txn", txn).stdout
    assert text.startswith(f"Found 3 decisions of transaction {txn}")


def test_a_client_sent_txn_token_never_counts_nor_enters_the_mesh(
    topology: Topology, hops: Hops, token: str
) -> None:
    # A genuine Txn-Token (signed by authd) sent by a client at the door: ignored there, so
    # the call is anonymous ...
    forged = signed_txn_token(topology, sub="mallory", scope="pay")
    reply, [decision] = hops.during(1, lambda: front_door(topology, {"txn-token": forged}))
    assert (reply.status, decision["hop"], decision["reason"]) == (
        401,
        "gateway",
        "missing_credentials",
    )
    # ... and with alice's credential, replaced by the one the gateway mints for her.
    headers = {"authorization": f"Bearer {token}", "txn-token": forged}
    reply, decisions = hops.during(3, lambda: front_door(topology, headers))
    assert reply.status == 200
    at_orders, _ = arrived(reply)
    assert at_orders["txn_token"]["sub"] == "alice"
    assert at_orders["txn_token"]["txn"] == decisions[0]["txn"] != "forged-1"


def test_api_key_call_is_allowed_at_every_hop(topology: Topology, hops: Hops) -> None:
    key = topology.layout.api_key_path.read_text().strip()
    reply, decisions = hops.during(3, lambda: front_door(topology, {"x-api-key": key}))
    assert reply.status == 200
    assert [(d["hop"], d["decision"]) for d in decisions] == [
        ("gateway", "allow"),
        ("orders", "allow"),
        ("payments", "allow"),
    ]
    assert decisions[0]["api_key"] == "demo-client"
    at_orders, at_payments = arrived(reply)
    assert at_orders["credentials"] == at_payments["credentials"] == []
    assert at_payments["txn_token"]["sub"] == "demo-client"
    assert at_payments["txn_token"]["rctx"]["authn"] == "api_key"


def test_a_hop_that_would_widen_the_scope_is_refused_403(topology: Topology, hops: Hops) -> None:
    # bob's token lacks `pay`; orders' rule would send the transaction on with `pay`.
    bob = user_token(topology.layout.ports.idp, "bob", scope="orders:read")
    reply, decisions = hops.during(
        2, lambda: front_door(topology, {"authorization": f"Bearer {bob}"})
    )
    assert (reply.status, reply.json()["error"]) == (403, "txn_scope_widened")
    assert [(d["hop"], d["decision"]) for d in decisions] == [
        ("gateway", "allow"),
        ("orders", "deny"),
    ]
    assert (decisions[1]["rule"], decisions[1]["reason"]) == (
        "gateway-to-orders",
        "txn_scope_widened",
    )
    assert decisions[0]["txn"] == decisions[1]["txn"]


# --- certificate-bound tokens at the front door (RFC 8705) -----------------------------------


@pytest.fixture(scope="module")
def device(topology: Topology) -> Path:
    return svid(topology, "device/alice")


@pytest.mark.parametrize(
    ("presented", "status", "problem"),
    [
        (None, 401, "user-jwt/cnf: the token is bound to a client certificate; none was presented"),
        (
            "intruder",
            401,
            "user-jwt/cnf: the client certificate is not the one the token is bound to",
        ),
        ("device/alice", 200, None),
    ],
)
def test_a_bound_token_counts_only_with_its_certificate(
    topology: Topology,
    hops: Hops,
    device: Path,
    presented: str | None,
    status: int,
    problem: str | None,
) -> None:
    ports = topology.layout.ports
    bound = user_token(
        ports.idp, "alice", scope=SCOPE, x5t=certificate_thumbprint(device / "svid.pem")
    )
    cert_dir = svid(topology, presented) if presented else None
    context = mtls(cert_dir, device / "bundle.pem")
    headers = {"authorization": f"Bearer {bound}"}
    reply, decisions = hops.during(
        1, lambda: call(ports.front_door_tls, PATH, headers, tls=context)
    )
    assert reply.status == status
    door = decisions[0]
    assert door["hop"] == "gateway"
    if problem is None:
        assert (door["decision"], door["user"]) == ("allow", "alice")
    else:
        assert door["reason"] == "invalid_credentials"
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]
        assert {"kind": "user_jwt", "reason": problem} in door["problems"]


# --- inside the mesh -----------------------------------------------------------------------


def at_payments(topology: Topology, who: str, headers: dict[str, str] | None = None) -> Reply:
    cert_dir = svid(topology, who)
    context = mtls(cert_dir, cert_dir / "bundle.pem")
    return call(topology.layout.ports.payments_inbound, "/payments/42", headers, tls=context)


@pytest.mark.parametrize("name", ["orders", "gateway", "intruder", "payments"])
def test_direct_call_to_payments_without_a_transaction_is_refused_call_path(
    topology: Topology, hops: Hops, name: str
) -> None:
    # Even orders' own identity: the call did not come through the gateway (no Txn-Token).
    reply, [decision] = hops.during(1, lambda: at_payments(topology, name))
    assert (reply.status, reply.json()["error"]) == (403, "call-path")
    assert decision["hop"] == "payments"
    assert (decision["caller"], decision["rule"]) == (spiffe_id(name), "orders-to-payments")


def test_a_transaction_replayed_by_another_workload_is_refused_call_path(
    topology: Topology, hops: Hops
) -> None:
    token = signed_txn_token(topology, scope="pay")
    reply, [decision] = hops.during(
        1, lambda: at_payments(topology, "intruder", {"txn-token": token})
    )
    assert (reply.status, decision["hop"], decision["reason"]) == (403, "payments", "call-path")
    # The same transaction from orders is the path the policy allows.
    reply, [decision] = hops.during(
        1, lambda: at_payments(topology, "orders", {"txn-token": token})
    )
    assert (reply.status, decision["rule"]) == (200, "orders-to-payments")


def test_the_gateway_cannot_skip_to_orders_without_a_transaction(
    topology: Topology, hops: Hops
) -> None:
    cert_dir = svid(topology, "gateway")
    context = mtls(cert_dir, cert_dir / "bundle.pem")
    reply, [decision] = hops.during(
        1, lambda: call(topology.layout.ports.orders_inbound, PATH, tls=context)
    )
    assert (reply.status, decision["hop"], decision["reason"]) == (403, "orders", "call-path")


def test_policy_check_at_payments_explains_the_call_path(
    topology: Topology, tmp_path: Path
) -> None:
    def check(headers: dict[str, str]) -> subprocess.CompletedProcess[str]:
        http = {"method": "GET", "host": "127.0.0.1", "path": "/payments/42", "headers": headers}
        document = {
            "attributes": {"source": {"principal": spiffe_id("orders")}, "request": {"http": http}}
        }
        path = tmp_path / "input.json"
        path.write_text(json.dumps(document))
        at = spiffe_id("payments")
        return topology.cli("policy", "check", "--at", at, "--input", str(path), check=False)

    done = check({})
    assert done.returncode == 3
    assert done.stdout.startswith("DENY 403  reason=call-path  rule=orders-to-payments")
    assert "from: no verified Txn-Token: the call did not come through" in done.stdout
    done = check({"txn-token": signed_txn_token(topology, scope="pay")})
    assert (done.returncode, done.stdout.split("\n")[0]) == (
        0,
        "ALLOW  reason=allowed  rule=orders-to-payments",
    )


def test_an_expired_txn_token_is_refused_at_the_hop(topology: Topology, hops: Hops) -> None:
    # Minted at a seeded instant: lifetime + leeway + 1 s before now, so it expired a second
    # before the leeway ran out (no waiting). A sibling minted now passes the same hop.
    minted_at = int(time.time()) - LIFETIME - LEEWAY - 1
    stale = signed_txn_token(topology, scope="pay", iat=minted_at, exp=minted_at + LIFETIME)
    reply, [decision] = hops.during(
        1, lambda: at_payments(topology, "orders", {"txn-token": stale})
    )
    assert (reply.status, decision["hop"], decision["reason"]) == (
        401,
        "payments",
        "invalid_credentials",
    )
    assert {"kind": "txn_token", "reason": "txn-token/exp: token has expired"} in decision[
        "problems"
    ]
    fresh = signed_txn_token(topology, scope="pay")
    reply, [decision] = hops.during(
        1, lambda: at_payments(topology, "orders", {"txn-token": fresh})
    )
    assert (reply.status, decision["decision"]) == (200, "allow")


def test_gateway_svid_cannot_skip_to_orders_other_paths(topology: Topology, hops: Hops) -> None:
    cert_dir = svid(topology, "gateway")
    context = mtls(cert_dir, cert_dir / "bundle.pem")
    reply, [decision] = hops.during(
        1, lambda: call(topology.layout.ports.orders_inbound, "/admin/orders", tls=context)
    )
    assert reply.status == 403
    assert (decision["hop"], decision["reason"]) == ("orders", "no_matching_rule")


def test_call_without_client_certificate_is_refused_in_the_handshake(
    topology: Topology,
) -> None:
    bundle = svid(topology, "gateway") / "bundle.pem"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        call(topology.layout.ports.payments_inbound, "/payments/42", tls=mtls(None, bundle))


def test_a_revoked_transaction_is_refused_at_the_next_call(topology: Topology, hops: Hops) -> None:
    token = signed_txn_token(topology, scope="pay", txn="txn-to-revoke")
    headers = {"txn-token": token}
    reply, [decision] = hops.during(1, lambda: at_payments(topology, "orders", headers))
    assert (reply.status, decision["txn"]) == (200, "txn-to-revoke")
    topology.cli("revoke", "txn", "txn-to-revoke", "--reason", "key-compromise")
    # The first call after the revocation returned: no waiting, no retry.
    reply, [decision] = hops.during(1, lambda: at_payments(topology, "orders", headers))
    assert (reply.status, decision["hop"], decision["reason"]) == (401, "payments", "revoked")
    assert [p["kind"] for p in decision["problems"]] == ["txn_token"]


# --- the configs in every ext_authz mode ---------------------------------------------------


@pytest.mark.parametrize("mode", AUTHZ_MODES)
@pytest.mark.parametrize("template", ["gateway.yaml", "sidecar.yaml"])
def test_rendered_configs_validate_in_every_authz_mode(
    topology: Topology, mode: str, template: str, tmp_path: Path
) -> None:
    names = (
        "ADMIN_PORT LISTEN_PORT TLS_PORT PEER_PORT AUTHZ_PORT INBOUND_PORT APP_PORT OUTBOUND_PORT"
    )
    values: dict[str, object] = {name: 1001 + i for i, name in enumerate(names.split())} | {
        "SERVICE": "orders",
        "WORKLOAD_SOCKET": "/tmp/workload.sock",  # never opened by validate
        "PEER_SPIFFE_ID": spiffe_id("payments"),
        "TRUST_DOMAIN": "example.org",
        "ACCESS_LOG": tmp_path / "access.log",
    }
    text = render(
        topology.layout.deploy_dir / "envoy" / template,
        values,
        authz=mode,
        grpc_port=2,
    )
    assert ("ext_authz.v3.ExtAuthz" in text) == (mode != "none")
    # Over gRPC the gateway's constant context headers travel as context extensions; the
    # hop is known by its certificate there (destination principal), so a sidecar sets none.
    extensions = [
        route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["check_settings"]
        for listener in json.loads(text)["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        for host in f["typed_config"].get("route_config", {}).get("virtual_hosts", [])
        for route in host["routes"]
        if "typed_per_filter_config" in route
    ]
    if mode == "grpc" and template == "gateway.yaml":
        assert (
            extensions
            == [{"context_extensions": {"at": "spiffe://example.org/orders", "txn_token": "mint"}}]
            * 2
        )
    else:
        assert extensions == []
    path = tmp_path / "envoy.json"
    path.write_text(text)
    done = subprocess.run(
        [str(ENVOY_BINARY), "--mode", "validate", "--config-path", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- revocation (changes the topology for good: last) -------------------------------------


def test_revoked_workload_is_refused_at_the_next_hop_at_once(
    topology: Topology, hops: Hops, token: str
) -> None:
    assert front_door(topology, {"authorization": f"Bearer {token}"}).status == 200
    topology.cli("revoke", "spiffe-id", spiffe_id("orders"), "--reason", "key-compromise")
    # The first call after the revocation returned: no waiting, no retry.
    mark = hops.log.mark()
    reply = front_door(topology, {"authorization": f"Bearer {token}"})
    assert reply.status == 502
    assert reply.json()["payments"]["status"] == 401
    refusal = hops.log.find(mark, lambda d: d["decision"] == "deny")
    assert refusal is not None
    hops.access.annotate([refusal])
    assert (refusal["hop"], refusal["reason"]) == ("payments", "revoked")

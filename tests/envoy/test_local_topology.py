"""The local topology of deploy/local (what `authd demo` runs), through its real Envoys.

One topology for the module: authd, the local IdP, orders and payments, and three Envoys
whose SVIDs come from authd over SDS (each attested by its own binary path). Each test is a
step of the demo, asserted by the status the client gets, the hop that decided (the Envoy
whose access log carries the decision id) and the reason in authd's decision log. The
revocation test changes the topology for good, so it runs last.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from authd.demo.calls import AccessLogs, DecisionLog, Reply, call, mtls, user_token
from authd.demo.envoy_config import AUTHZ_MODES, render
from authd.demo.topology import SERVICES, Layout, Ports, Topology, spiffe_id
from tests.support.envoy import ENVOY_BINARY, short_tmpdir, tampered
from tests.support.ports import free_port

PATH = "/orders/42"


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
    return user_token(topology.layout.ports.idp, "alice")


def front_door(topology: Topology, headers: dict[str, str] | None = None) -> Reply:
    return call(topology.layout.ports.front_door, PATH, headers)


def svid(topology: Topology, name: str) -> Path:
    out = topology.layout.state_dir / "certs" / name
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


def test_user_call_is_allowed_at_every_hop_in_order(
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
    # One request id across the hops: the gateway's Envoy made it, orders forwarded it.
    assert len({d["request"]["id"] for d in decisions}) == 1
    body = reply.json()
    # orders' authd removes the gateway's x-authd-subject: a hop does not take the end user
    # on the previous hop's word (TXN-TOKEN: the Txn-Token's `sub` will carry it, signed).
    assert (body["caller"], body["user"]) == (spiffe_id("gateway"), None)
    assert body["payments"]["status"] == 200
    assert body["payments"]["body"]["caller"] == spiffe_id("orders")


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


# --- inside the mesh -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gateway", "intruder", "payments"])
def test_direct_call_to_payments_is_refused_unless_from_orders(
    topology: Topology, hops: Hops, name: str
) -> None:
    cert_dir = svid(topology, name)
    context = mtls(cert_dir, cert_dir / "bundle.pem")
    reply, [decision] = hops.during(
        1,
        lambda: call(topology.layout.ports.payments_inbound, "/payments/42", tls=context),
    )
    assert reply.status == 403
    assert decision["hop"] == "payments"
    assert (decision["caller"], decision["reason"]) == (spiffe_id(name), "no_matching_rule")


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


# --- the configs in every ext_authz mode ---------------------------------------------------


@pytest.mark.parametrize("mode", AUTHZ_MODES)
@pytest.mark.parametrize("template", ["gateway.yaml", "sidecar.yaml"])
def test_rendered_configs_validate_in_every_authz_mode(
    topology: Topology, mode: str, template: str, tmp_path: Path
) -> None:
    names = "ADMIN_PORT LISTEN_PORT PEER_PORT AUTHZ_PORT INBOUND_PORT APP_PORT OUTBOUND_PORT"
    values: dict[str, object] = {name: 1001 + i for i, name in enumerate(names.split())} | {
        "SERVICE": "orders",
        "WORKLOAD_SOCKET": "/tmp/workload.sock",  # never opened by validate
        "PEER_SPIFFE_ID": spiffe_id("payments"),
        "POLICY": "gateway",
        "TRUST_DOMAIN": "example.org",
        "ACCESS_LOG": tmp_path / "access.log",
    }
    text = render(
        topology.layout.deploy_dir / "envoy" / template,
        values,
        authz=mode,
        rule_set="orders",
        grpc_port=2,
    )
    assert ("ext_authz.v3.ExtAuthz" in text) == (mode != "none")
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

"""Two Envoy sidecars from deploy/envoy/sidecar-sds.yaml take their identities from authd
over SDS, and not one request fails while their SVIDs rotate every few seconds and the X.509
authority is rotated by hand in the middle.

The sidecars run as two different uids (nobody, and a user made for this module), so
authd's attestation of each SDS connection gives each the SVID of its own registration
entry. The client sidecar (the test's plaintext requests in, mTLS out with its SVID, asking
for its SPIFFE ID by name and validating with ``ALL``, Envoy's SPIFFE validator) calls the
server sidecar (mTLS in, asking for ``default`` and ``ROOTCA``; ext_authz lets only the
client through), whose app is the echo upstream: it reports ``x-forwarded-client-cert``,
which names the client's SPIFFE ID and the hash of the certificate it presented.

The client sidecar opens a new connection to the server every few requests
(``PEER_MAX_REQUESTS``), so handshakes with the current certificates keep happening.
"""

from __future__ import annotations

import base64
import json
import pwd
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from tests.support.envoy import (
    HOST,
    TRUST_DOMAIN,
    Authd,
    EchoUpstream,
    Envoy,
    Reply,
    authd_config,
    request,
    short_tmpdir,
    start_authd,
    wait_for,
)
from tests.support.sidecars import (
    NOBODY,
    ServiceUser,
    executable_envoy,
    leaf_hash,
    pem_certificates,
    secrets_of,
    served_chain,
    sidecar_values,
    start_sidecar,
    xfcc,
)

CLIENT = f"spiffe://{TRUST_DOMAIN}/client"
SERVER = f"spiffe://{TRUST_DOMAIN}/server"
SVID_TTL = "6s"
PEER_MAX_REQUESTS = 4
LOAD_SECONDS = 20.0
PREPARE_AT = 5.0  # seconds into the load
LOAD_THREADS = 3
TICK = 0.1  # each thread sends one keep-alive and one new-connection request per tick
_DER = serialization.Encoding.DER

POLICY = f"""\
version: 1
default_rule_set: server
rule_sets:
  server:
    rules:
      - name: client-calls-server
        effect: allow
        paths: ["/*"]
        callers: ["{CLIENT}"]
"""


@dataclass
class Mesh:
    authd: Authd
    echo: EchoUpstream
    server: Envoy
    client: Envoy
    outbound_port: int  # the client sidecar's plaintext listener
    inbound_port: int  # the server sidecar's mTLS listener
    values: dict[str, object]  # the placeholders both sidecars share


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    path = short_tmpdir()
    path.chmod(0o755)  # the sidecars' uids must reach their directories and authd's socket
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, ServiceUser]]:
    """The client sidecar runs as nobody, the server sidecar as a user made for this module."""
    name = f"authd-sds-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        entry = pwd.getpwnam(name)
        yield {
            "client": ServiceUser("nobody", NOBODY, pwd.getpwuid(NOBODY).pw_gid),
            "server": ServiceUser(name, entry.pw_uid, entry.pw_gid),
        }
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture(scope="module")
def authd(tmp: Path, users: dict[str, ServiceUser]) -> Iterator[Authd]:
    daemon = start_authd(
        tmp / "d", authd_config(policy_file="policy.yaml"), files={"policy.yaml": POLICY}
    )
    try:
        wait_for("authd's workload socket", (daemon.data_dir / "workload.sock").exists)
        for service, spiffe_id in (("client", CLIENT), ("server", SERVER)):
            selector = f"unix:uid:{users[service].uid}"
            daemon.cli(
                "entry",
                "create",
                "--spiffe-id",
                spiffe_id,
                "--selector",
                selector,
                "--x509-svid-ttl",
                SVID_TTL,
            )
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def envoy_binary(tmp: Path) -> Path:
    return executable_envoy(tmp / "bin")


@pytest.fixture(scope="module")
def mesh(
    authd: Authd, users: dict[str, ServiceUser], envoy_binary: Path, tmp: Path
) -> Iterator[Mesh]:
    echo = EchoUpstream()
    common = sidecar_values(authd, echo.port, PEER_MAX_REQUESTS)
    started: list[Envoy] = []
    try:
        server = start_sidecar(
            "server",
            users["server"],
            envoy_binary,
            tmp,
            **common,
            SVID_NAME="default",
            BUNDLE_NAME="ROOTCA",
            PEER_PORT=9,  # the server calls no one
            PEER_SPIFFE_ID=CLIENT,
        )
        started.append(server)
        inbound_port = server.listener_port("inbound")
        client = start_sidecar(
            "client",
            users["client"],
            envoy_binary,
            tmp,
            **common,
            SVID_NAME=CLIENT,
            BUNDLE_NAME="ALL",
            PEER_PORT=inbound_port,
            PEER_SPIFFE_ID=SERVER,
        )
        started.append(client)
        outbound_port = client.listener_port("outbound")
        yield Mesh(authd, echo, server, client, outbound_port, inbound_port, common)
    finally:
        for envoy in started:
            envoy.stop()
        echo.close()


# --- what the sidecars show ---------------------------------------------------------------


def served_roots(envoy: Envoy, name: str) -> list[x509.Certificate]:
    """The roots of a validation secret: ROOTCA (trusted_ca) or ALL (the SPIFFE validator's)."""
    context = secrets_of(envoy)[name]["validation_context"]
    if "trusted_ca" in context:
        return pem_certificates(context["trusted_ca"])
    (domain,) = context["custom_validator_config"]["typed_config"]["trust_domains"]
    assert domain["name"] == TRUST_DOMAIN
    return pem_certificates(domain["trust_bundle"])


def certs_page(envoy: Envoy) -> tuple[set[str], list[int]]:
    """From ``/certs``: the serials of the certificates Envoy presents, and the number of CA
    certificates of each TLS context."""
    doc = json.loads(envoy.admin("/certs"))
    serials = {c["serial_number"] for ctx in doc["certificates"] for c in ctx["cert_chain"]}
    return serials, [len(ctx["ca_cert"]) for ctx in doc["certificates"]]


def uri_of(certificate: x509.Certificate) -> str:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (uri,) = san.get_values_for_type(x509.UniformResourceIdentifier)
    return str(uri)


def issued_by(leaf: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def sds_stats(envoy: Envoy) -> dict[str, int]:
    """Envoy's SDS counters by secret name (``update_success``, ``update_rejected``, ...),
    plus ``streams``: the requests, i.e. gRPC streams, it has opened to authd."""
    doc = json.loads(envoy.admin("/stats?format=json&filter=^sds\\."))
    values = {s["name"]: s["value"] for s in doc["stats"] if isinstance(s.get("value"), int)}
    values["streams"] = envoy.counter("cluster.authd_sds.upstream_rq_total")
    values["connections"] = envoy.counter("cluster.authd_sds.upstream_cx_total")
    return values


def sds_stat(name: str, stat: str) -> str:
    """The stat of secret ``name``, as Envoy spells it (``spiffe://a/b`` → ``spiffe_a/b``)."""
    return f"sds.{name.replace('://', '_')}.{stat}"


def sds_summary(envoy: Envoy, names: tuple[str, ...]) -> dict[str, object]:
    stats = sds_stats(envoy)
    summary: dict[str, object] = {
        name: {k: stats[sds_stat(name, k)] for k in ("update_success", "update_rejected")}
        for name in names
    }
    summary |= {"streams": stats["streams"], "connections": stats["connections"]}
    return summary


# --- the tests ----------------------------------------------------------------------------


def test_each_sidecar_gets_its_own_svid_over_sds(mesh: Mesh) -> None:
    before = served_chain(mesh.client, CLIENT)[0]
    reply = request(mesh.outbound_port, "/hello")
    after = served_chain(mesh.client, CLIENT)[0]
    assert reply.status == 200, reply
    client_cert = xfcc(reply)
    assert client_cert["URI"] == CLIENT
    assert client_cert["By"] == SERVER
    assert reply.upstream.one("x-authd-caller") == CLIENT
    # The SVID rotates every few seconds: the request used the one served before or after.
    assert client_cert["Hash"] in {leaf_hash(before), leaf_hash(after)}

    client_leaf = served_chain(mesh.client, CLIENT)[0]
    server_leaf = served_chain(mesh.server, "default")[0]
    assert uri_of(client_leaf) == CLIENT
    assert uri_of(server_leaf) == SERVER
    bundle = x509.load_pem_x509_certificates(
        mesh.authd.cli("bundle", "show", "--format", "pem").stdout.encode()
    )
    assert served_roots(mesh.server, "ROOTCA") == bundle
    assert served_roots(mesh.client, "ALL") == bundle
    assert issued_by(client_leaf, bundle[0]) and issued_by(server_leaf, bundle[0])
    # Private keys reach Envoy (the handshakes above) but not its admin page.
    key = secrets_of(mesh.client)[CLIENT]["tls_certificate"]["private_key"]
    assert base64.b64decode(key["inline_bytes"]) == b"[redacted]"

    # Without a client certificate the server sidecar lets nobody in.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionError, socket.timeout)):
        request(mesh.inbound_port, "/hello", context=context, timeout=5)

    for envoy, names in ((mesh.server, ("default", "ROOTCA")), (mesh.client, (CLIENT, "ALL"))):
        stats = sds_stats(envoy)
        for name in names:
            assert stats[sds_stat(name, "update_success")] >= 1, stats
            assert stats[sds_stat(name, "update_rejected")] == 0, stats


@dataclass
class Outcome:
    started: float
    ok: bool
    what: str  # the failure, or the client certificate's hash as the server saw it
    new_connection: bool


@dataclass
class Observations:
    """What the watcher saw over time: every certificate each sidecar presented."""

    served: dict[str, set[str]] = field(default_factory=lambda: {"client": set(), "server": set()})
    client_leaves: dict[str, x509.Certificate] = field(default_factory=dict)  # by SHA-256
    server_leaves: dict[str, x509.Certificate] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def send_load(port: int, stop: threading.Event, outcomes: list[Outcome]) -> None:
    """One keep-alive and one new-connection request per tick until ``stop``; records all."""
    keep_alive: HTTPConnection | None = None

    def one(new_connection: bool) -> None:
        nonlocal keep_alive
        started = time.monotonic()
        try:
            if new_connection:
                reply = request(port, "/load", timeout=10)
            else:
                if keep_alive is None:
                    keep_alive = HTTPConnection(HOST, port, timeout=10)
                keep_alive.request("GET", "/load")
                response = keep_alive.getresponse()
                body = response.read()
                headers = {k.lower(): v for k, v in response.getheaders()}
                reply = Reply(response.status, headers, body)
            if reply.status != 200:
                raise RuntimeError(f"status {reply.status}: {reply.body[:200]!r}")
            cert = xfcc(reply)
            if cert["URI"] != CLIENT:
                raise RuntimeError(f"server saw {cert['URI']!r}")
            outcomes.append(Outcome(started, True, cert["Hash"], new_connection))
        except Exception as exc:
            outcomes.append(Outcome(started, False, repr(exc), new_connection))
            if not new_connection and keep_alive is not None:
                keep_alive.close()
                keep_alive = None

    next_tick = time.monotonic()
    while not stop.is_set():
        one(new_connection=False)
        one(new_connection=True)
        next_tick += TICK
        stop.wait(max(0.0, next_tick - time.monotonic()))
    if keep_alive is not None:
        keep_alive.close()


def look(mesh: Mesh, seen: Observations) -> None:
    """Note the serials on both sidecars' /certs and the leaves in their config dumps."""
    for role, envoy in (("client", mesh.client), ("server", mesh.server)):
        seen.served[role] |= certs_page(envoy)[0]
    for leaf in served_chain(mesh.client, CLIENT)[:1]:
        seen.client_leaves[leaf_hash(leaf)] = leaf
    for leaf in served_chain(mesh.server, "default")[:1]:
        seen.server_leaves[leaf_hash(leaf)] = leaf


def watch(mesh: Mesh, stop: threading.Event, seen: Observations) -> None:
    """``look`` every 200 ms (an SVID is served for seconds) until ``stop``."""
    while not stop.is_set():
        try:
            look(mesh, seen)
        except Exception as exc:  # reported by the test, never swallowed
            seen.errors.append(repr(exc))
        stop.wait(0.2)


def wait_until(what: str, condition: Callable[[], bool], timeout: float) -> None:
    wait_for(what, lambda: condition() or None, timeout)


def test_the_operator_sees_each_sidecar_on_sds(mesh: Mesh, users: dict[str, ServiceUser]) -> None:
    """`authd sds status` lists each connected Envoy's streams (Envoy opens one per secret)
    by its node id, with the uid the kernel gave and the version it accepted; `authd doctor`
    counts the Envoys."""

    def streams() -> list[dict[str, Any]]:
        shown = json.loads(mesh.authd.cli("sds", "status", "--json").stdout)
        assert shown["serving"] is True
        return list(shown["streams"])

    def in_step() -> bool:
        listed = streams()
        return {s["node_id"] for s in listed} == {"client", "server"} and all(
            s["state"] == "in step" for s in listed
        )

    wait_for("both sidecars in step on SDS", in_step)
    names: dict[str, set[str]] = {"client": set(), "server": set()}
    for stream in streams():
        assert stream["uid"] == users[stream["node_id"]].uid
        assert stream["acked_version"] == stream["sent_version"] != ""
        assert stream["nacks"] == 0 and stream["last_nack"] == ""
        names[stream["node_id"]] |= set(stream["resource_names"])
    assert names == {"server": {"default", "ROOTCA"}, "client": {CLIENT, "ALL"}}
    doctor = json.loads(mesh.authd.cli("doctor", "--json").stdout)
    (sds,) = [c for c in doctor["checks"] if c["check"] == "envoy sds"]
    assert sds["status"] == "ok", sds
    assert "2 Envoys (client, server)" in sds["detail"], sds


def test_a_sidecar_refuses_a_peer_with_another_spiffe_id(
    mesh: Mesh, users: dict[str, ServiceUser], envoy_binary: Path, tmp: Path
) -> None:
    # The client's identity and ALL, but expecting someone else behind the server's port.
    misled = start_sidecar(
        "misled",
        users["client"],
        envoy_binary,
        tmp,
        **mesh.values,
        SVID_NAME=CLIENT,
        BUNDLE_NAME="ALL",
        PEER_PORT=mesh.inbound_port,
        PEER_SPIFFE_ID=f"spiffe://{TRUST_DOMAIN}/someone-else",
    )
    try:
        reply = request(misled.listener_port("outbound"), "/hello")
        assert reply.status == 503, reply
        assert misled.counter("cluster.peer.ssl.fail_verify_san") >= 1
        assert misled.counter("cluster.peer.ssl.fail_verify_error") == 0  # the chain was fine
    finally:
        misled.stop()


def test_rotating_svids_and_authority_fail_no_request(mesh: Mesh) -> None:
    server_stats_before = sds_stats(mesh.server)
    old_roots = served_roots(mesh.server, "ROOTCA")
    assert len(old_roots) == 1
    handshakes_before = mesh.server.counter("listener.inbound.ssl.handshake")

    outcomes: list[Outcome] = []
    seen = Observations()
    stop_load, stop_watch = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=send_load, args=(mesh.outbound_port, stop_load, outcomes))
        for _ in range(LOAD_THREADS)
    ]
    watcher = threading.Thread(target=watch, args=(mesh, stop_watch, seen))
    began = time.monotonic()
    for thread in [*threads, watcher]:
        thread.start()
    try:
        time.sleep(PREPARE_AT)  # let a rotation or two happen under load first
        preparing = time.monotonic()
        mesh.authd.cli("authority", "prepare", "--kind", "x509")

        def both_trust_two_roots() -> bool:
            return all(
                counts and all(n == 2 for n in counts)
                for counts in (certs_page(mesh.server)[1], certs_page(mesh.client)[1])
            )

        wait_until("both sidecars to trust the prepared authority", both_trust_two_roots, 15)
        prepared_trusted_after = time.monotonic() - preparing
        mesh.authd.cli("authority", "activate", "--kind", "x509")
        activated_at = time.monotonic()
        (new_root,) = [r for r in served_roots(mesh.server, "ROOTCA") if r not in old_roots]
        assert served_roots(mesh.client, "ALL") == served_roots(mesh.server, "ROOTCA")
        time.sleep(max(0.0, began + LOAD_SECONDS - time.monotonic()))
    finally:
        stop_load.set()
        for thread in threads:
            thread.join(timeout=30)
        stop_watch.set()
        watcher.join(timeout=10)
    assert not any(t.is_alive() for t in [*threads, watcher])
    look(mesh, seen)  # what the last requests used may have come after the watcher's last look

    failures = [o for o in outcomes if not o.ok]
    assert failures == [], f"{len(failures)} of {len(outcomes)} requests failed: {failures[:10]}"
    expected = LOAD_THREADS * 2 * LOAD_SECONDS / TICK
    assert len(outcomes) >= expected * 0.5, f"only {len(outcomes)} requests were sent"
    assert seen.errors == []

    # Rotation happened, on both sides, and the served certificates changed at least twice.
    assert len(seen.served["server"]) >= 3, seen.served
    assert len(seen.served["client"]) >= 3, seen.served
    # New handshakes kept happening, with the client's rotated certificates.
    client_certs_used = {o.what for o in outcomes}
    assert len(client_certs_used) >= 3
    assert client_certs_used <= set(seen.client_leaves)
    handshakes = mesh.server.counter("listener.inbound.ssl.handshake") - handshakes_before
    assert handshakes >= len(outcomes) // PEER_MAX_REQUESTS // 2

    # After activation, both sidecars present certificates of the new authority, and the
    # server took requests from clients presenting one.
    for envoy, name in ((mesh.client, CLIENT), (mesh.server, "default")):
        leaf = served_chain(envoy, name)[0]
        assert issued_by(leaf, new_root), f"{name} still has a leaf of the old authority"
    new_authority_hashes = {
        h for h, leaf in seen.client_leaves.items() if issued_by(leaf, new_root)
    }
    served_after = [o for o in outcomes if o.started > activated_at]
    assert {o.what for o in served_after} & new_authority_hashes
    assert any(issued_by(leaf, new_root) for leaf in seen.server_leaves.values())

    # Envoy accepted every push: no NACK, still connected to authd.
    for envoy, names in ((mesh.server, ("default", "ROOTCA")), (mesh.client, (CLIENT, "ALL"))):
        stats = sds_stats(envoy)
        for name in names:
            assert stats[sds_stat(name, "update_rejected")] == 0, stats
            assert stats[sds_stat(name, "control_plane.connected_state")] == 1, stats
    server_stats = sds_stats(mesh.server)
    assert (
        server_stats["sds.ROOTCA.update_success"]
        >= server_stats_before["sds.ROOTCA.update_success"] + 1
    )
    print(
        json.dumps(
            {
                "requests": len(outcomes),
                "failures": len(failures),
                "new_connection_requests": sum(o.new_connection for o in outcomes),
                "server_handshakes": handshakes,
                "server_serials": len(seen.served["server"]),
                "client_serials": len(seen.served["client"]),
                "client_certs_seen_by_server": len(client_certs_used),
                "prepared_trusted_after_s": round(prepared_trusted_after, 2),
                "sds_server": sds_summary(mesh.server, ("default", "ROOTCA")),
                "sds_client": sds_summary(mesh.client, (CLIENT, "ALL")),
            },
            indent=1,
        )
    )

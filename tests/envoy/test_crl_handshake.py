"""A revoked SVID is refused by Envoy itself, at the TLS handshake of a new connection.

Three sidecars from deploy/envoy/sidecar-sds.yaml (the launcher of ``test_sds_rotation``),
each under its own uid so authd's attestation gives each its own registration entry: a
server sidecar that validates callers with ``ROOTCA`` (trusted CAs plus authd's CRLs; Envoy's
SPIFFE validator behind ``ALL`` ignores CRLs), and two callers: ``client``, whose SVID lives
an hour (its serial stays put while the test revokes it), and ``rotating``, whose SVID is
re-issued every ~10 s. Every request to a caller's outbound port opens a new connection to
the server (``PEER_MAX_REQUESTS`` = 1), so every request is a new handshake.

A revoked caller's request must fail *at the handshake*: a 503 from the caller's sidecar,
whose connection attempt failed (``cluster.peer.ssl.connection_error``); a verification
failure counted by the server sidecar, which says in its debug log that the certificate is
revoked; and nothing in the server's access log (ext_authz, which would answer 403, is never
reached). authd re-signs
its CRLs every ``CRL_REFRESH`` seconds here, so the tests also show that Envoy keeps getting
fresh ones (a CRL past its nextUpdate would fail every handshake).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import pwd
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.envoy import (
    HOST,
    TRUST_DOMAIN,
    Authd,
    EchoUpstream,
    Envoy,
    Reply,
    authd_config,
    read_json_lines,
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
    secrets_of,
    served_chain,
    sidecar_values,
    start_sidecar,
    xfcc,
)

SERVER = f"spiffe://{TRUST_DOMAIN}/server"
CLIENT = f"spiffe://{TRUST_DOMAIN}/client"
ROTATING = f"spiffe://{TRUST_DOMAIN}/rotating"
CLIENT_TTL = "1h"
ROTATING_TTL = 20  # seconds: re-issued at 9-10 s
CRL_REFRESH = 4  # seconds: nextUpdate = signing + 4 s, re-signed every 2 s
LANDING_TIMEOUT = 15.0  # for a revocation to reach the server sidecar
SDS_FAILURES = "sds.spiffe_example.org/rotating.update_failure"  # its SDS stream ended in error

POLICY = f"""\
version: 1
default_rule_set: server
rule_sets:
  server:
    rules:
      - name: callers
        effect: allow
        paths: ["/*"]
        callers: ["{CLIENT}", "{ROTATING}"]
"""

_END = b"-----END X509 CRL-----\n"
# What the server sidecar's ``connection`` logger says (at debug) when a CRL refuses a peer.
REVOKED_LOG = "certificate revocation check against provided CRLs failed: certificate revoked"


@dataclass
class Caller:
    spiffe_id: str
    envoy: Envoy
    port: int  # its plaintext outbound listener

    def call(self, path: str) -> Reply:
        return request(self.port, path, timeout=10)

    def leaf(self) -> x509.Certificate:
        return served_chain(self.envoy, self.spiffe_id)[0]

    def connect_failures(self) -> dict[str, int]:
        names = ("cluster.peer.ssl.connection_error", "cluster.peer.upstream_cx_connect_fail")
        return {name: self.envoy.counter(name) for name in names}

    def resumed(self) -> int:
        """TLS sessions this sidecar resumed with the server (no certificate check then)."""
        return self.envoy.counter("cluster.peer.ssl.session_reused")


@dataclass
class Mesh:
    authd: Authd
    server: Envoy
    client: Caller
    rotating: Caller
    access_log: Path  # the server sidecar's


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    path = short_tmpdir()
    path.chmod(0o755)  # the sidecars' uids must reach their directories and authd's socket
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, ServiceUser]]:
    """``client`` runs as nobody; ``server`` and ``rotating`` as users made for this module."""
    made: list[str] = []
    try:
        found = {"client": ServiceUser("nobody", NOBODY, pwd.getpwuid(NOBODY).pw_gid)}
        for role in ("server", "rotating"):
            name = f"authd-crl-{secrets.token_hex(3)}"
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
            )
            made.append(name)
            entry = pwd.getpwnam(name)
            found[role] = ServiceUser(name, entry.pw_uid, entry.pw_gid)
        yield found
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture(scope="module")
def authd(tmp: Path, users: dict[str, ServiceUser]) -> Iterator[Authd]:
    config = authd_config(policy_file="policy.yaml") + f"\n[ca]\ncrl_refresh = {CRL_REFRESH}\n"
    daemon = start_authd(tmp / "d", config, files={"policy.yaml": POLICY})
    try:
        wait_for("authd's workload socket", (daemon.data_dir / "workload.sock").exists)
        for role, spiffe_id, ttl in (
            ("server", SERVER, "1h"),
            ("client", CLIENT, CLIENT_TTL),
            ("rotating", ROTATING, f"{ROTATING_TTL}s"),
        ):
            daemon.cli(
                "entry",
                "create",
                "--spiffe-id",
                spiffe_id,
                "--selector",
                f"unix:uid:{users[role].uid}",
                "--x509-svid-ttl",
                ttl,
            )
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def mesh(authd: Authd, users: dict[str, ServiceUser], tmp: Path) -> Iterator[Mesh]:
    binary = executable_envoy(tmp / "bin")
    echo = EchoUpstream()
    # Every request a new connection, so a new handshake.
    common = sidecar_values(authd, echo.port, peer_max_requests=1)
    started: list[Envoy] = []
    try:
        server = start_sidecar(
            "server",
            users["server"],
            binary,
            tmp,
            **common,
            SVID_NAME="default",
            BUNDLE_NAME="ROOTCA",  # the validation context that carries the CRLs
            PEER_PORT=9,  # the server calls no one
            PEER_SPIFFE_ID=CLIENT,
        )
        started.append(server)
        # Why a handshake failed is only said at debug level, by the connection logger.
        admin = f"http://{HOST}:{server.admin_port}/logging?connection=debug"
        with urllib.request.urlopen(urllib.request.Request(admin, method="POST"), timeout=5):
            pass
        callers = {}
        for role, spiffe_id in (("client", CLIENT), ("rotating", ROTATING)):
            envoy = start_sidecar(
                role,
                users[role],
                binary,
                tmp,
                **common,
                SVID_NAME=spiffe_id,
                BUNDLE_NAME="ALL",
                PEER_PORT=server.listener_port("inbound"),
                PEER_SPIFFE_ID=SERVER,
            )
            started.append(envoy)
            callers[role] = Caller(spiffe_id, envoy, envoy.listener_port("outbound"))
        yield Mesh(authd, server, callers["client"], callers["rotating"], tmp / "server")
    finally:
        for envoy in started:
            envoy.stop()
        echo.close()


# --- what the server sidecar holds and counts ----------------------------------------------


def served_crls(envoy: Envoy) -> list[x509.CertificateRevocationList]:
    """The CRLs of the sidecar's ROOTCA validation context (none: an empty list)."""
    context = secrets_of(envoy)["ROOTCA"]["validation_context"]
    if "crl" not in context:
        return []
    pem = base64.b64decode(context["crl"]["inline_bytes"])
    return [x509.load_pem_x509_crl(block + _END) for block in pem.split(_END) if block.strip()]


def listed(envoy: Envoy) -> set[int]:
    """Every serial the sidecar's CRLs list."""
    return {entry.serial_number for crl in served_crls(envoy) for entry in crl}


def stats(envoy: Envoy) -> dict[str, int]:
    names = (
        "listener.inbound.ssl.handshake",
        "listener.inbound.ssl.fail_verify_error",
        "listener.inbound.ssl.connection_error",
        "listener.inbound.ssl.session_reused",
        "sds.ROOTCA.update_success",
        "sds.ROOTCA.update_rejected",
    )
    return {name: envoy.counter(name) for name in names}


def grew(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in before}


def inbound_peers(mesh: Mesh) -> list[str]:
    """The callers of the requests that reached the server sidecar's HTTP layer, in order."""
    return [
        entry["peer"]
        for entry in read_json_lines(mesh.access_log / "access.log")
        if entry.get("direction") == "inbound"
    ]


def wait_until(what: str, condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition()`` held (bounded by ``timeout``)."""
    began = time.monotonic()
    wait_for(what, lambda: condition() or None, timeout)
    return time.monotonic() - began


def assert_gets_in(caller: Caller) -> Reply:
    reply = caller.call("/hello")
    assert reply.status == 200, reply
    assert xfcc(reply)["URI"] == caller.spiffe_id
    return reply


def revoked_refusals(mesh: Mesh) -> int:
    """How often the server sidecar has logged refusing a peer for a revoked certificate."""
    return mesh.server.log_path.read_text(errors="replace").count(REVOKED_LOG)


def assert_refused_at_handshake(mesh: Mesh, caller: Caller) -> Reply:
    """A new connection of ``caller`` fails its handshake, because its certificate is revoked,
    and no request reaches the server's HTTP layer."""
    before, peers_before = stats(mesh.server), len(inbound_peers(mesh))
    failures_before, refusals_before = caller.connect_failures(), revoked_refusals(mesh)
    reply = caller.call("/hello")
    assert reply.status == 503, reply
    assert b"upstream connect error" in reply.body, reply.body
    delta = grew(before, stats(mesh.server))
    assert delta["listener.inbound.ssl.fail_verify_error"] == 1, delta
    assert delta["listener.inbound.ssl.handshake"] == 0, delta
    caller_delta = grew(failures_before, caller.connect_failures())
    assert all(n == 1 for n in caller_delta.values()), caller_delta
    wait_until(
        "the server's log of the refusal", lambda: revoked_refusals(mesh) > refusals_before, 5
    )
    time.sleep(0.1)  # access logs are flushed every 20 ms
    assert len(inbound_peers(mesh)) == peers_before
    return reply


def revoke(mesh: Mesh, kind: str, target: str, reason: str) -> None:
    mesh.authd.cli("revoke", kind, target, "--reason", reason, "--note", "test_crl_handshake")


# --- the tests ----------------------------------------------------------------------------


def test_envoy_keeps_getting_fresh_crls_and_full_handshakes_keep_working(
    mesh: Mesh, tmp: Path
) -> None:
    # Straight to the server sidecar with an SVID of the client, a fresh TLS session each
    # time: every request is a full handshake that checks the CRL Envoy holds then (the
    # sidecars resume sessions, and a resumed session checks nothing).
    credentials = mesh.authd.mint_x509(CLIENT, tmp / "minted")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # an SVID names a SPIFFE ID, not a host
    context.load_verify_locations(credentials / "bundle.pem")
    context.load_cert_chain(credentials / "svid.pem", credentials / "svid.key")
    port = mesh.server.listener_port("inbound")
    before = stats(mesh.server)
    began = time.monotonic()
    replies = []
    while time.monotonic() - began < 2.5 * CRL_REFRESH:
        replies.append(request(port, "/fresh", context=context, timeout=10))
        time.sleep(0.2)
    delta = grew(before, stats(mesh.server))
    failures = [r for r in replies if r.status != 200]
    assert failures == [], failures[:3]
    assert delta["listener.inbound.ssl.handshake"] == len(replies), delta
    assert delta["listener.inbound.ssl.session_reused"] == 0, delta
    assert delta["listener.inbound.ssl.fail_verify_error"] == 0, delta
    # Re-signed every CRL_REFRESH/2 and pushed: at least three new CRLs in 2.5 periods.
    assert delta["sds.ROOTCA.update_success"] >= 3, delta
    assert delta["sds.ROOTCA.update_rejected"] == 0, delta
    crls = served_crls(mesh.server)
    assert crls, "the server's ROOTCA carries no CRL"
    now = dt.datetime.now(dt.UTC)
    for crl in crls:
        assert crl.next_update_utc is not None and crl.next_update_utc > now
    print(json.dumps({"full_handshakes": len(replies), "server": delta}))


def test_a_revoked_serial_is_refused_at_the_handshake_until_its_hold_is_lifted(
    mesh: Mesh, tmp: Path
) -> None:
    # A certificate someone holds (here minted through the CLI) and presents directly, with
    # a fresh TLS session each time so that every attempt is a full handshake.
    credentials = mesh.authd.mint_x509(CLIENT, tmp / "held")
    held = x509.load_pem_x509_certificate((credentials / "svid.pem").read_bytes())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # an SVID names a SPIFFE ID, not a host
    context.load_verify_locations(credentials / "bundle.pem")
    context.load_cert_chain(credentials / "svid.pem", credentials / "svid.key")
    port = mesh.server.listener_port("inbound")

    def admitted() -> bool:
        try:
            return request(port, "/held", context=context, timeout=10).status == 200
        except (OSError, ssl.SSLError):
            return False

    assert admitted()
    sidecar_leaf = mesh.client.leaf()
    before = stats(mesh.server)
    began = time.monotonic()
    revoke(mesh, "serial", format(held.serial_number, "x"), "certificate-hold")
    wait_until(
        "the revoked serial in the server sidecar's CRL",
        lambda: held.serial_number in listed(mesh.server),
        LANDING_TIMEOUT,
    )
    landed = time.monotonic() - began  # the CLI's own start-up included
    assert not admitted()
    during = grew(before, stats(mesh.server))
    assert during["listener.inbound.ssl.fail_verify_error"] >= 1, during
    # Other SVIDs of the same workload are untouched: only that serial is revoked.
    assert mesh.client.leaf() == sidecar_leaf
    assert_gets_in(mesh.client)
    assert_gets_in(mesh.rotating)

    began = time.monotonic()
    mesh.authd.cli("unrevoke", "serial", format(held.serial_number, "x"))
    wait_until(
        "the serial to leave the server sidecar's CRL",
        lambda: held.serial_number not in listed(mesh.server),
        LANDING_TIMEOUT,
    )
    lifted = time.monotonic() - began
    assert admitted()  # the same certificate, admitted again
    print(
        json.dumps(
            {
                "revocation_landed_s": round(landed, 2),
                "hold_lifted_s": round(lifted, 2),
                "server_while_revoked": during,
            }
        )
    )


def test_a_sidecar_whose_serial_is_revoked_gets_a_new_svid_at_once(mesh: Mesh) -> None:
    leaf = mesh.client.leaf()
    assert xfcc(assert_gets_in(mesh.client))["Hash"] == leaf_hash(leaf)
    revoke(mesh, "serial", format(leaf.serial_number, "x"), "key-compromise")
    wait_until(
        "the client sidecar to be handed a new SVID",
        lambda: mesh.client.leaf().serial_number != leaf.serial_number,
        LANDING_TIMEOUT,
    )
    wait_until(
        "the revoked serial in the server sidecar's CRL",
        lambda: leaf.serial_number in listed(mesh.server),
        LANDING_TIMEOUT,
    )
    fresh = mesh.client.leaf()
    assert fresh.public_key() != leaf.public_key()  # a new key, not a re-signed one
    wait_until(
        "the client to get in with its new SVID",
        lambda: xfcc(assert_gets_in(mesh.client))["Hash"] == leaf_hash(fresh),
        LANDING_TIMEOUT,
    )


def test_revoking_a_spiffe_id_refuses_every_svid_it_holds(mesh: Mesh) -> None:
    assert_gets_in(mesh.rotating)
    # Let it rotate once, so two of its SVIDs are valid when it is revoked.
    first = mesh.rotating.leaf()
    wait_until(
        "the rotating sidecar's next SVID",
        lambda: mesh.rotating.leaf().serial_number != first.serial_number,
        ROTATING_TTL,
    )
    before = stats(mesh.server)
    began = time.monotonic()
    revoke(mesh, "spiffe-id", ROTATING, "key-compromise")

    def every_svid_listed() -> bool:
        held = {first.serial_number, mesh.rotating.leaf().serial_number}
        return held <= listed(mesh.server)

    wait_until(
        "every SVID of the revoked SPIFFE ID in the server sidecar's CRL",
        every_svid_listed,
        LANDING_TIMEOUT,
    )
    landed = time.monotonic() - began  # the CLI's own start-up included
    held = mesh.rotating.leaf()
    refused = assert_refused_at_handshake(mesh, mesh.rotating)
    refused_after = time.monotonic() - began
    # Refused for the revocation, not for expiry: what it presents is still valid.
    assert held.not_valid_after_utc > dt.datetime.now(dt.UTC)
    assert_gets_in(mesh.client)  # an unrevoked caller still gets in
    # authd refuses the revoked ID's SDS stream from now on (and issues it nothing); its
    # Envoy keeps, and presents, the SVID it had.
    failures = mesh.rotating.envoy.counter(SDS_FAILURES)
    wait_until(
        "authd to refuse the rotating sidecar's SDS stream",
        lambda: mesh.rotating.envoy.counter(SDS_FAILURES) > failures,
        LANDING_TIMEOUT,
    )
    assert mesh.rotating.leaf() == held
    print(
        json.dumps(
            {
                "revocation_landed_s": round(landed, 2),
                "refused_after_s": round(refused_after, 2),
                "held_expires_in_s": round(held.not_valid_after_utc.timestamp() - time.time(), 1),
                "server_while_revoked": grew(before, stats(mesh.server)),
                "rotating_reply": refused.body[:300].decode(errors="replace"),
            }
        )
    )

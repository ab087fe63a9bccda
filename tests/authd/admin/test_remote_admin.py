"""The admin API for remote callers over mutual TLS.

End to end against a real ``authd run`` with ``[admin] mtls_address``, driven through the
``authd`` CLI with ``--server/--cert/--key/--bundle``; and the authorization rule and the
server's SVID in process, on a fake clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from authd.admin.remote import ADMIN_TLS_NAME, AdminServerSvid, client_chain
from authd.admin.servicer import AdminService
from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.cli.errors import Exit
from authd.config import ConfigError, load_config
from authd.transport.peercred import PeerCredGateway
from authd.workload.registry import EntryRegistry
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock, SystemClock
from ca.keys import KeyStore, KeyType, PrivateKey
from ca.revoker import Revoker
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import RegistrationEntry, Selector, SQLiteStore
from ca.x509svid import verify_x509_svid
from tests.support.certs import make_root
from tests.support.cli_exit import expected_exit
from tests.support.daemon import AUTHD, Daemon, authd
from tests.support.ports import free_port

OPS = "spiffe://example.org/ops"
CI = "spiffe://example.org/ci"
SERVER_ID = "spiffe://example.org/authd/admin"
EXAMPLE = TrustDomain("example.org")
NOW = 1_790_000_000.0


# --- end to end ---------------------------------------------------------------------------


class RemoteAdmin:
    """A running ``authd run`` with the mTLS admin listener, and SVIDs minted from it."""

    def __init__(self, workdir: Path, config: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.daemon = Daemon(
            workdir / "data", f'{config}\n[admin]\nmtls_address = "127.0.0.1:{self.port}"\n'
        )
        self.daemon.start()
        # Remote calls name a data directory with no daemon in it: a call that fell back to
        # a local socket would fail.
        self.elsewhere = workdir / "elsewhere"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def local(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``authd ARGS`` on the Unix admin socket, as root."""
        return authd(*args, data_dir=self.daemon.data_dir, check=check)

    def entry(self, spiffe_id: str, *flags: str) -> dict[str, Any]:
        created: dict[str, Any] = json.loads(
            self.local(
                "entry", "create", "--spiffe-id", spiffe_id, "--selector", "unix:uid:4242",
                *flags, "--json",
            ).stdout
        )  # fmt: skip
        return created

    def mint(self, spiffe_id: str) -> Path:
        """An X.509-SVID for ``spiffe_id`` in a fresh directory (svid.pem, svid.key, bundle.pem)."""
        out = Path(tempfile.mkdtemp(prefix="svid-", dir=self.workdir))
        self.local("x509", "mint", "--spiffe-id", spiffe_id, "--out", str(out))
        return out

    def remote(
        self, svid: Path, *args: str, check: bool = False, bundle: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``authd ARGS`` against the mTLS listener with the SVID in directory ``svid``."""
        result = authd(
            *args,
            "--server", self.address,
            "--cert", str(svid / "svid.pem"),
            "--key", str(svid / "svid.key"),
            "--bundle", str(bundle or svid / "bundle.pem"),
            data_dir=self.elsewhere,
            check=check,
        )  # fmt: skip
        return result

    def audit(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = json.loads(self.local("audit", "log", "--json").stdout)[
            "records"
        ]
        return records


@pytest.fixture
def remote() -> Iterator[RemoteAdmin]:
    # Short paths: Unix socket paths are limited to 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="authd-mtls-"))
    os.chmod(workdir, 0o755)
    running = RemoteAdmin(workdir)
    yield running
    process = running.daemon.process
    if process and process.poll() is None:
        running.daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def denial(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused remote call prints, after checking its exit status."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == expected_exit(lines[0]), (result.stdout, result.stderr)
    return lines[0]


def unreachable(result: subprocess.CompletedProcess[str]) -> str:
    """The last line of a call that failed before it reached the servicer: TLS refused it.

    It is the CLI's own line; grpc core may log the failed handshake on a line before it.
    """
    assert result.returncode == Exit.UNAVAILABLE, (result.stdout, result.stderr)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("authd: cannot reach the authd daemon: "), result.stderr
    return line


def leaf_serial(svid: Path) -> str:
    leaf = x509.load_pem_x509_certificates((svid / "svid.pem").read_bytes())[0]
    return format(leaf.serial_number, "x")


def server_certificate(remote: RemoteAdmin, svid: Path) -> x509.Certificate:
    """The certificate the mTLS listener presents in a fresh handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # checked below, as a SPIFFE ID, not a host name
    context.load_verify_locations(cafile=str(svid / "bundle.pem"))
    context.load_cert_chain(str(svid / "svid.pem"), str(svid / "svid.key"))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", remote.port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_admin_entry_may_call_and_others_are_denied(remote: RemoteAdmin) -> None:
    remote.entry(OPS, "--admin")
    remote.entry(CI)
    ops, ci = remote.mint(OPS), remote.mint(CI)
    stranger = remote.mint("spiffe://example.org/stranger")  # no entry at all

    shown = remote.remote(ops, "ca", "show", "--json", check=True)
    assert json.loads(shown.stdout)["trust_domain"] == "example.org"
    healthy = remote.remote(ops, "healthcheck", check=True)
    assert healthy.stdout == "authd is serving\n"

    assert denial(remote.remote(ci, "ca", "show")) == (
        "authd: permission denied: "
        "spiffe://example.org/ci is not an admin: no registration entry with admin: true"
    )
    assert denial(remote.remote(stranger, "entry", "list")) == (
        "authd: permission denied: spiffe://example.org/stranger is not an admin: "
        "no registration entry with admin: true"
    )
    # Taking admin away from the entry takes it away from its SVIDs at once.
    [ops_entry] = json.loads(remote.local("entry", "list", "--spiffe-id", OPS, "--json").stdout)[
        "entries"
    ]
    remote.local("entry", "update", ops_entry["id"], "--no-admin")
    assert "is not an admin" in denial(remote.remote(ops, "ca", "show"))


def test_svid_of_a_foreign_ca_fails_the_handshake(remote: RemoteAdmin, tmp_path: Path) -> None:
    remote.entry(OPS, "--admin")
    ops = remote.mint(OPS)
    remote.remote(ops, "ca", "show", check=True)  # the listener is up and ops is an admin
    # Another CA of the same trust domain signs the same SPIFFE ID: not ours, not trusted.
    store = SQLiteStore(tmp_path / "foreign.db")
    foreign_ca = CertificateAuthority(
        trust_domain=EXAMPLE, store=store, keystore=KeyStore(tmp_path / "keys"), clock=SystemClock()
    )
    try:
        key = KeyType.EC_P256.generate()
        svid = foreign_ca.sign_x509_svid(
            key.public_key(), spiffe_id=SpiffeId.parse(OPS), requester="test"
        )
    finally:
        foreign_ca.close()
        store.close()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "svid.pem").write_bytes(svid.chain_pem())
    (foreign / "svid.key").write_bytes(_pem_key(key))

    result = remote.remote(foreign, "ca", "show", bundle=ops / "bundle.pem")
    unreachable(result)
    assert "permission denied" not in result.stderr  # refused by TLS, before any call
    assert not any(OPS in r["actor"] for r in remote.audit())


def test_client_without_a_certificate_fails_the_handshake(remote: RemoteAdmin) -> None:
    remote.entry(OPS, "--admin")
    ops = remote.mint(OPS)
    remote.remote(ops, "ca", "show", check=True)
    credentials = grpc.ssl_channel_credentials(root_certificates=(ops / "bundle.pem").read_bytes())
    options = [("grpc.ssl_target_name_override", ADMIN_TLS_NAME)]
    with (
        grpc.secure_channel(remote.address, credentials, options=options) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        admin_pb2_grpc.AdminStub(channel).ShowCA(admin_pb2.ShowCARequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_revoking_the_admin_svid_denies_its_next_call(remote: RemoteAdmin) -> None:
    remote.entry(OPS, "--admin")
    ops, ops_again = remote.mint(OPS), remote.mint(OPS)
    remote.remote(ops, "ca", "show", check=True)

    serial = leaf_serial(ops)
    remote.local("revoke", "serial", serial, "--reason", "key-compromise")
    assert denial(remote.remote(ops, "ca", "show")) == (
        f"authd: permission denied: the X.509-SVID of {OPS} (serial {serial}) is revoked"
    )
    # Only that certificate: another SVID of the same admin still works ...
    remote.remote(ops_again, "ca", "show", check=True)
    # ... until the SPIFFE ID itself is revoked.
    remote.local("revoke", "spiffe-id", OPS)
    assert denial(remote.remote(ops_again, "ca", "show")) == (
        f"authd: permission denied: {OPS} is revoked"
    )


def test_changes_over_mtls_are_audited_as_the_admin_spiffe_id(remote: RemoteAdmin) -> None:
    remote.entry(OPS, "--admin")
    ops = remote.mint(OPS)
    created = json.loads(
        remote.remote(
            ops, "entry", "create", "--spiffe-id", "spiffe://example.org/web",
            "--selector", "unix:uid:1000", "--json", check=True,
        ).stdout
    )  # fmt: skip
    minted = remote.remote(
        ops, "x509", "mint", "--spiffe-id", "spiffe://example.org/web",
        "--out", str(remote.workdir / "web"), check=True,
    )  # fmt: skip
    assert "X.509-SVID spiffe://example.org/web serial" in minted.stdout

    records = [(r["actor"], r["action"], r["subject"]) for r in remote.audit()]
    assert (f"admin:{OPS}", "entry.create", created["id"]) in records
    assert ("admin:uid=0", "entry.create", created["id"]) not in records
    web_serial = leaf_serial(remote.workdir / "web")
    authorities = json.loads(remote.local("authority", "show", "--json").stdout)["authorities"]
    active = next(a for a in authorities if a["kind"] == "x509" and a["state"] == "active")
    svids = json.loads(
        remote.local("svid", "list", "--authority", active["authority_id"], "--json").stdout
    )["svids"]
    assert {s["serial"]: s["requester"] for s in svids}[web_serial] == f"admin:{OPS}"


def test_server_presents_its_svid_and_follows_authority_rotation(remote: RemoteAdmin) -> None:
    remote.entry(OPS, "--admin")
    ops = remote.mint(OPS)
    roots = x509.load_pem_x509_certificates((ops / "bundle.pem").read_bytes())
    before = server_certificate(remote, ops)
    spiffe_id = verify_x509_svid([before], trust_domain=EXAMPLE, roots=roots, now=time.time())
    assert str(spiffe_id) == SERVER_ID
    sans = before.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [ADMIN_TLS_NAME]

    # A prepared authority enters the bundle at once: an SVID it signs must be accepted by
    # the next handshake, with no restart.
    remote.local("authority", "prepare", "--kind", "x509")
    remote.local("authority", "activate", "--kind", "x509")
    authorities = json.loads(remote.local("authority", "show", "--json").stdout)["authorities"]
    active = next(a for a in authorities if a["kind"] == "x509" and a["state"] == "active")
    ops_new = remote.mint(OPS)
    remote.remote(ops_new, "ca", "show", check=True)

    after = server_certificate(remote, ops_new)
    assert after.serial_number != before.serial_number
    aki = after.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    assert aki.key_identifier.hex() == active["authority_id"]
    # The old SVID, signed by the retired authority, still verifies: it is in the bundle.
    remote.remote(ops, "ca", "show", check=True, bundle=ops_new / "bundle.pem")
    # A client checks the server against its own bundle: one from before the new authority
    # does not trust the server's new SVID.
    assert "CERTIFICATE_VERIFY_FAILED" in unreachable(remote.remote(ops, "ca", "show"))


def test_chain_through_an_upstream_ca_is_verified_with_its_intermediate() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="authd-mtls-"))
    os.chmod(workdir, 0o755)
    key = ec.generate_private_key(ec.SECP256R1())
    (workdir / "up.key").write_bytes(_pem_key(key))
    (workdir / "up.pem").write_bytes(_upstream_root(key).public_bytes(serialization.Encoding.PEM))
    upstream = (
        f'[ca]\nupstream_cert = "{workdir / "up.pem"}"\nupstream_key = "{workdir / "up.key"}"\n'
    )
    remote = RemoteAdmin(workdir, upstream)
    try:
        remote.entry(OPS, "--admin")
        ops = remote.mint(OPS)
        assert len(x509.load_pem_x509_certificates((ops / "svid.pem").read_bytes())) == 2
        assert (ops / "bundle.pem").read_bytes() == (workdir / "up.pem").read_bytes()
        shown = remote.remote(ops, "ca", "show", "--json", check=True)
        assert json.loads(shown.stdout)["upstream"] is True
        # Without the intermediate, the leaf has no path to the bundle: TLS refuses it.
        leaf_only = workdir / "leaf-only"
        leaf_only.mkdir()
        leaf = x509.load_pem_x509_certificates((ops / "svid.pem").read_bytes())[0]
        (leaf_only / "svid.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        shutil.copy(ops / "svid.key", leaf_only / "svid.key")
        unreachable(remote.remote(leaf_only, "ca", "show", bundle=ops / "bundle.pem"))
    finally:
        if remote.daemon.process and remote.daemon.process.poll() is None:
            remote.daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _upstream_root(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = time.time()
    name = x509.Name.from_rfc4514_string("CN=Upstream Root,O=corp")
    return make_root(key, common_name=name, not_before=now - 60, not_after=now + 30 * 86400)


def test_cli_refuses_a_server_without_the_admin_name(remote: RemoteAdmin) -> None:
    # A valid SVID of the trust domain, but not one made for the admin listener.
    imposter = remote.mint("spiffe://example.org/imposter")
    remote.entry(OPS, "--admin")
    ops = remote.mint(OPS)
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    admin_pb2_grpc.add_AdminServicer_to_server(admin_pb2_grpc.AdminServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [((imposter / "svid.key").read_bytes(), (imposter / "svid.pem").read_bytes())],
        root_certificates=(imposter / "bundle.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        result = authd(
            "ca", "show", "--server", f"127.0.0.1:{port}", "--cert", str(ops / "svid.pem"),
            "--key", str(ops / "svid.key"), "--bundle", str(ops / "bundle.pem"),
            data_dir=remote.elsewhere, check=False,
        )  # fmt: skip
    finally:
        server.stop(None)
    assert "Hostname Verification Check failed" in unreachable(result)


def test_remote_flags_go_together(remote: RemoteAdmin) -> None:
    ops = remote.mint(OPS)
    result = authd(
        "ca", "show", "--server", remote.address, "--cert", str(ops / "svid.pem"),
        data_dir=remote.elsewhere, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--server, --cert, --key and --bundle go together" in result.stderr
    swapped = remote.remote(ops, "ca", "show", bundle=ops / "svid.key")
    assert denial(swapped) == f"authd: --bundle: {ops / 'svid.key'} does not hold PEM certificates"


def test_taken_mtls_port_fails_startup_loudly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "authd.toml"
        config.write_text(
            f'[admin]\nmtls_address = "127.0.0.1:{port}"\n[authz]\ngrpc_address = ""\n'
            'http_address = ""\nmetrics_address = ""\n'
        )
        workdir = Path(tempfile.mkdtemp(prefix="authd-mtls-"))
        try:
            result = subprocess.run(
                [*AUTHD, "run", "--data-dir", str(workdir / "d"), "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    assert result.returncode == 1
    assert f"cannot serve the remote admin API on 127.0.0.1:{port}" in result.stderr


# --- configuration --------------------------------------------------------------------------


def test_server_spiffe_id_defaults_to_authd_admin_in_the_trust_domain() -> None:
    config = load_config(None, env={"HOME": "/root"}, overrides={"trust_domain": "corp.test"})
    assert config.admin.mtls_address == ""
    assert config.admin.server_id(config.trust_domain) == "spiffe://corp.test/authd/admin"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("spiffe://other.org/authd/admin", "not in the trust domain example.org"),
        ("spiffe://example.org", "has no path"),
        ("https://example.org/admin", "spiffe"),
    ],
)
def test_server_spiffe_id_must_be_a_workload_id_of_the_trust_domain(value: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"HOME": "/root"}, overrides={"admin.server_spiffe_id": value})
    assert caught.value.key == "admin.server_spiffe_id"
    assert why in caught.value.why


def test_mtls_address_must_be_host_and_port() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"HOME": "/root", "AUTHD_ADMIN_MTLS_ADDRESS": "8443"})
    assert caught.value.key == "admin.mtls_address"


# --- in process: who a TLS caller is, and the server's SVID ----------------------------------


def _pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Denied(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class TlsContext:
    """What the servicer reads of a grpc.aio context on the TLS listener."""

    def __init__(self, auth_context: dict[str, list[bytes]]) -> None:
        self._auth_context = auth_context

    def peer(self) -> str:
        return "ipv4:192.0.2.7:40000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth_context

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Denied(code, details)


def presented(chain: Sequence[x509.Certificate]) -> TlsContext:
    """The auth context grpc builds for a TLS client that presented ``chain``."""
    pem = serialization.Encoding.PEM
    leaf = chain[0]
    uri = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    claimed = [u.encode() for u in uri.get_values_for_type(x509.UniformResourceIdentifier)]
    context: dict[str, list[bytes]] = {
        "transport_security_type": [b"ssl"],
        "x509_pem_cert": [leaf.public_bytes(pem)],
        # What the peer claims; the servicer must not take it on trust.
        "peer_spiffe_id": claimed,
        "x509_subject_alternative_name": claimed,
    }
    if len(chain) > 1:
        context["x509_pem_cert_chain"] = [b"".join(c.public_bytes(pem) for c in chain)]
    return TlsContext(context)


class World:
    """An AdminService on a real CA, store, registry and revocation list, on a fake clock."""

    def __init__(self, directory: Path) -> None:
        self.clock = FakeClock(NOW)
        self.store = SQLiteStore(directory / "authd.db")
        self.ca = CertificateAuthority(
            trust_domain=EXAMPLE,
            store=self.store,
            keystore=KeyStore(directory / "keys"),
            clock=self.clock,
        )
        self.registry = EntryRegistry(self.store, self.clock)
        self.revocations = Revoker(self.ca, self.store, self.clock)
        # Never started: it knows no connection, so no call here is a Unix-socket call.
        gateway = PeerCredGateway("/nonexistent/admin.sock", "/nonexistent/private")
        self.service = AdminService(
            self.ca, gateway, lambda uid: uid == 0, self.registry, self.revocations
        )

    def entry(self, entry_id: str, spiffe_id: str, **fields: Any) -> None:
        self.store.create_entry(
            RegistrationEntry(
                entry_id=entry_id,
                spiffe_id=spiffe_id,
                parent_id="spiffe://example.org/authd",
                selectors=(Selector("unix", "uid:1000"),),
                created_at=int(self.clock.now()),
                **fields,
            )
        )
        self.registry.reload()

    def svid(self, spiffe_id: str) -> list[x509.Certificate]:
        key = KeyType.EC_P256.generate()
        issued = self.ca.sign_x509_svid(
            key.public_key(), spiffe_id=SpiffeId.parse(spiffe_id), requester="test"
        )
        return list(issued.chain)

    def show_ca(self, context: TlsContext) -> admin_pb2.ShowCAResponse:
        reply: admin_pb2.ShowCAResponse = asyncio.run(
            self.service.ShowCA(admin_pb2.ShowCARequest(), context)  # type: ignore[arg-type]
        )
        return reply

    def denied(self, context: TlsContext) -> str:
        with pytest.raises(Denied) as caught:
            self.show_ca(context)
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        return caught.value.details


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.ca.close()
    w.store.close()


def _self_signed_svid(spiffe_id: str) -> x509.Certificate:
    """A leaf that claims ``spiffe_id`` and is signed by nobody we trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name.from_rfc4514_string("O=authd"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(NOW - 60))
        .not_valid_after(_utc(NOW + 3600))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)


def test_admin_entry_grants_the_call(world: World) -> None:
    world.entry("ops", OPS, admin=True)
    assert world.show_ca(presented(world.svid(OPS))).trust_domain == "example.org"


def test_uri_san_is_not_believed_without_our_chain(world: World) -> None:
    world.entry("ops", OPS, admin=True)
    details = world.denied(presented([_self_signed_svid(OPS)]))
    assert details.startswith("client certificate rejected: x509-svid/")


def test_entry_without_admin_does_not_grant(world: World) -> None:
    world.entry("ci", CI)
    assert world.denied(presented(world.svid(CI))) == (
        f"{CI} is not an admin: no registration entry with admin: true"
    )


def test_expired_admin_entry_does_not_grant(world: World) -> None:
    world.entry("ops", OPS, admin=True, expires_at=int(NOW) + 60)
    chain = world.svid(OPS)
    world.show_ca(presented(chain))
    world.clock.advance(61)
    assert "is not an admin" in world.denied(presented(chain))


def test_revoked_admin_entry_does_not_grant(world: World) -> None:
    world.entry("ops", OPS, admin=True)
    chain = world.svid(OPS)
    world.revocations.revoke("entry", "ops", reason="unspecified", note="", actor="test")
    assert "is not an admin" in world.denied(presented(chain))


def test_revoked_serial_or_spiffe_id_does_not_grant(world: World) -> None:
    world.entry("ops", OPS, admin=True)
    first, second = world.svid(OPS), world.svid(OPS)
    serial = format(first[0].serial_number, "x")
    world.revocations.revoke("serial", serial, reason="unspecified", note="", actor="test")
    assert world.denied(presented(first)) == f"the X.509-SVID of {OPS} (serial {serial}) is revoked"
    world.show_ca(presented(second))
    world.revocations.revoke("spiffe_id", OPS, reason="unspecified", note="", actor="test")
    assert world.denied(presented(second)) == f"{OPS} is revoked"


def test_call_neither_on_the_socket_nor_over_tls_is_denied(world: World) -> None:
    context = TlsContext({"transport_security_type": [b"insecure"]})
    assert world.denied(context) == (
        "unknown caller is not an authd admin (root or admin.allowed_uids)"
    )


def test_client_chain_puts_the_leaf_first_once(world: World) -> None:
    leaf, *_ = world.svid(OPS)
    authority = world.ca.x509_authority.certificate
    pem = serialization.Encoding.PEM
    context = {
        "transport_security_type": [b"ssl"],
        "x509_pem_cert": [leaf.public_bytes(pem)],
        "x509_pem_cert_chain": [leaf.public_bytes(pem) + authority.public_bytes(pem)],
    }
    assert client_chain(context) == [leaf, authority]
    assert client_chain({"transport_security_type": [b"insecure"]}) is None


def test_server_svid_is_reissued_at_half_life(world: World) -> None:
    svid = AdminServerSvid(world.ca, world.clock, SpiffeId.parse(SERVER_ID))
    first = svid.current
    assert str(verify_chain_of(world, first.chain_pem)) == SERVER_ID
    svid.credentials()  # grpc now holds the first configuration
    assert svid.fetch() is None
    half = (first.expires_at - first.issued_at) / 2
    world.clock.advance(half - 1)
    assert not svid.rotate_due()
    assert svid.fetch() is None
    world.clock.advance(1)
    assert svid.rotate_due()
    assert svid.current.serial != first.serial
    assert svid.fetch() is not None  # the next handshake gets the new SVID ...
    assert svid.fetch() is None  # ... once


def test_server_svid_follows_the_authorities(world: World) -> None:
    svid = AdminServerSvid(world.ca, world.clock, SpiffeId.parse(SERVER_ID))
    svid.credentials()
    old_root = world.ca.x509_authority.certificate
    world.ca.prepare_authority("x509")
    prepared = svid.current
    roots = x509.load_pem_x509_certificates(prepared.roots_pem)
    assert len(roots) == 2 and old_root in roots  # the new root is trusted for clients now
    assert svid.fetch() is not None
    world.ca.activate_authority("x509")
    leaf = x509.load_pem_x509_certificates(svid.current.chain_pem)[0]
    new_authority = world.ca.x509_authority
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    assert aki.key_identifier.hex() == new_authority.authority_id
    assert svid.fetch() is not None


def verify_chain_of(world: World, chain_pem: bytes) -> SpiffeId:
    return world.ca.verify_x509_svid(x509.load_pem_x509_certificates(chain_pem))

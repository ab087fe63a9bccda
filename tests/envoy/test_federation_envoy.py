"""A workload of a federated trust domain through a real Envoy of ours: Envoy's SPIFFE
validator gets the foreign bundle over SDS ``ALL`` (our entry federates with a.test), and
authd's ext_authz verifies the foreign peer certificate against a.test's bundle and lets it
in exactly where the policy names it. A trust domain we do not federate with is refused at
the handshake."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, authd
from tests.support.envoy import (
    HOST,
    TRUST_DOMAIN,
    Authd,
    EchoUpstream,
    Envoy,
    authd_config,
    foreign_svid,
    render,
    request,
    short_tmpdir,
    start_authd,
    start_envoy,
    wait_for,
)
from tests.support.ports import free_port

ALLOWED = "spiffe://a.test/allowed"
OTHER = "spiffe://a.test/other"
SERVER = "spiffe://b.test/server"
POLICY = f"""\
version: 1
default_rule_set: server
rule_sets:
  server:
    rules:
      - name: partner
        effect: allow
        paths: ["/*"]
        callers: ["{ALLOWED}"]
"""


class Federated:
    def __init__(self, tmp: Path, a: Daemon, b: Authd, envoy: Envoy, b_roots: Path) -> None:
        self.tmp, self.a, self.b, self.envoy, self.b_roots = tmp, a, b, envoy, b_roots

    def call(self, cert_dir: Path) -> int:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # the server is known by its SPIFFE ID
        context.load_verify_locations(self.b_roots)
        context.load_cert_chain(cert_dir / "svid.pem", cert_dir / "svid.key")
        return request(self.envoy.listener_port("inbound"), "/hello", context=context).status


@pytest.fixture(scope="module")
def federated() -> Iterator[Federated]:
    tmp = short_tmpdir()
    started: list[object] = []
    echo = EchoUpstream()
    try:
        (tmp / "a").mkdir()
        a_port = free_port()
        a = Daemon(
            tmp / "a" / "data",
            f'trust_domain = "a.test"\n[federation]\nbundle_endpoint_address = "{HOST}:{a_port}"\n',
        )
        a.start()
        started.append(a)
        bootstrap = tmp / "a-bundle.json"
        bootstrap.write_text(authd("bundle", "show", data_dir=a.data_dir).stdout)
        config = authd_config(policy_file="policy.yaml").replace(
            f'trust_domain = "{TRUST_DOMAIN}"', 'trust_domain = "b.test"'
        )
        config += f"""
[federation]
min_refresh = "1s"
max_refresh = "1s"
[[federation.trust_domains]]
trust_domain = "a.test"
bundle_endpoint_url = "https://{HOST}:{a_port}/"
endpoint_spiffe_id = "spiffe://a.test/authd"
bootstrap_bundle = "{bootstrap}"
"""
        b = start_authd(tmp / "b", config, files={"policy.yaml": POLICY})
        started.append(b)
        b.cli(
            "entry", "create", "--spiffe-id", SERVER, "--selector", "unix:uid:0",
            "--federates-with", "a.test",
        )  # fmt: skip
        b_roots = tmp / "b-roots.pem"
        b_roots.write_text(b.cli("bundle", "show", "--format", "pem").stdout)
        text = render(
            "sidecar-sds.yaml",
            SERVICE="server",
            ACCESS_LOG=tmp / "access.log",
            ADMIN_PORT=0,
            WORKLOAD_SOCKET=b.data_dir / "workload.sock",
            TRUST_DOMAIN="b.test",
            INBOUND_ADDRESS=HOST,
            INBOUND_PORT=0,
            OUTBOUND_PORT=0,
            APP_ADDRESS=HOST,
            APP_PORT=echo.port,
            PEER_ADDRESS=HOST,
            PEER_PORT=9,
            PEER_SPIFFE_ID=ALLOWED,
            PEER_MAX_REQUESTS=1,
            AUTHZ_ADDRESS=HOST,
            AUTHZ_PORT=b.grpc_port,
            POLICY="server",
            JWT_AUDIENCE="",
            SVID_NAME="default",
            BUNDLE_NAME="ALL",
        )
        # The sidecar admits callers of its own trust domain; this one admits any SPIFFE ID
        # its SPIFFE validator accepts (our bundle and the federated ones), and lets the
        # policy decide.
        text = text.replace(
            'matcher: {prefix: "spiffe://b.test/"}', 'matcher: {prefix: "spiffe://"}'
        )
        envoy = start_envoy(text, tmp / "envoy", name="server")
        started.append(envoy)
        yield Federated(tmp, a, b, envoy, b_roots)
    finally:
        for thing in reversed(started):
            thing.stop()  # type: ignore[attr-defined]
        echo.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _minted(daemon: Daemon, spiffe_id: str, out: Path) -> Path:
    authd("x509", "mint", "--spiffe-id", spiffe_id, "--out", str(out), data_dir=daemon.data_dir)
    return out


def test_a_federated_workload_gets_in_exactly_where_the_policy_names_it(
    federated: Federated,
) -> None:
    allowed = _minted(federated.a, ALLOWED, federated.tmp / "allowed")
    other = _minted(federated.a, OTHER, federated.tmp / "other")

    def admitted() -> bool:
        try:
            return federated.call(allowed) == 200
        except (ssl.SSLError, ConnectionError):
            return False  # Envoy has not got a.test's bundle yet

    wait_for("the federated caller to be admitted", admitted, 30)
    assert federated.call(other) == 403  # verified, but the policy does not name it


def test_a_trust_domain_we_do_not_federate_with_is_refused_at_the_handshake(
    federated: Federated,
) -> None:
    stranger = foreign_svid(federated.tmp / "stranger", "spiffe://c.test/web")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        federated.call(stranger)

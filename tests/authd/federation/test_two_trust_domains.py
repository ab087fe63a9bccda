"""Two authd servers, two trust domains, separate processes and data directories, federate
through their SPIFFE bundle endpoints (https_spiffe): each learns and refreshes the other's
bundle, a workload of one receives the other's bundle through py-spiffe, and an endpoint
presenting the wrong identity, or serving another trust domain's bundle, is refused with one
clear log line while the bundle trusted before is kept."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import spiffe
from cryptography import x509

from tests.support.daemon import Daemon, authd
from tests.support.envoy import short_tmpdir
from tests.support.ports import free_port

T = TypeVar("T")
WAIT = 30.0


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _config(name: str, port: int, foreign: list[dict[str, str]]) -> str:
    lines = [
        f'trust_domain = "{name}"',
        "[federation]",
        f'bundle_endpoint_address = "127.0.0.1:{port}"',
        'min_refresh = "1s"',
        'max_refresh = "1s"',
    ]
    for domain in foreign:
        lines.append("[[federation.trust_domains]]")
        lines += [f'{key} = "{value}"' for key, value in domain.items()]
    return "\n".join(lines) + "\n"


def _bundle(data_dir: Path, out: Path) -> str:
    out.write_text(authd("bundle", "show", data_dir=data_dir).stdout)
    return str(out)


def _x509_bundle(socket: Path, trust_domain: str) -> list[x509.Certificate] | None:
    """The foreign bundle as the X.509 bundle stream and the X.509-SVID stream (its
    ``federated_bundles``) both give it; None until both have it, and they must agree.

    The bundle stream is read before and after the SVID stream: when the two reads differ,
    the bundle changed in between (a poll landed) and the answer is None, to be asked again;
    when they are the same, the SVID stream must carry that same bundle."""
    td = spiffe.TrustDomain(trust_domain)
    with spiffe.WorkloadApiClient(socket_path=f"unix://{socket}") as client:
        before = client.fetch_x509_bundles().get_bundle_for_trust_domain(td)
        with_svid = client.fetch_x509_context().x509_bundle_set.get_bundle_for_trust_domain(td)
        after = client.fetch_x509_bundles().get_bundle_for_trust_domain(td)
    if before is None or with_svid is None or after is None:
        return None
    if set(before.x509_authorities) != set(after.x509_authorities):
        return None
    assert set(before.x509_authorities) == set(with_svid.x509_authorities)
    return list(before.x509_authorities)


class Pair:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port_a, self.port_b = free_port(), free_port()
        (root / "a").mkdir()
        (root / "b").mkdir()
        self.a_dir, self.b_dir = root / "a" / "data", root / "b" / "data"
        self.running: list[Daemon] = []

    def start(self, data_dir: Path, config: str) -> Daemon:
        daemon = Daemon(data_dir, config)
        daemon.start()
        self.running.append(daemon)
        return daemon

    def stop(self, daemon: Daemon) -> None:
        daemon.stop()
        self.running.remove(daemon)


@pytest.fixture
def pair() -> Iterator[Pair]:
    root = short_tmpdir()  # Unix socket paths are short
    p = Pair(root)
    yield p
    for daemon in list(p.running):
        daemon.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_two_trust_domains_federate_through_their_bundle_endpoints(pair: Pair) -> None:
    a_url = f"https://127.0.0.1:{pair.port_a}/"
    b_url = f"https://127.0.0.1:{pair.port_b}/"
    # A first, alone, to learn its bundle (an operator hands it to B out of band).
    a = pair.start(pair.a_dir, _config("a.test", pair.port_a, []))
    a_bootstrap = _bundle(pair.a_dir, pair.root / "a-bundle.json")
    b = pair.start(
        pair.b_dir,
        _config(
            "b.test",
            pair.port_b,
            [
                {
                    "trust_domain": "a.test",
                    "bundle_endpoint_url": a_url,
                    "endpoint_spiffe_id": "spiffe://a.test/authd",
                    "bootstrap_bundle": a_bootstrap,
                },
                # A's endpoint, but expected to be someone else: refused at the handshake.
                {
                    "trust_domain": "c.test",
                    "bundle_endpoint_url": a_url,
                    "endpoint_spiffe_id": "spiffe://a.test/not-authd",
                },
                # A's endpoint, the right identity, but it serves a.test's bundle, not d.test's.
                {
                    "trust_domain": "d.test",
                    "bundle_endpoint_url": a_url,
                    "endpoint_spiffe_id": "spiffe://a.test/authd",
                },
            ],
        ),
    )
    b_bootstrap = _bundle(pair.b_dir, pair.root / "b-bundle.json")
    pair.stop(a)
    a = pair.start(
        pair.a_dir,
        _config(
            "a.test",
            pair.port_a,
            [
                {
                    "trust_domain": "b.test",
                    "bundle_endpoint_url": b_url,
                    "endpoint_spiffe_id": "spiffe://b.test/authd",
                    "bootstrap_bundle": b_bootstrap,
                }
            ],
        ),
    )
    uid = str(os.getuid())
    for daemon, name, other in ((a, "a.test", "b.test"), (b, "b.test", "a.test")):
        authd(
            "entry", "create", "--spiffe-id", f"spiffe://{name}/web",
            "--selector", f"unix:uid:{uid}", "--federates-with", other,
            data_dir=daemon.data_dir,
        )  # fmt: skip

    # Each polls the other's endpoint and says so.
    wait_for("B to fetch A's bundle", lambda: "trusting the bundle of a.test from" in b.logs())
    wait_for("A to fetch B's bundle", lambda: "trusting the bundle of b.test from" in a.logs())

    # A workload of B gets A's bundle from B's Workload API, and the other way round.
    a_roots = json.loads(Path(a_bootstrap).read_text())["keys"]
    from_b = wait_for(
        "A's bundle at B", lambda: _x509_bundle(pair.b_dir / "workload.sock", "a.test")
    )
    assert len(from_b) == len([k for k in a_roots if k["use"] == "x509-svid"])
    assert wait_for("B's bundle at A", lambda: _x509_bundle(pair.a_dir / "workload.sock", "b.test"))

    # A's bundle changes (a prepared authority): B learns it at its next poll.
    authd("authority", "prepare", "--kind", "x509", data_dir=pair.a_dir)
    wait_for(
        "B to learn A's new authority",
        lambda: len(_x509_bundle(pair.b_dir / "workload.sock", "a.test") or []) == 2,
    )

    # The wrong identity, and a bundle of another trust domain: one clear line each.
    wrong = wait_for(
        "the wrong identity refused", lambda: _lines(b, "refused the bundle of c.test")
    )
    assert "presented spiffe://a.test/authd, not spiffe://a.test/not-authd" in wrong[0]
    other = wait_for("the other domain refused", lambda: _lines(b, "refused the bundle of d.test"))
    assert "bundle is of trust domain a.test, not d.test" in other[0]
    assert "Traceback" not in b.logs()

    # The CLI shows each foreign trust domain: its sequence, or why it is refused.
    listing = json.loads(authd("bundle", "list", "--json", data_dir=pair.b_dir).stdout)
    federated = {d["trust_domain"]: d for d in listing["federated"]}
    assert listing["trust_domain"] == "b.test"
    assert federated["a.test"]["sequence"] is not None and federated["a.test"]["last_error"] == ""
    assert federated["c.test"]["sequence"] is None
    assert "not spiffe://a.test/not-authd" in federated["c.test"]["last_error"]
    pem = authd(
        "bundle", "show", "--trust-domain", "a.test", "--format", "pem", data_dir=pair.b_dir
    ).stdout
    assert pem.count("BEGIN CERTIFICATE") == 2
    missing = authd("bundle", "show", "--trust-domain", "c.test", data_dir=pair.b_dir, check=False)
    assert missing.returncode == 5 and missing.stderr.startswith("authd: not found:")

    # A goes away: B refuses to go without, and keeps serving the bundle it had.
    pair.stop(a)
    gone = wait_for("A's endpoint missed", lambda: _lines(b, "refused the bundle of a.test"))
    assert "keeping sequence" in gone[-1]
    assert len(_x509_bundle(pair.b_dir / "workload.sock", "a.test") or []) == 2


def _lines(daemon: Daemon, text: str) -> list[str]:
    return [line for line in daemon.logs().splitlines() if text in line]

"""End to end: `authd run` as a real process, driven only through the `authd` CLI."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from cryptography import x509

from authd.cli.errors import Exit
from ca.bundle import TrustBundle
from ca.jwtsvid import verify_jwt_svid
from ca.spiffe_id import TrustDomain
from ca.x509svid import verify_x509_svid
from tests.support.cli_exit import expected_exit
from tests.support.daemon import AUTHD, NOBODY, Daemon, as_uid, authd


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def test_mint_through_cli_and_state_survives_restart(daemon: Daemon, workdir: Path) -> None:
    data = daemon.data_dir
    before = json.loads(authd("ca", "show", "--json", data_dir=data).stdout)
    assert before["trust_domain"] == "example.org"
    assert {(a["kind"], a["state"]) for a in before["authorities"]} == {
        ("x509", "active"),
        ("jwt", "active"),
    }

    out = workdir / "svid"
    authd(
        "x509", "mint", "--spiffe-id", "spiffe://example.org/web", "--dns", "web.local",
        "--ttl", "10m", "--out", str(out), data_dir=data,
    )  # fmt: skip
    assert (out / "svid.key").stat().st_mode & 0o777 == 0o600
    assert "BEGIN PRIVATE KEY" in (out / "svid.key").read_text()  # PKCS#8
    chain = load_chain(out / "svid.pem")
    roots = load_chain(out / "bundle.pem")
    openssl = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "bundle.pem"), str(out / "svid.pem")],
        capture_output=True,
        text=True,
    )
    assert openssl.returncode == 0, openssl.stderr

    token = authd(
        "jwt", "mint", "--spiffe-id", "spiffe://example.org/web", "--audience", "orders",
        data_dir=data,
    ).stdout.strip()  # fmt: skip
    assert token.count(".") == 2
    bundle_json = authd("bundle", "show", data_dir=data).stdout
    pem = authd("bundle", "show", "--format", "pem", data_dir=data).stdout
    assert pem.encode() == (out / "bundle.pem").read_bytes()

    assert daemon.stop() == 0
    daemon.start()

    after = json.loads(authd("ca", "show", "--json", data_dir=data).stdout)
    assert after["authorities"] == before["authorities"]
    assert after["bundle_sequence"] == before["bundle_sequence"]
    assert authd("bundle", "show", data_dir=data).stdout == bundle_json
    # What was issued before the restart still verifies against the bundle after it.
    td = TrustDomain("example.org")
    bundle = TrustBundle.parse(bundle_json, td)
    spiffe_id = verify_x509_svid(
        chain, trust_domain=td, roots=bundle.x509_authorities, now=time.time()
    )
    assert str(spiffe_id) == "spiffe://example.org/web"
    assert roots == list(bundle.x509_authorities)
    jwt_svid = verify_jwt_svid(
        token, trust_domain=td, keys=bundle.jwt_authorities, audience=["orders"], now=time.time()
    )
    assert jwt_svid.audience == ("orders",)


def test_bad_input_gets_one_line_and_nonzero_exit(daemon: Daemon, workdir: Path) -> None:
    data = daemon.data_dir
    cases = {
        ("x509", "mint", "--spiffe-id", "spiffe://Example.org/web", "--out", str(workdir / "x")):
            "trust domain character 'E'",
        ("x509", "mint", "--spiffe-id", "spiffe://other.org/web", "--out", str(workdir / "x")):
            "not in this CA's trust domain",
        ("jwt", "mint", "--spiffe-id", "spiffe://example.org/web", "--audience", "a",
         "--ttl", "2d"): "exceeds the CA's limit",
        ("jwt", "mint", "--spiffe-id", "spiffe://example.org/web", "--audience", "a",
         "--ttl", "soon"): "--ttl",
        ("jwt", "mint", "--spiffe-id", "spiffe://example.org", "--audience", "a"): "no path",
    }  # fmt: skip
    for args, message in cases.items():
        result = authd(*args, data_dir=data, check=False)
        assert message in result.stderr, (args, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert result.returncode == expected_exit(line), (args, line)
    assert not (workdir / "x").exists()
    # Nothing was lost: the CA still serves.
    assert authd("healthcheck", data_dir=data).returncode == 0


def test_cli_without_daemon_says_so(workdir: Path) -> None:
    result = authd("ca", "show", data_dir=workdir / "nothing", check=False)
    assert result.returncode == Exit.UNAVAILABLE
    assert "is `authd run` running" in result.stderr
    healthcheck = authd("healthcheck", data_dir=workdir / "nothing", check=False)
    assert healthcheck.returncode == Exit.UNAVAILABLE


def test_second_daemon_on_same_data_dir_fails_loudly(daemon: Daemon) -> None:
    second = subprocess.run(
        [*AUTHD, "run", "--data-dir", str(daemon.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "another process is serving" in second.stderr
    assert authd("healthcheck", data_dir=daemon.data_dir).returncode == 0


def test_invalid_config_names_the_key(workdir: Path) -> None:
    config = workdir / "authd.toml"
    config.write_text('[ca]\nkey_type = "ec-p521"\n')
    result = subprocess.run(
        [*AUTHD, "run", "--data-dir", str(workdir / "d"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == Exit.INVALID
    assert "ca.key_type" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_admin_api_refuses_non_admin_uid(daemon: Daemon) -> None:
    result = as_uid(NOBODY, ["ca", "show"], daemon.data_dir)
    assert result.returncode == Exit.PERMISSION
    assert "permission denied" in result.stderr
    assert f"uid {NOBODY} is not an authd admin" in result.stderr


def test_admin_api_admits_configured_admin_uid(workdir: Path) -> None:
    running = Daemon(workdir / "data", f"[admin]\nallowed_uids = [{NOBODY}]\n")
    running.start()
    try:
        result = as_uid(NOBODY, ["ca", "show", "--json"], running.data_dir)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["trust_domain"] == "example.org"
    finally:
        running.stop()

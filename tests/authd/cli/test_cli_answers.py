"""The CLI's answers against a running daemon: one word for each kind of failure, one order
for authorities, JSON for scripts, the admin named in the audit log, and a doctor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from authd.cli.errors import Exit
from tests.support.daemon import AUTHD, Daemon, authd, cli_json

TD = "spiffe://example.org"


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="authd-ans-"))  # short: socket paths are limited
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(workdir: Path) -> Iterator[Daemon]:
    running = Daemon(workdir / "data")
    running.start()
    yield running
    if running.process and running.process.poll() is None:
        running.stop()


def failure(daemon: Daemon, *args: str) -> tuple[int, str]:
    result = authd(*args, data_dir=daemon.data_dir, check=False)
    (line,) = result.stderr.strip().splitlines()
    return result.returncode, line


def policy_input(path: Path, token: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "attributes": {
                    "request": {
                        "http": {
                            "method": "GET",
                            "path": "/orders",
                            "host": "api",
                            "headers": {"authorization": f"Bearer {token}"},
                        }
                    }
                }
            }
        )
    )
    return path


def test_an_unknown_target_is_not_found_for_show_and_revoke_alike(daemon: Daemon) -> None:
    assert failure(daemon, "entry", "show", "nope")[0] == Exit.NOT_FOUND
    code, line = failure(daemon, "revoke", "entry", "nope")
    assert (code, line) == (Exit.NOT_FOUND, "authd: not found: no registration entry 'nope'")
    code, line = failure(daemon, "revoke", "serial", "1f")
    assert code == Exit.NOT_FOUND, line
    assert line == "authd: not found: unknown serial 1f: authd never issued it"


def test_svid_list_of_an_unknown_authority_is_not_found(daemon: Daemon) -> None:
    code, line = failure(daemon, "svid", "list", "--authority", "nope")
    assert code == Exit.NOT_FOUND
    assert line.startswith("authd: not found: no authority 'nope'"), line


def test_a_malformed_value_the_daemon_refuses_is_invalid(daemon: Daemon) -> None:
    code, line = failure(daemon, "jwt", "mint", "--spiffe-id", "spiffe://Example.org/x",
                         "--audience", "a")  # fmt: skip
    assert (code, line.startswith("authd: invalid argument: ")) == (Exit.INVALID, True)


def test_authority_steps_are_audited_as_the_admin_who_ran_them(daemon: Daemon) -> None:
    authd("authority", "prepare", "--kind", "jwt", data_dir=daemon.data_dir)
    records = cli_json(daemon, "audit", "log", "--subject", "")
    assert isinstance(records, dict)
    prepared = [r for r in records["records"] if r["action"] == "authority.prepared"]
    assert prepared and prepared[-1]["actor"] == f"admin:uid={os.getuid()}"


def test_ca_show_and_authority_show_list_authorities_in_the_same_order(daemon: Daemon) -> None:
    step = cli_json(daemon, "authority", "prepare", "--kind", "x509")
    assert isinstance(step, dict) and step["authority"]["state"] == "prepared"
    ca = cli_json(daemon, "ca", "show")
    authority = cli_json(daemon, "authority", "show")
    assert isinstance(ca, dict) and isinstance(authority, dict)
    ids = [a["authority_id"] for a in ca["authorities"]]
    assert ids == [a["authority_id"] for a in authority["authorities"]]
    kinds_states = [(a["kind"], a["state"]) for a in ca["authorities"]]
    assert kinds_states[:2] == [("x509", "active"), ("x509", "prepared")]
    text_ca = authd("ca", "show", data_dir=daemon.data_dir).stdout
    text_authority = authd("authority", "show", data_dir=daemon.data_dir).stdout
    assert text_ca.split("X.509 authorities:")[1] == text_authority.split("X.509 authorities:")[1]


def test_mint_revoke_and_audit_verify_print_json(daemon: Daemon, workdir: Path) -> None:
    minted = cli_json(daemon, "x509", "mint", "--spiffe-id", f"{TD}/web",
                      "--out", str(workdir / "web"))  # fmt: skip
    assert isinstance(minted, dict) and Path(minted["svid"]).exists()
    jwt = cli_json(daemon, "jwt", "mint", "--spiffe-id", f"{TD}/web", "--audience", "orders")
    assert isinstance(jwt, dict) and jwt["token"].count(".") == 2
    assert jwt["audience"] == ["orders"]
    revoked = cli_json(daemon, "revoke", "serial", minted["serial"], "--reason", "superseded")
    assert isinstance(revoked, dict) and revoked["revocation"]["reason"] == "superseded"
    verified = cli_json(daemon, "audit", "verify")
    assert isinstance(verified, dict) and verified["intact"] is True and verified["records"] > 0


def test_output_to_a_closed_pipe_ends_quietly_for_daemon_commands(daemon: Daemon) -> None:
    for args in (["entry", "list", "--json"], ["ca", "show"], ["authority", "show", "--json"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = subprocess.run(
                [*AUTHD, *args, "--data-dir", str(daemon.data_dir)],
                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
            )  # fmt: skip
        finally:
            os.close(write_end)
        assert (result.returncode, result.stderr) == (Exit.PIPE_CLOSED, ""), args


def test_a_jwt_svid_for_the_trust_domain_is_accepted_without_configured_audiences(
    daemon: Daemon, workdir: Path
) -> None:
    token = authd("jwt", "mint", "--spiffe-id", f"{TD}/web", "--audience", TD,
                  data_dir=daemon.data_dir).stdout.strip()  # fmt: skip
    request = str(policy_input(workdir / "ok.json", token))
    result = authd("policy", "check", "--input", request, "--config", str(daemon.config),
                   data_dir=daemon.data_dir, check=False)  # fmt: skip
    assert result.returncode == Exit.OK, result.stdout + result.stderr
    assert result.stdout.startswith("ALLOW"), result.stdout
    assert f"workload: {TD}/web" in result.stdout


def test_policy_check_states_its_verdict_once_and_problems_one_per_line(
    daemon: Daemon, workdir: Path
) -> None:
    token = authd("jwt", "mint", "--spiffe-id", f"{TD}/web", "--audience", "elsewhere",
                  data_dir=daemon.data_dir).stdout.strip()  # fmt: skip
    request = str(policy_input(workdir / "no.json", token))
    result = authd("policy", "check", "--input", request, "--config", str(daemon.config),
                   data_dir=daemon.data_dir, check=False)  # fmt: skip
    assert result.returncode == Exit.DENIED, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("DENY "), lines
    assert not any(line.startswith("decision:") or "  decision:" in line for line in lines[1:])
    assert "problems: [" not in result.stdout
    assert any(line.startswith("  problem: jwt_svid: ") for line in lines), lines
    rule = lines[0].split("rule=")[1]
    assert " " not in rule, lines[0]


def test_doctor_reports_one_line_per_check(daemon: Daemon) -> None:
    result = authd("doctor", "--config", str(daemon.config), data_dir=daemon.data_dir,
                   check=False)  # fmt: skip
    assert result.returncode == Exit.OK, result.stdout
    checks = [line.split(":")[0].split(maxsplit=1)[1] for line in result.stdout.splitlines()]
    for name in ("data dir", "admin socket", "daemon", "store", "x509 authority", "clock"):
        assert name in checks, result.stdout
    report = cli_json(daemon, "doctor", "--config", str(daemon.config))
    assert isinstance(report, dict) and report["healthy"] is True


def test_doctor_without_a_daemon_names_the_fix(workdir: Path) -> None:
    result = authd("doctor", data_dir=workdir / "none", check=False)
    assert result.returncode == Exit.FAILED
    assert result.stdout.splitlines()[0].startswith("FAIL  data dir: ")
    assert "-> start `authd run`" in result.stdout


def test_a_start_up_failure_prints_its_cause_without_saying_it_stopped(daemon: Daemon) -> None:
    second = subprocess.run(
        [*AUTHD, "run", "--data-dir", str(daemon.data_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == Exit.FAILED
    assert "authd stopped" not in second.stderr, second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("authd: ") and "another process is serving" in last, second.stderr

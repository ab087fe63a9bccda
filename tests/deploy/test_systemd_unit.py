"""The shipped systemd unit: sandboxed, yet able to attest workloads and serve its sockets.

The unit is also verified and its exposure score checked with ``systemd-analyze`` (Debian's
``systemd`` package, which the README lists beside redis-server and openssl).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "authd.service"
CONFIG = REPO / "deploy" / "authd.toml"
# ext_authz gRPC, HTTP and gRPC Unix socket, metrics, admin socket and mTLS, Workload API/SDS.
LISTENERS = 7
MAX_EXPOSURE = 3.0


def settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, by key, in order (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def setting(key: str) -> str:
    values = settings().get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def test_unit_sends_sighup_to_reload_the_policy() -> None:
    assert setting("ExecReload") == "/bin/kill -HUP $MAINPID"


def test_unit_file_limit_covers_every_listener_at_max_connections() -> None:
    max_connections = tomllib.loads(CONFIG.read_text())["limits"]["max_connections"]
    # Two descriptors per client behind the peer-credential gateway, and room for the rest.
    assert int(setting("LimitNOFILE")) >= 2 * max_connections * LISTENERS + 1024


def test_unit_writes_only_its_state_directory() -> None:
    assert setting("ProtectSystem") == "strict"
    assert setting("ReadWritePaths") == "/var/lib/authd"
    assert setting("StateDirectory") == "authd"
    for flag in ("PrivateTmp", "NoNewPrivileges", "PrivateDevices", "ProtectKernelTunables"):
        assert setting(flag) == "true", flag


def test_unit_keeps_other_processes_visible_for_attestation() -> None:
    found = settings()
    assert found.get("ProtectProc", ["default"]) == ["default"]
    assert found.get("ProcSubset", ["all"]) == ["all"]
    # Private users would make the kernel report every caller's uid as nobody.
    assert found.get("PrivateUsers", ["false"]) == ["false"]
    assert "User" not in found and "DynamicUser" not in found
    capabilities = set(setting("CapabilityBoundingSet").split())
    assert capabilities == {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_CHOWN"}
    assert "AF_UNIX" in setting("RestrictAddressFamilies").split()
    # Hashing a caller's binary reads it, wherever it lives.
    assert setting("ProtectHome") == "read-only"


def expand_syscalls(analyze: str, words: list[str]) -> set[str]:
    """System call names, with each ``@group`` (and the groups it holds) expanded by
    ``systemd-analyze syscall-filter``."""
    names: set[str] = set()
    for word in words:
        if not word.startswith("@"):
            names.add(word)
            continue
        listing = subprocess.run(
            [analyze, "syscall-filter", word], capture_output=True, text=True, check=True
        ).stdout.splitlines()[1:]  # the first line is the group's own name
        members = [line.strip() for line in listing if line.strip()]
        names |= expand_syscalls(analyze, [m for m in members if not m.startswith("#")])
    return names


def test_unit_lets_the_rego_workers_set_themselves_apart() -> None:
    """The SystemCallFilter lines merged as systemd merges them (the first, an allow list,
    sets the mode; each later ``~`` line removes, each later plain line adds back): the
    workers' priority and CPU calls (authd.policy.rego_offload) stay allowed."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: apt-get install systemd"
    allowed: set[str] = set()
    for value in settings()["SystemCallFilter"]:
        if value.startswith("~"):
            allowed -= expand_syscalls(analyze, value[1:].split())
        else:
            allowed |= expand_syscalls(analyze, value.split())
    assert "mount" not in allowed and "setrlimit" not in allowed  # still a tight filter
    assert {"setpriority", "sched_setaffinity", "sched_setscheduler"} <= allowed


def analyzable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's ``authd``, so verify finds it."""
    authd = Path(sys.executable).parent / "authd"
    assert authd.exists(), f"{authd}: install the project (pip install -e '.[test]')"
    unit = tmp_path / "authd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/authd", str(authd)))
    return unit


@pytest.mark.parametrize("check", ["verify", "security"])
def test_unit_passes_systemd_analyze(tmp_path: Path, check: str) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: apt-get install systemd"
    unit = analyzable_unit(tmp_path)
    if check == "verify":
        done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr
        return
    done = subprocess.run(
        [analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True
    )
    match = re.search(r"Overall exposure level for authd\.service: ([0-9.]+)", done.stdout)
    assert match is not None, done.stdout + done.stderr
    assert float(match.group(1)) < MAX_EXPOSURE, done.stdout

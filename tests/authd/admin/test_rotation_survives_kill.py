"""A rotating daemon killed (SIGKILL) during or right after a rotation step leaves the step
whole and audited.

A real ``authd run`` on SQLite with a short ``ca.ca_ttl`` (so the clock rotates too) is driven
with ``authd authority prepare/activate``; the daemon is killed as soon as the Nth write after
the request shows in SQLite's write-ahead log (or once the CLI has its answer, if the step
wrote less), so kills land between a step's writes if it makes several. Then, with the daemon
gone, the store
is read directly: every authority it holds has the audit record of its state, every authority
gone was audited as pruned, the chain verifies, and a step the CLI reported done is stored.
The daemon then starts again on that state (it needs the keys of its active authorities).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.audit import verify_chain
from ca.store import SQLiteStore
from tests.support.daemon import AUTHD, Daemon

CONFIG = """\
trust_domain = "example.org"
[ca]
ca_ttl = "2m"
x509_svid_ttl = "30s"
jwt_svid_ttl = "30s"
rotation_check_interval = "1s"
[workload]
enabled = false
"""
STEPS = (("prepare", "x509"), ("activate", "x509"), ("prepare", "jwt"), ("activate", "jwt"))
DONE = re.compile(r"^(Prepared|Activated) (x509|jwt) authority (\S+); bundle sequence (\d+)$")


def _assert_whole_and_audited(store_path: Path) -> dict[str, str]:
    """Check the store the killed daemon left; its authorities' states by id."""
    with SQLiteStore(store_path) as store:
        records = store.list_audit()
        authorities = {r.authority_id: r.state for r in store.list_authorities()}
    verdict = verify_chain(records)
    assert verdict.intact, verdict.problem
    last_action = {r.subject: r.action for r in records if r.action.startswith("authority.")}
    for authority_id, state in authorities.items():
        assert last_action.get(authority_id) == f"authority.{state}", authority_id
    for subject, action in last_action.items():
        if subject not in authorities:
            assert action == "authority.pruned", subject
    return authorities


def _wal_state(wal: Path) -> tuple[int, int]:
    try:
        stat = wal.stat()
    except FileNotFoundError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


def _kill_at_write(daemon: Daemon, step: subprocess.Popen[str], wal: Path, n: int) -> None:
    """SIGKILL the daemon once ``wal`` changed ``n`` times, or once ``step`` has exited."""
    assert daemon.process is not None
    seen, changes = _wal_state(wal), 0
    while changes < n and step.poll() is None:
        state = _wal_state(wal)
        if state != seen:
            seen, changes = state, changes + 1
        else:
            time.sleep(0)  # yield only: the kill must follow the write closely
    daemon.process.kill()
    daemon.process.wait(timeout=30)
    daemon.log.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="authd-kill-"))  # short: Unix socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("kill_at_write", [1, 2, 3])
def test_a_daemon_killed_at_each_rotation_step_leaves_every_step_whole_and_audited(
    workdir: Path, kill_at_write: int
) -> None:
    (workdir / "data").mkdir()
    daemon = Daemon(workdir / "data", CONFIG)
    store_path = workdir / "data" / "authd.db"
    reported: list[tuple[str, str]] = []
    for action, kind in STEPS:
        daemon.start()
        step = subprocess.Popen(
            [*AUTHD, "authority", action, "--kind", kind, "--data-dir", str(daemon.data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _kill_at_write(daemon, step, store_path.with_name("authd.db-wal"), kill_at_write)
        out, _ = step.communicate(timeout=60)
        authorities = _assert_whole_and_audited(store_path)
        done = DONE.match(out.strip())
        if step.returncode == 0:
            assert done is not None, out
            authority_id = done.group(3)
            reported.append((action, authority_id))
            assert authority_id in authorities  # too young to be pruned
    daemon.start()  # the state every kill left is one the daemon starts from
    assert daemon.stop() == 0
    authorities = _assert_whole_and_audited(store_path)
    for _, authority_id in reported:
        assert authority_id in authorities

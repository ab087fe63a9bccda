"""A data directory whose SQLite store was replaced while authd was stopped (an older copy
restored, or a new empty file): authd starts, but never trusts it. ext_authz fails closed
(503) from the first check, no authority is made over it, the gauge and `authd store show`
say why, and `authd store reseed` explains that only a restore can repair an embedded store;
`authd store accept` with the store's head adopts an older copy as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.daemon import authd
from tests.support.store_replicas import ALLOW_WORKLOADS_POLICY, TD, Replica, check

DB_FILES = ("authd.db", "authd.db-wal", "authd.db-shm")


def copy_db(source: Path, target: Path) -> None:
    target.mkdir(exist_ok=True)
    for name in DB_FILES:
        (target / name).unlink(missing_ok=True)
        if (source / name).exists():
            shutil.copy(source / name, target / name)


@pytest.mark.parametrize("replaced_by", ["an-older-copy", "a-new-file"])
def test_a_replaced_sqlite_store_is_never_trusted(workdir: Path, replaced_by: str) -> None:
    (workdir / "policy.yaml").write_text(ALLOW_WORKLOADS_POLICY)
    daemon = Replica(workdir, "solo", "sqlite://authd.db", rotates=True, max_staleness=30)
    daemon.start()
    try:
        daemon.stop()
        copy_db(daemon.data_dir, workdir / "old")
        daemon.start()
        revoked = daemon.token(f"{TD}/web")
        allowed = daemon.token(f"{TD}/billing")
        daemon.cli("revoke", "spiffe-id", f"{TD}/web", "--reason", "key-compromise")
        assert check(daemon, revoked) == (401, "revoked")
        assert check(daemon, allowed) == (200, "allowed")
        bundle = daemon.cli("bundle", "show")
        daemon.stop()

        if replaced_by == "an-older-copy":
            copy_db(workdir / "old", daemon.data_dir)
        else:
            for name in DB_FILES:
                (daemon.data_dir / name).unlink(missing_ok=True)
        daemon.start()

        assert check(daemon, revoked) == (503, "store_regressed")
        assert check(daemon, allowed) == (503, "store_regressed")
        assert daemon.gauge("authd_store_regressed") == 1
        state = daemon.store_state()
        assert state["regressed"] is True
        if replaced_by == "a-new-file":
            assert "generation" in str(state["reason"])
            # No authority was made over the new file: the bundle is empty.
            assert json.loads(daemon.cli("bundle", "show"))["keys"] == []
        else:
            assert "behind" in str(state["reason"])
            assert daemon.cli("bundle", "show") == bundle  # the copy's own authorities
        refused = authd("store", "reseed", data_dir=daemon.data_dir, check=False)
        assert refused.returncode == 1 and "authd store restore" in refused.stderr
        assert "store regression" in daemon.logs()
        if replaced_by == "an-older-copy":
            # The operator accepts the older copy, and the revocation it lacks is lost.
            found = state["found"]
            assert isinstance(found, dict)
            wrong = authd("store", "accept", "--audit-hash", "f" * 64, data_dir=daemon.data_dir,
                          check=False)  # fmt: skip
            assert wrong.returncode == 1 and "store not accepted" in wrong.stderr
            daemon.cli("store", "accept", "--audit-hash", str(found["audit_hash"]))
            assert daemon.store_state()["regressed"] is False
            assert daemon.gauge("authd_store_regressed") == 0
            assert check(daemon, allowed) == (200, "allowed")
            assert check(daemon, revoked) == (200, "allowed")
    finally:
        if daemon.running:
            daemon.stop()

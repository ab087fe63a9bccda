"""`authd store restore` under two `authd run` replicas on one Redis: a restore is a
deliberate regression, and only the replica it ran on adopts it without being told.

Replica r1 rotates, r2 follows. The rules:

- a restore that loses nothing any replica saw (Redis came back empty; the backup is at the
  replicas' last position) needs no ``--force`` and both replicas take it up by themselves;
- a restore onto a store ahead of the backup is refused until ``--force``; then r1 (where it
  ran) adopts it, while r2, which saw the lost revocation, reports a store regression, keeps
  deciding from its last view (the lost revocation still denies there), and takes the store
  up only when the operator runs ``authd store accept --audit-hash H`` on it (a wrong hash is
  refused); the bundle never changes, and the audit chain verifies on both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import authd
from tests.support.store_replicas import (
    TD,
    Replica,
    ReplicaPair,
    check,
    replica_pair,
    wait_for,
)

MAX_STALENESS = 60  # seconds: long enough that a regressed replica decides from its last view


@pytest.fixture
def group(workdir: Path) -> Iterator[ReplicaPair]:
    with replica_pair(workdir, MAX_STALENESS) as pair:
        yield pair


def revoke_everywhere(group: ReplicaPair, target: str, token: str) -> None:
    group.r1.cli("revoke", "spiffe-id", f"{TD}/{target}", "--reason", "key-compromise")
    for replica in group.both:
        wait_for(f"{replica.name} to deny {target}", lambda r=replica: check(r, token)[0] == 401)


def regressed(replica: Replica) -> bool:
    return bool(replica.store_state()["regressed"])


def test_a_restore_that_loses_nothing_is_taken_up_by_every_replica(
    group: ReplicaPair, workdir: Path
) -> None:
    r1, redis = group.r1, group.redis
    stolen = r1.token(f"{TD}/stolen")
    revoke_everywhere(group, "stolen", stolen)
    bundle = r1.cli("bundle", "show")
    backup = workdir / "authd.backup"
    r1.cli("store", "backup", str(backup))

    redis.crash()
    redis.restart_from(None)  # back empty
    for replica in group.both:
        wait_for(f"{replica.name} to see the regression", lambda r=replica: regressed(r))
    restored = json.loads(r1.cli("store", "restore", str(backup), "--json"))
    assert restored["forced"] is False
    for replica in group.both:
        wait_for(f"{replica.name} in step again", lambda r=replica: not regressed(r))
        assert check(replica, stolen) == (401, "revoked")
        assert replica.cli("bundle", "show") == bundle
        assert replica.cli("audit", "verify").startswith("audit log intact")


def test_a_forced_restore_is_adopted_elsewhere_only_when_the_operator_accepts_it(
    group: ReplicaPair, workdir: Path
) -> None:
    r1, r2 = group.r1, group.r2
    stolen, later = r1.token(f"{TD}/stolen"), r1.token(f"{TD}/later")
    revoke_everywhere(group, "stolen", stolen)
    bundle = r1.cli("bundle", "show")
    backup = workdir / "authd.backup"
    r1.cli("store", "backup", str(backup))
    revoke_everywhere(group, "later", later)

    refused = authd("store", "restore", str(backup), data_dir=r1.data_dir, check=False)
    assert refused.returncode == 1
    assert "ahead of the backup's record" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    restored = json.loads(r1.cli("store", "restore", str(backup), "--force", "--json"))
    assert restored["forced"] is True
    head = restored["position"]["audit_hash"]
    # r1, where it ran, adopts the store: the revocation made after the backup is gone.
    assert not regressed(r1)
    wait_for("r1 to follow the restored store", lambda: check(r1, later) == (200, "allowed"))
    assert check(r1, stolen) == (401, "revoked")

    # r2 saw that revocation: the store is behind it, and it says so.
    wait_for("r2 to see the regression", lambda: regressed(r2))
    assert r2.gauge("authd_store_regressed") == 1
    assert [check(r2, t)[0] for t in (stolen, later)] == [401, 401]

    wrong = authd("store", "accept", "--audit-hash", "0" * 64, data_dir=r2.data_dir, check=False)
    assert wrong.returncode == 1 and "store not accepted" in wrong.stderr
    assert regressed(r2)
    accepted = json.loads(r2.cli("store", "accept", "--audit-hash", head, "--json"))
    assert accepted["adopted"]["audit_hash"] == head
    assert accepted["previous"]["audit_seq"] == restored["position"]["audit_seq"]
    wait_for("r2 in step", lambda: not regressed(r2) and r2.gauge("authd_store_regressed") == 0)
    wait_for("r2 to take up the store", lambda: check(r2, later) == (200, "allowed"))
    assert check(r2, stolen) == (401, "revoked")

    for replica in group.both:
        assert replica.cli("bundle", "show") == bundle
        assert replica.cli("audit", "verify").startswith("audit log intact")
    # A change after the accept reaches both: they follow the store again.
    revoke_everywhere(group, "later", later)

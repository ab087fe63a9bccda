"""Two `authd run` replicas on one Redis that loses data: the store is never trusted again
until it is repaired, and the repair puts back everything acknowledged.

Replica r1 rotates (holds the CA keys), r2 follows. Revocations are made one after another;
each is acknowledged once both replicas deny it. Redis is then killed and comes back either
empty (RDB-only persistence after a crash with no snapshot, a wiped or replaced server) or
from a snapshot older than the last revocations. The rules: no identity revoked and
acknowledged is allowed at any moment on any replica; revocations made on the regressed
store still reach both replicas; the rotating replica makes no new authorities, so the bundle
is unchanged; a replica restarted meanwhile fails closed (503) instead of starting fresh;
`authd store reseed` writes back every acknowledged revocation, the authorities and the
audit chain under the original generation, after which both replicas are in step again,
allow what is not revoked, and `authd audit verify` passes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.daemon import authd
from tests.support.redis_server import RedisServer
from tests.support.store_replicas import (
    ALLOW_WORKLOADS_POLICY,
    TD,
    Replica,
    ReplicaPair,
    check,
    replica_pair,
    wait_for,
)

MAX_STALENESS = 60  # seconds: long enough that the replicas decide from their last view


@pytest.fixture
def group(workdir: Path) -> Iterator[ReplicaPair]:
    with replica_pair(workdir, MAX_STALENESS) as pair:
        yield pair


@dataclass
class Watch:
    """Checks every enforced revocation on every replica, over and over, in a thread."""

    group: ReplicaPair
    tokens: dict[str, str]
    enforced: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    rounds: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for replica in self.group.both:
                for target in sorted(self.enforced):
                    try:
                        status, _ = check(replica, self.tokens[target])
                    except OSError:
                        continue  # a replica being restarted
                    if status == 200:
                        self.violations.append(f"{replica.name} allowed revoked {target}")
            self.rounds += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def revoke_everywhere(group: ReplicaPair, via: Replica, target: str, watch: Watch) -> None:
    """Revoke ``target`` on ``via``; once both replicas deny it, it is enforced."""
    via.cli("revoke", "spiffe-id", f"{TD}/{target}", "--reason", "key-compromise")
    for replica in group.both:
        wait_for(
            f"{replica.name} to deny {target}",
            lambda r=replica: check(r, watch.tokens[target])[0] != 200,
        )
    watch.enforced.add(target)


@pytest.mark.parametrize("comes_back", ["empty", "from-an-older-snapshot"])
def test_a_store_that_went_backwards_is_never_trusted_and_reseed_repairs_it(
    group: ReplicaPair, comes_back: str
) -> None:
    r1, r2, redis = group.r1, group.r2, group.redis
    names = ["billing", "web", *(f"rev-{n}" for n in range(6))]
    tokens = {name: r1.token(f"{TD}/{name}") for name in names}
    bundle = r1.cli("bundle", "show")
    authorities = json.loads(r1.cli("ca", "show", "--json"))["authorities"]
    assert [check(r, tokens["billing"]) for r in group.both] == [(200, "allowed")] * 2
    snapshot = redis.save_snapshot() if comes_back == "from-an-older-snapshot" else None

    watch = Watch(group, tokens)
    try:
        revoke_everywhere(group, r2, "web", watch)
        for n in range(3):
            revoke_everywhere(group, group.both[n % 2], f"rev-{n}", watch)

        redis.crash()
        redis.restart_from(snapshot)
        restarted = time.monotonic()
        for replica in group.both:
            wait_for(
                f"{replica.name} to see the regression",
                lambda r=replica: r.gauge("authd_store_regressed") == 1,
            )
        print(f"regression seen on both replicas {time.monotonic() - restarted:.3f}s after restart")
        # Deciding from the last view: what it allowed it still allows, nothing revoked.
        assert [check(r, tokens["billing"]) for r in group.both] == [(200, "allowed")] * 2
        # Revocations made on the regressed store still reach every replica.
        revoke_everywhere(group, r2, "rev-3", watch)
        revoke_everywhere(group, r1, "rev-4", watch)
        # The rotating replica made no authorities over the store that lost them.
        assert [r.cli("bundle", "show") for r in group.both] == [bundle, bundle]
        with redis.client() as client:
            stored = client.hkeys("{authd}:authorities")
        assert set(stored) <= {a["authority_id"] for a in authorities}
        state = r1.store_state()
        assert state["regressed"] is True and state["reason"]

        # A replica restarted on the regressed store fails closed instead of starting fresh.
        r2.stop()
        r2.start()
        assert check(r2, tokens["billing"]) == (503, "store_regressed")
        assert r2.gauge("authd_store_regressed") == 1

        # The repair: r1 writes back what it holds.
        started = time.monotonic()
        assert "store reseeded" in r1.cli("store", "reseed")
        print(f"authd store reseed took {time.monotonic() - started:.3f}s")
        for replica in group.both:
            wait_for(
                f"{replica.name} to be in step again",
                lambda r=replica: (
                    r.gauge("authd_store_regressed") == 0
                    and check(r, tokens["billing"]) == (200, "allowed")
                ),
            )
        revoke_everywhere(group, r2, "rev-5", watch)
        assert watch.rounds > 0
    finally:
        watch.stop()
    assert watch.violations == []

    acknowledged = {f"{TD}/{name}" for name in watch.enforced}
    assert len(acknowledged) == 7
    for replica in group.both:
        assert acknowledged <= replica.revoked_targets(), replica.name
        for name in watch.enforced:
            assert check(replica, tokens[name]) == (401, "revoked"), (replica.name, name)
        assert replica.cli("bundle", "show") == bundle
        shown = json.loads(replica.cli("ca", "show", "--json"))["authorities"]
        assert shown == authorities
        assert replica.cli("audit", "verify").startswith("audit log intact")
    reseeded = [
        r for r in json.loads(r1.cli("audit", "log", "--json"))["records"]
        if r["action"] == "store.reseeded"
    ]  # fmt: skip
    assert len(reseeded) == 1


def test_reseed_is_refused_while_the_store_is_in_step(group: ReplicaPair) -> None:
    result = authd("store", "reseed", data_dir=group.r1.data_dir, check=False)
    assert result.returncode == 1 and "nothing to reseed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert group.r1.store_state()["regressed"] is False


def test_with_auto_reseed_the_rotating_replica_repairs_the_store_itself(workdir: Path) -> None:
    (workdir / "policy.yaml").write_text(ALLOW_WORKLOADS_POLICY)
    redis = RedisServer(workdir / "redis").start()
    r1 = Replica(
        workdir,
        "r1",
        redis.url,
        rotates=True,
        max_staleness=MAX_STALENESS,
        extra_store_config="auto_reseed = true\n",
    )
    r2 = Replica(workdir, "r2", redis.url, rotates=False, max_staleness=MAX_STALENESS)
    try:
        r1.start()
        r2.start()
        revoked, allowed = r1.token(f"{TD}/web"), r1.token(f"{TD}/billing")
        r2.cli("revoke", "spiffe-id", f"{TD}/web", "--reason", "key-compromise")
        for replica in (r1, r2):
            wait_for(f"{replica.name} to deny", lambda r=replica: check(r, revoked)[0] == 401)
        redis.crash()
        redis.restart_from(None)
        for replica in (r1, r2):
            wait_for(
                f"{replica.name} to be in step with the repaired store",
                lambda r=replica: (
                    f"{TD}/web" in r.revoked_targets() and r.gauge("authd_store_regressed") == 0
                ),
            )
            assert check(replica, revoked) == (401, "revoked")
            assert check(replica, allowed) == (200, "allowed")
        assert r1.cli("audit", "verify").startswith("audit log intact")
        assert "store reseeded by authd" in r1.logs()
    finally:
        for replica in (r1, r2):
            if replica.running:
                replica.stop()
        redis.stop()

"""``store.durability`` against real redis-server processes (and SQLite's pragma).

A write is acknowledged only once it is as durable as configured: the start-up check refuses
a Redis whose persistence cannot give it, ``replicas`` waits for real replicas (``WAIT``), and
a write they do not acknowledge in time fails with ``NotDurable`` instead of succeeding.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ca.store import NotDurable, RedisStore, Revocation, SQLiteStore, StoreError
from ca.store.durability import Durability, Persistence, sqlite_synchronous, verdict
from ca.store.durability_check import durability_shortfall
from ca.store.redis.keys import KeyLayout
from tests.support.redis_server import HOST, RedisServer

LOCAL = Durability("local")
ONE_REPLICA = Durability("replicas", replicas=1, timeout=5)
SERVICE = "mymaster"


def revocation(target: str) -> Revocation:
    return Revocation("serial", target, 1, "", 1_700_000_000, "test")


def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def master_and_replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer(tmp_path / "master") as master:
        assert master.port is not None
        with RedisServer(tmp_path / "replica", replica_of=master.port) as replica:
            master.wait_for_replicas(1)
            yield master, replica


# -- the start-up check ----------------------------------------------------------------------


def test_local_durability_refuses_an_rdb_only_redis(tmp_path: Path) -> None:
    with RedisServer(tmp_path, appendonly=False, extra_args=["--save", "60 1"]) as server:
        missing = durability_shortfall(server.url, LOCAL)
    assert missing is not None
    assert missing.startswith(f"redis store redis://{HOST}:{server.port}/0: store.durability")
    assert "appendonly is off" in missing


def test_local_durability_refuses_an_aof_fsynced_every_second(tmp_path: Path) -> None:
    with RedisServer(tmp_path, appendfsync="everysec") as server:
        missing = durability_shortfall(server.url, LOCAL)
    assert missing is not None and "appendfsync is everysec, not always" in missing


def test_local_durability_accepts_an_aof_fsynced_always(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        assert durability_shortfall(server.url, LOCAL) is None


def test_no_durability_accepts_any_redis(tmp_path: Path) -> None:
    with RedisServer(tmp_path, appendonly=False) as server:
        assert durability_shortfall(server.url, Durability("none")) is None


def test_persistence_is_read_from_info_when_config_is_renamed_away(tmp_path: Path) -> None:
    with RedisServer(tmp_path, extra_args=["--rename-command", "CONFIG", ""]) as server:
        missing = durability_shortfall(server.url, LOCAL)
    # INFO shows the append-only file is on, but never its fsync policy: not proven, refused.
    assert missing is not None
    assert "appendonly" not in missing
    assert "appendfsync is unknown (CONFIG GET is not allowed)" in missing


def test_an_rdb_only_redis_is_reported_from_info_when_config_is_renamed_away(
    tmp_path: Path,
) -> None:
    args = ["--rename-command", "CONFIG", ""]
    with RedisServer(tmp_path, appendonly=False, extra_args=args) as server:
        missing = durability_shortfall(server.url, LOCAL)
    assert missing is not None and "appendonly is off" in missing


def test_replicas_durability_refuses_a_redis_without_enough_replicas(
    master_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    master, _ = master_and_replica
    assert durability_shortfall(master.url, ONE_REPLICA) is None
    missing = durability_shortfall(master.url, Durability("replicas", replicas=2))
    assert missing is not None and "1 replica(s) connected, 2 needed" in missing


def test_the_check_refuses_a_replica_as_the_store(
    master_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    _, replica = master_and_replica
    missing = durability_shortfall(replica.url, LOCAL)
    assert missing is not None and "it is a slave, not a master" in missing


def test_an_unreachable_redis_is_a_store_error_not_a_verdict(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    url = server.url
    server.stop()
    with pytest.raises(StoreError, match="cannot reach redis store"):
        durability_shortfall(url, LOCAL)


def test_sqlite_cannot_give_replicas_durability(tmp_path: Path) -> None:
    missing = durability_shortfall(f"sqlite://{tmp_path}/a.db", ONE_REPLICA)
    assert missing is not None and "needs a Redis store" in missing
    assert durability_shortfall(f"sqlite://{tmp_path}/a.db", LOCAL) is None


def test_the_verdict_lists_everything_missing_at_once() -> None:
    persistence = Persistence(appendonly=False, appendfsync="no", connected_replicas=0)
    missing = verdict(ONE_REPLICA, persistence)
    assert missing is not None
    assert "appendonly is off" in missing and "0 replica(s) connected, 1 needed" in missing


# -- SQLite's pragma -------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "pragma"), [("none", 1), ("local", 2)])
def test_sqlite_syncs_every_commit_under_local_durability(
    tmp_path: Path, level: str, pragma: int
) -> None:
    assert sqlite_synchronous(Durability(level)) == {1: "NORMAL", 2: "FULL"}[pragma]
    # The pragma is per connection: ask the store's own.
    store = SQLiteStore(tmp_path / "a.db", durability=Durability(level))
    with store, store._connection() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == pragma


def test_sqlite_store_defaults_to_local_durability(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "a.db") as store, store._connection() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


# -- waiting for replicas after each write ---------------------------------------------------


def test_replicas_durability_acknowledges_a_write_its_replica_holds(
    master_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = master_and_replica
    keys = prefix()
    with RedisStore(master.url, key_prefix=keys, durability=ONE_REPLICA) as store:
        store.add_revocation(revocation("0a"))
    # Acknowledged means the replica already has it: no polling needed.
    assert replica.client().exists(KeyLayout(keys).revocation("serial", "0a")) == 1


def test_replicas_durability_times_out_into_not_durable_without_a_reachable_replica(
    master_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = master_and_replica
    keys = prefix()
    durability = Durability("replicas", replicas=1, timeout=1)
    with RedisStore(master.url, key_prefix=keys, durability=durability) as store:
        replica.freeze()
        try:
            with pytest.raises(NotDurable) as refused:
                store.add_revocation(revocation("0b"))
        finally:
            replica.thaw()
        message = str(refused.value)
        assert message.startswith(f"redis store redis://{HOST}:{master.port}/0:")
        assert "only 0 of 1 replica(s) acknowledged it within 1s" in message
        assert "may still be there" in message
        # Not acknowledged, yet applied on the master, as the message says.
        assert store.get_revocation("serial", "0b").target == "0b"


def test_two_replicas_needed_but_one_connected_is_never_acknowledged(
    master_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    master, _ = master_and_replica
    durability = Durability("replicas", replicas=2, timeout=1)
    store = RedisStore(master.url, key_prefix=prefix(), durability=durability)
    with store, pytest.raises(NotDurable, match="only 1 of 2 replica"):
        store.add_revocation(revocation("0c"))


def test_a_wait_longer_than_the_socket_timeout_is_sliced_not_a_timeout(
    master_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = master_and_replica
    durability = Durability("replicas", replicas=1, timeout=2)
    url = f"{master.url}?socket_timeout=1"  # each WAIT slice is 0.5 s, below it
    with RedisStore(url, key_prefix=prefix(), durability=durability) as store:
        replica.freeze()
        try:
            with pytest.raises(NotDurable, match="within 2s"):
                store.add_revocation(revocation("0d"))
        finally:
            replica.thaw()


# -- a Sentinel failover under load ----------------------------------------------------------


def _sentinel_knows_a_replica(sentinel: RedisServer) -> bool:
    client = sentinel.client()
    try:
        replicas = client.sentinel_slaves(SERVICE)  # type: ignore[no-untyped-call,unused-ignore]
    finally:
        client.close()
    return any(
        replica.get("is_slave")
        and not replica.get("is_disconnected")
        and replica.get("master-link-status") == "ok"
        for replica in replicas
    )


def _master_port(sentinel: RedisServer) -> int:
    client = sentinel.client()
    try:
        _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
    finally:
        client.close()
    return int(port)


def _until(condition: object, what: str, timeout: float = 30.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_revocation_acknowledged_during_a_sentinel_failover_is_on_the_new_master(
    tmp_path: Path,
) -> None:
    total = 1000
    with (
        RedisServer(tmp_path / "a") as first,
        RedisServer(tmp_path / "b", replica_of=first.port) as second,
    ):
        assert first.port is not None and second.port is not None
        first.wait_for_replicas(1)
        with RedisServer(tmp_path / "sentinel", sentinel_of=(SERVICE, first.port)) as sentinel:
            _until(lambda: _sentinel_knows_a_replica(sentinel), "Sentinel to find the replica")
            url = f"redis+sentinel://{HOST}:{sentinel.port}/{SERVICE}/0"
            keys = prefix()
            acknowledged: list[str] = []
            refused: list[str] = []
            failed_over = threading.Event()

            def failover() -> None:
                client = sentinel.client()
                try:
                    for _ in range(100):  # bounded: Sentinel may not be ready on the first ask
                        try:
                            client.execute_command("SENTINEL", "FAILOVER", SERVICE)
                            return
                        except redis.ResponseError:
                            time.sleep(0.1)
                finally:
                    client.close()
                    failed_over.set()

            with RedisStore(url, key_prefix=keys, durability=ONE_REPLICA) as store:
                for n in range(total):
                    target = f"{n:04x}"
                    if n == total // 5:
                        threading.Thread(target=failover, daemon=True).start()
                    if n == total // 2:  # the second half is written to the promoted master
                        _until(lambda: _master_port(sentinel) == second.port, "the promotion")
                    try:
                        store.add_revocation(revocation(target))
                    except StoreError:
                        refused.append(target)  # not acknowledged: the caller would retry
                    else:
                        acknowledged.append(target)
            assert failed_over.wait(30)
            assert second.role() == "master"
            with RedisStore(second.url, key_prefix=keys) as survivor:
                present = {r.target for r in survivor.list_revocations("serial")}
    print(f"acknowledged {len(acknowledged)}, refused {len(refused)} during the failover")
    assert len(acknowledged) > total // 2
    assert not set(acknowledged) - present

"""`authd run` and ``store.durability``: the start-up check, its override, and a revocation the
replicas never acknowledged reaching the admin as UNAVAILABLE, never as success."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from authd.cli.errors import Exit
from authd.config.errors import ConfigError
from authd.config.loader import load_config
from tests.support.daemon import AUTHD, Daemon, authd
from tests.support.redis_server import RedisServer


def store_section(url: str, **keys: str) -> str:
    lines = [f'{key} = "{value}"' for key, value in keys.items()]
    return "\n".join(['trust_domain = "example.org"', "[store]", f'url = "{url}"', *lines]) + "\n"


def test_authd_run_refuses_an_rdb_only_redis_in_one_line(workdir: Path) -> None:
    with RedisServer(workdir / "redis", appendonly=False) as redis:
        daemon = Daemon(workdir / "data", store_section(redis.url))
        (workdir / "data").mkdir()
        result = subprocess.run(
            [*AUTHD, "run", "--data-dir", str(daemon.data_dir), "--config", str(daemon.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # Refused before anything was written to the store.
        assert redis.client().dbsize() == 0
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("authd: ")]
    assert len(lines) == 1, result.stderr  # the one error line; the rest is the log
    assert lines[0].startswith(f"authd: redis store {redis.url}: store.durability = local needs")
    assert "appendonly is off" in lines[0]
    assert "store.allow_weak_durability = true" in lines[0]


def test_allow_weak_durability_starts_with_a_warning(workdir: Path) -> None:
    with RedisServer(workdir / "redis", appendfsync="everysec") as redis:
        config = store_section(redis.url) + "allow_weak_durability = true\n"
        daemon = Daemon(workdir / "data", config)
        (workdir / "data").mkdir()
        daemon.start()
        try:
            assert "appendfsync is everysec, not always" in daemon.logs()
            assert "starting anyway: store.allow_weak_durability = true" in daemon.logs()
        finally:
            assert daemon.stop() == 0


def test_a_revocation_the_replicas_never_acknowledged_is_unavailable_not_success(
    workdir: Path,
) -> None:
    with RedisServer(workdir / "master") as master:
        assert master.port is not None
        with RedisServer(workdir / "replica", replica_of=master.port) as replica:
            master.wait_for_replicas(1)
            config = store_section(master.url, durability="replicas", durability_timeout="1s") + (
                "durability_replicas = 1\n"
            )
            daemon = Daemon(workdir / "data", config)
            (workdir / "data").mkdir()
            daemon.start()
            try:
                target = "spiffe://example.org/acknowledged"
                authd("revoke", "spiffe-id", target, data_dir=daemon.data_dir)
                replica.freeze()
                try:
                    refused = authd(
                        "revoke",
                        "spiffe-id",
                        "spiffe://example.org/unacknowledged",
                        data_dir=daemon.data_dir,
                        check=False,
                    )
                finally:
                    replica.thaw()
                listed = authd("revocations", "list", data_dir=daemon.data_dir).stdout
            finally:
                assert daemon.stop() == 0
    assert refused.returncode == Exit.UNAVAILABLE
    assert "only 0 of 1 replica(s) acknowledged it within 1s" in refused.stderr
    assert "may still be there" in refused.stderr
    assert target in listed


def test_replicas_durability_needs_a_redis_store() -> None:
    with pytest.raises(ConfigError, match=r"'replicas' needs a Redis store\.url"):
        load_config(None, env={"AUTHD_STORE_DURABILITY": "replicas"})


@pytest.mark.parametrize(
    ("key", "value"),
    [("DURABILITY", "quorum"), ("DURABILITY_REPLICAS", "0"), ("DURABILITY_TIMEOUT", "0s")],
)
def test_bad_durability_settings_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"store.{key.lower()}"):
        load_config(None, env={f"AUTHD_STORE_{key}": value})

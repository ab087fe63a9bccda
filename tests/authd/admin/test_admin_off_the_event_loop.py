"""Admin calls never stall ext_authz: their store calls run off the daemon's event loop.

`authd run` on a private Redis that is frozen (SIGSTOP) while an `authd revoke` waits for
it. The revoke is known to be waiting on the store once Redis holds unread bytes on one of
its connections; from then on, ext_authz Checks on the same daemon are answered from the
last view while the revoke is still pending. When Redis is thawed the revoke succeeds, and
a revocation that cannot reach the store is UNAVAILABLE naming the store.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import AUTHD, Daemon, authd
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

TD = "spiffe://example.org"
POLICY = f"""\
version: 1
rule_sets:
  default:
    rules:
      - name: orders-for-workloads
        effect: allow
        paths: ["/orders/{{id}}"]
        callers: ["{TD}/*"]
"""
STORE_TIMEOUT = 60  # seconds; the daemon's Redis socket timeout while the revoke waits
CHECKS_WHILE_PENDING = 20


class RedisDaemon(Daemon):
    """`authd run` on a Redis store, deciding over HTTP, with nothing else touching Redis."""

    def __init__(self, workdir: Path, redis_url: str) -> None:
        self.http_port = free_port()
        super().__init__(workdir / "data")
        (workdir / "policy.yaml").write_text(POLICY)
        self.config.write_text(
            'trust_domain = "example.org"\n'
            "[ca]\n"
            'rotation_check_interval = "1h"\n'
            "[store]\n"
            f'url = "{redis_url}"\n'
            'max_staleness = "1h"\n'
            "[workload]\n"
            "enabled = false\n"
            "[authz]\n"
            'grpc_address = ""\n'
            f'http_address = "127.0.0.1:{self.http_port}"\n'
            f'metrics_address = "127.0.0.1:{free_port()}"\n'
            f'policy_file = "{workdir / "policy.yaml"}"\n'
            'jwt_svid_audiences = ["authd"]\n'
        )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return authd(*args, data_dir=self.data_dir, check=check)

    def token(self, spiffe_id: str) -> str:
        return self.cli("jwt", "mint", "--spiffe-id", spiffe_id, "--audience", "authd").stdout

    def check(self, token: str) -> int:
        """GET /orders/1 on the HTTP ext_authz listener with a JWT-SVID: the status."""
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        try:
            headers = {"host": "api.example.com", "authorization": f"Bearer {token.strip()}"}
            connection.request("GET", "/orders/1", headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()


def unread_bytes(port: int) -> int:
    """Bytes clients sent to the TCP server on ``port`` that it has not read yet."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            established = fields[3] == "01"
            if local_port == port and established:
                total += int(fields[4].split(":")[1], 16)
    return total


def wait_until(what: str, probe: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def redis(workdir: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir / "redis") as server:
        yield server


def start_daemon(workdir: Path, redis_url: str) -> RedisDaemon:
    daemon = RedisDaemon(workdir, redis_url)
    daemon.start()
    return daemon


def test_checks_are_answered_while_a_revoke_waits_for_a_frozen_store(
    workdir: Path, redis: RedisServer
) -> None:
    daemon = start_daemon(workdir, f"{redis.url}?socket_timeout={STORE_TIMEOUT}")
    try:
        web, batch = daemon.token(f"{TD}/web"), daemon.token(f"{TD}/batch")
        assert daemon.check(batch) == 200
        assert redis.port is not None
        redis.freeze()
        assert unread_bytes(redis.port) == 0
        revoke = subprocess.Popen(
            [*AUTHD, "revoke", "spiffe-id", f"{TD}/batch", "--data-dir", str(daemon.data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until("the revoke to reach the store", lambda: unread_bytes(redis.port or 0) > 0)
            for _ in range(CHECKS_WHILE_PENDING):
                assert daemon.check(web) == 200
                assert daemon.check(batch) == 200  # the last view: not revoked yet
                assert revoke.poll() is None, "the revoke finished while Redis was frozen"
        finally:
            redis.thaw()
            out, err = revoke.communicate(timeout=STORE_TIMEOUT + 30)
        assert revoke.returncode == 0, err
        assert out.startswith(f"Revoked spiffe-id {TD}/batch"), out
        assert daemon.check(batch) == 401  # revoked
        assert daemon.check(web) == 200
    finally:
        daemon.stop()


def test_a_revoke_that_cannot_reach_the_store_is_unavailable_naming_it(
    workdir: Path, redis: RedisServer
) -> None:
    daemon = start_daemon(workdir, f"{redis.url}?socket_timeout=1")
    try:
        redis.freeze()
        try:
            result = daemon.cli("revoke", "spiffe-id", f"{TD}/batch", check=False)
        finally:
            redis.thaw()
        assert result.returncode == 7  # the CLI's exit status for unavailable
        (line,) = result.stderr.splitlines()
        assert line.startswith("authd: unavailable: "), line
        assert f"redis store redis://127.0.0.1:{redis.port}/0" in line, line
        listed = daemon.cli("revocations", "list").stdout
        assert listed.startswith("Found 0 revocations"), listed
    finally:
        daemon.stop()

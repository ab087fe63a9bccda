"""`authd run` replicas on one private Redis, for tests of what the replicas do with it.

Each replica has its own data directory (key store, remembered store position, mirror) and
serves ext_authz in HTTP mode; ``check`` asks it about one bearer token.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.support.daemon import Daemon, authd
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

TD = "spiffe://example.org"
ALLOW_WORKLOADS_POLICY = f"""\
version: 1
rule_sets:
  default:
    rules:
      - name: orders-for-workloads
        effect: allow
        paths: ["/orders/{{id}}"]
        callers: ["{TD}/*"]
"""

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


class Replica(Daemon):
    """One `authd run` with its own data directory on the shared Redis."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        redis_url: str,
        *,
        rotates: bool,
        max_staleness: int,
        extra_store_config: str = "",
        extra_ca_config: str = "",
    ) -> None:
        self.name = name
        self.http_port, self.metrics_port = free_port(), free_port()
        (workdir / name).mkdir(parents=True)
        super().__init__(workdir / name / "data")
        self.config.write_text(
            'trust_domain = "example.org"\n'
            "[ca]\n"
            f"rotates = {str(rotates).lower()}\n"
            'rotation_check_interval = "1s"\n'
            f"{extra_ca_config}"
            "[store]\n"
            f'url = "{redis_url}"\n'
            f'max_staleness = "{max_staleness}s"\n'
            f"{extra_store_config}"
            "[authz]\n"
            'grpc_address = ""\n'
            f'http_address = "127.0.0.1:{self.http_port}"\n'
            f'metrics_address = "127.0.0.1:{self.metrics_port}"\n'
            f'policy_file = "{workdir / "policy.yaml"}"\n'
            'jwt_svid_audiences = ["authd"]\n'
        )

    def start(self) -> None:
        super().start()
        wait_for(f"{self.name}'s listeners", self._listening)

    def _listening(self) -> bool:
        try:
            self.metrics()
            check(self, "")
        except OSError:
            return False
        return True

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.log.close()

    def cli(self, *args: str, check: bool = True) -> str:
        return authd(*args, data_dir=self.data_dir, check=check).stdout

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode())

    def gauge(self, name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", self.metrics(), re.MULTILINE)
        assert match is not None, f"{self.name} publishes no {name}"
        return float(match.group(1))

    def token(self, spiffe_id: str) -> str:
        return self.cli("jwt", "mint", "--spiffe-id", spiffe_id, "--audience", "authd").strip()

    def revoked_targets(self) -> set[str]:
        listed = json.loads(self.cli("revocations", "list", "--json"))["revocations"]
        return {r["target"] for r in listed}

    def staleness(self) -> float:
        return self.gauge("authd_revocation_staleness_seconds")

    def store_state(self) -> dict[str, object]:
        shown: dict[str, object] = json.loads(self.cli("store", "show", "--json"))
        return shown


def check(replica: Replica, token: str, **extra: str) -> tuple[int, str]:
    """GET /orders/1 on the replica's HTTP ext_authz port: (status, reason)."""
    connection = http.client.HTTPConnection("127.0.0.1", replica.http_port, timeout=5)
    try:
        headers = {"host": "api.example.com", **extra}
        if token:
            headers["authorization"] = f"Bearer {token}"
        connection.request("GET", "/orders/1", headers=headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status == 200:
        return 200, "allowed"
    return response.status, json.loads(body)["error"]


@dataclass
class ReplicaPair:
    """Two replicas on one Redis: ``r1`` rotates (holds the keys), ``r2`` follows."""

    redis: RedisServer
    r1: Replica
    r2: Replica

    @property
    def both(self) -> list[Replica]:
        return [self.r1, self.r2]


@contextlib.contextmanager
def replica_pair(workdir: Path, max_staleness: float) -> Iterator[ReplicaPair]:
    """A fresh redis-server (RDB only, no automatic saves) and two running replicas on it,
    sharing ``ALLOW_WORKLOADS_POLICY``; everything stopped on exit."""
    (workdir / "policy.yaml").write_text(ALLOW_WORKLOADS_POLICY)
    redis = RedisServer(workdir / "redis").start()
    r1 = Replica(workdir, "r1", redis.url, rotates=True, max_staleness=max_staleness)
    r2 = Replica(workdir, "r2", redis.url, rotates=False, max_staleness=max_staleness)
    try:
        r1.start()
        r2.start()
        yield ReplicaPair(redis, r1, r2)
    finally:
        for replica in (r1, r2):
            if replica.running:
                replica.stop()
        redis.stop()

"""Private ``redis-server`` processes for tests: each on its own free port and directory.

Tests never touch a Redis they did not start (one may be running on 6379 for other uses).
Every wait here is bounded, and ``stop`` escalates from SIGTERM to SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

from tests.support import ports

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# Cluster nodes also listen on port + 10000 (the cluster bus), so keep below that range.
_HIGHEST_CLUSTER_PORT = 65535 - 10000


def redis_server_binary() -> str:
    """The ``redis-server`` on PATH; a clear failure (never a skip) if there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not on PATH: install it (Debian: apt-get install redis-server)"
        )
    return binary


def free_port(*, with_cluster_bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (and, if asked, port + 10000)."""
    for _ in range(100):
        port = ports.free_port(below=_HIGHEST_CLUSTER_PORT)
        if not with_cluster_bus or ports.port_is_free(port + 10000):
            return port
    raise RuntimeError("found no free port pair for a cluster node")


class RedisServer:
    """One ``redis-server`` on 127.0.0.1 with its data, config and log under ``directory``.

    ``start`` picks a free port the first time and keeps it, so a restarted server is found at
    the same URL (with ``appendonly=True`` its data survives the restart). By default it
    persists like authd's default ``store.durability = "local"`` needs: the append-only file
    on, fsynced before every reply (``appendfsync always``). ``replica_of`` (a master's port)
    starts it as that master's replica; ``sentinel_of`` as a Sentinel.
    """

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = True,
        appendfsync: str = "always",
        password: str | None = None,
        replica_of: int | None = None,
        sentinel_of: tuple[str, int] | None = None,
        cluster: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.replica_of = replica_of
        self.sentinel_of = sentinel_of  # (service name, master port): run as a Sentinel
        self.cluster = cluster
        self.extra_args = tuple(extra_args)
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of this server (with its password, if it has one)."""
        auth = "" if self.password is None else f":{self.password}@"
        return f"redis://{auth}{HOST}:{self._bound_port()}/0"

    def _bound_port(self) -> int:
        if self.port is None:
            raise RuntimeError("the server was never started, so it has no port")
        return self.port

    def client(self) -> redis.Redis:
        """A plain client for this server (for the test's own checks and setup)."""
        return redis.Redis(
            host=HOST,
            port=self._bound_port(),
            password=self.password,
            socket_timeout=5,
            socket_connect_timeout=5,
            decode_responses=True,
        )

    def start(self) -> RedisServer:
        if self._process is not None:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port is not None
        for _ in range(1 if fixed_port else 5):
            if not fixed_port:
                self.port = free_port(with_cluster_bus=self.cluster)
            self._process = subprocess.Popen(
                self._command(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_until_ready():
                return self
            self.stop()
        raise RuntimeError(f"redis-server did not start; see {self.directory / 'redis.log'}")

    def _command(self) -> list[str]:
        port = str(self._bound_port())
        if self.sentinel_of is not None:
            service, master_port = self.sentinel_of
            config = self.directory / "sentinel.conf"  # Sentinel rewrites its config file
            config.write_text(
                f"sentinel monitor {service} {HOST} {master_port} 1\n"
                f"sentinel down-after-milliseconds {service} 1000\n"
                f"sentinel failover-timeout {service} 10000\n"
                + (
                    ""
                    if self.password is None
                    else f"sentinel auth-pass {service} {self.password}\n"
                )
            )
            command = [redis_server_binary(), str(config), "--sentinel"]
        else:
            command = [redis_server_binary(), "--save", ""]
            command += ["--appendonly", "yes" if self.appendonly else "no"]
            command += ["--appendfsync", self.appendfsync]
            if self.replica_of is not None:
                command += ["--replicaof", HOST, str(self.replica_of)]
                if self.password is not None:
                    command += ["--masterauth", self.password]
        command += ["--port", port, "--bind", HOST, "--dir", str(self.directory)]
        command += ["--logfile", str(self.directory / "redis.log"), "--daemonize", "no"]
        if self.password is not None:
            command += ["--requirepass", self.password]
        if self.cluster:
            command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        return command + list(self.extra_args)

    def _wait_until_ready(self) -> bool:
        """True once the server answers PING; False if it exited (e.g. lost a port race)."""
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        probe = redis.Redis(
            host=HOST,
            port=self._bound_port(),
            password=self.password,
            socket_timeout=1,
            socket_connect_timeout=1,
        )
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    return False
                try:
                    if probe.ping():
                        return True
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            probe.close()
        return False

    def wait_for_replicas(self, count: int, *, timeout: float = START_TIMEOUT) -> None:
        """Return once ``count`` replicas are connected and in sync (bounded polling)."""
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while time.monotonic() < deadline:
                info = client.info("replication")
                online = [
                    value
                    for name, value in info.items()
                    if name.startswith("slave") and isinstance(value, dict)
                    if value.get("state") == "online"
                ]
                if len(online) >= count:
                    return
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server on port {self.port}: {count} replica(s) never synced")

    def role(self) -> str:
        """``master`` or ``slave``, from ``INFO replication``."""
        client = self.client()
        try:
            return str(client.info("replication")["role"])
        finally:
            client.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """SIGTERM (Redis then writes its append-only file), SIGKILL if it takes too long."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a frozen server cannot handle SIGTERM
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)

    def crash(self) -> None:
        """SIGKILL, as a crash: nothing is saved; the port is kept for ``start``."""
        process, self._process = self._process, None
        assert process is not None
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)

    def save_snapshot(self) -> Path:
        """SAVE now (``dump.rdb``) and keep a copy of it; returns the copy's path."""
        with self.client() as client:
            client.save()
        kept = self.directory / f"snapshot-{time.monotonic_ns()}.rdb"
        shutil.copy(self.directory / "dump.rdb", kept)
        return kept

    def restart_from(self, snapshot: Path | None) -> RedisServer:
        """Start again on the same port (after ``crash`` or ``stop``) holding exactly what
        ``snapshot`` holds, or nothing at all: Redis's RDB-only persistence after a crash,
        or a wiped server."""
        assert self._process is None, "stop or crash the server first"
        for leftover in ("dump.rdb", "appendonly.aof", "appendonlydir"):
            path = self.directory / leftover
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        if snapshot is not None:
            shutil.copy(snapshot, self.directory / "dump.rdb")
        return self.start()

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing ever answers."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisCluster:
    """A Redis Cluster of ``size`` masters (no replicas), all slots assigned, state ``ok``."""

    def __init__(self, directory: Path, *, size: int = 3) -> None:
        self.nodes = [RedisServer(directory / f"node-{n}", cluster=True) for n in range(size)]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL listing every node as a startup node."""
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}"

    def start(self) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"{HOST}:{node.port}" for node in self.nodes]
            create = ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0"]
            subprocess.run(
                [*create, "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=START_TIMEOUT,
            )
            self._wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        clients = [node.client() for node in self.nodes]
        try:
            while time.monotonic() < deadline:
                infos = [client.cluster("INFO") for client in clients]
                if all(info.get("cluster_state") == "ok" for info in infos):
                    return
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()
        raise RuntimeError("the test cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""The ``[limits]`` on the admin and Workload API sockets of a real ``authd run``.

The peer-credential gateway in front of each socket closes a connection beyond
``max_connections`` and one that moves no byte for ``idle_timeout``; each refusal is counted
in ``authd_listener_refusals_total{listener,reason}``. A watch stream with nothing to say is
not idle: the server pings it.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.daemon import Daemon

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def running(workdir: Path, limits: str) -> Iterator[Daemon]:
    daemon = Daemon(workdir / "data", f"[limits]\n{limits}\n")
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.process and daemon.process.poll() is None:
            daemon.stop()


@pytest.fixture
def capped(workdir: Path) -> Iterator[Daemon]:
    yield from running(workdir, "max_connections = 2")


@pytest.fixture
def quick_idle(workdir: Path) -> Iterator[Daemon]:
    yield from running(workdir, 'idle_timeout = "1s"')


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """What the daemon sends before it closes ``sock`` (raises TimeoutError if it does not)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def refusals(daemon: Daemon, listener: str, reason: str) -> float:
    match = re.search(r'metrics_address = "([^"]+)"', daemon.config.read_text())
    assert match is not None
    with urllib.request.urlopen(f"http://{match.group(1)}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    sample = re.search(
        rf'^authd_listener_refusals_total\{{listener="{listener}",reason="{reason}"\}} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(sample.group(1)) if sample else 0.0


def health_check(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(reply.status)


def test_workload_connections_beyond_the_cap_are_closed_and_the_others_served(
    capped: Daemon,
) -> None:
    workload_socket = capped.data_dir / "workload.sock"
    with (
        connect(workload_socket) as held,
        grpc.insecure_channel(f"unix:{workload_socket}", options=OWN_CONNECTION) as channel,
    ):
        assert held.fileno() >= 0
        assert health_check(channel) == health_pb2.HealthCheckResponse.SERVING
        with connect(workload_socket) as extra:
            assert read_until_closed(extra) == b""
        assert health_check(channel) == health_pb2.HealthCheckResponse.SERVING
    assert refusals(capped, "workload", "max_connections") == 1


def test_admin_connections_beyond_the_cap_are_closed(capped: Daemon) -> None:
    admin_socket = capped.data_dir / "admin.sock"
    with connect(admin_socket), connect(admin_socket) as second:
        assert second.fileno() >= 0
        with connect(admin_socket) as extra:
            assert read_until_closed(extra) == b""
    # The refusal is counted by the listener's own thread, maybe just after the close.
    assert eventually(lambda: refusals(capped, "admin", "max_connections") == 1)


def eventually(condition: Callable[[], bool], attempts: int = 100) -> bool:
    for _ in range(attempts):
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_idle_workload_connection_is_closed_after_the_idle_timeout(quick_idle: Daemon) -> None:
    with connect(quick_idle.data_dir / "workload.sock") as idle:
        read_until_closed(idle)  # the server's SETTINGS at most, then the close


def test_watch_stream_outlives_the_idle_timeout(quick_idle: Daemon) -> None:
    target = f"unix:{quick_idle.data_dir / 'workload.sock'}"
    with grpc.insecure_channel(target, options=OWN_CONNECTION) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        time.sleep(3)  # three idle timeouts with nothing to say on the stream
        assert not watch.done()
        watch.cancel()
    assert refusals(quick_idle, "workload", "idle_timeout") == 0

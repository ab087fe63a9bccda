"""Listener addresses and socket files, and how refusals are reported."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from authd.transport.refusals import RefusalReporter
from authd.transport.sockets import SocketInUseError, parse_host_port, remove_stale_socket


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:9191", ("127.0.0.1", 9191)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_host_port_is_split_at_the_last_colon(address: str, parsed: tuple[str, int]) -> None:
    assert parse_host_port(address) == parsed


@pytest.mark.parametrize("address", ["", "9191", ":9191", "host:", "host:http", "host:65536"])
def test_an_address_without_host_and_port_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="must be host:port"):
        parse_host_port(address)


def test_a_socket_file_nobody_serves_on_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "left.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as leftover:
        leftover.bind(str(path))
    remove_stale_socket(path)
    assert not path.exists()


def test_a_missing_socket_file_is_fine(tmp_path: Path) -> None:
    remove_stale_socket(tmp_path / "none.sock")


def test_a_live_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(1)
        with pytest.raises(SocketInUseError, match="another process is serving"):
            remove_stale_socket(path)
        assert path.exists()


def test_a_live_socket_with_a_full_backlog_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "busy.sock"
    clients = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(str(path))
        busy.listen(0)
        try:
            while True:  # fill the backlog until a connect would block
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.setblocking(False)
                clients.append(client)
                client.connect(str(path))
        except BlockingIOError:
            pass
        try:
            with pytest.raises(SocketInUseError, match="in use"):
                remove_stale_socket(path)
            assert path.exists()
        finally:
            for client in clients:
                client.close()


def test_a_path_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_text("keep me")
    with pytest.raises(SocketInUseError, match="not a socket"):
        remove_stale_socket(path)
    assert path.read_text() == "keep me"


def test_every_refusal_is_counted_but_logged_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    counted: list[str] = []
    report = RefusalReporter("workload", counted.append, monotonic=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="authd.transport.refusals"):
        for _ in range(5):
            report("max_connections")
        report("idle_timeout")
        now[0] += 1.0
        report("max_connections")
    assert counted == ["max_connections"] * 5 + ["idle_timeout", "max_connections"]
    assert [r.getMessage() for r in caplog.records] == [
        "workload: 1 refused (max_connections) since the last report",
        "workload: 1 refused (idle_timeout) since the last report",
        "workload: 5 refused (max_connections) since the last report",
    ]

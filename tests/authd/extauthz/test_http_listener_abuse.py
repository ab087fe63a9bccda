"""A running `authd run`'s HTTP-mode listener under abuse from raw sockets.

Each abuse gets its protocol answer (413, 431, 405, 400, a closed connection), memory stays
bounded, a well-behaved client is answered meanwhile, and SIGTERM still stops the daemon.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.envoy import (
    HOST,
    Authd,
    authd_config,
    policy_yaml,
    short_tmpdir,
    start_authd,
)

MAX_CONNECTIONS = 16
LIMITS = f"""
[limits]
max_connections = {MAX_CONNECTIONS}
idle_timeout = "1s"
"""


def start(tmp: Path) -> Authd:
    config = authd_config(extra=LIMITS)
    return start_authd(tmp, config, files={"policy.yaml": policy_yaml("gateway")})


@pytest.fixture(scope="module")
def authd() -> Iterator[Authd]:
    tmp = short_tmpdir()
    daemon = start(tmp / "authd")
    yield daemon
    daemon.stop()
    log = daemon.stderr_path.read_text()
    shutil.rmtree(tmp, ignore_errors=True)
    assert "Traceback" not in log


def connect(authd: Authd) -> socket.socket:
    return socket.create_connection((HOST, authd.http_port), timeout=10)


def status_of(sock: socket.socket) -> int:
    """The status of the response on ``sock`` (0 when the server closed without one)."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def closed(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (reading to EOF or a reset)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def answered(authd: Authd) -> int:
    """What a well-behaved check gets (``/public/*`` is allowed to anyone)."""
    with connect(authd) as sock:
        sock.sendall(b"GET /check/public/x HTTP/1.1\r\nhost: api\r\ncontent-length: 0\r\n\r\n")
        return status_of(sock)


def rss_bytes(authd: Authd) -> int:
    status = Path(f"/proc/{authd.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_declared_1gb_body_is_refused_413_at_once(authd: Authd) -> None:
    with connect(authd) as sock:
        sock.sendall(
            b"POST /check/public/x HTTP/1.1\r\nhost: api\r\ncontent-length: 1073741824\r\n\r\n"
        )
        assert status_of(sock) == 413
        assert closed(sock)
    assert answered(authd) == 200


def test_endless_body_is_cut_off_and_memory_stays_bounded(authd: Authd) -> None:
    before = rss_bytes(authd)
    chunk = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
    sent = 0
    with connect(authd) as sock:
        sock.sendall(
            b"POST /check/public/x HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        with pytest.raises(OSError):  # refused: the server closes, the next writes fail
            while sent < 1 << 30:
                sock.sendall(chunk)
                sent += len(chunk)
    assert sent < 64 << 20  # refused after the 4 MiB limit, not after a gigabyte
    assert rss_bytes(authd) - before < 50 << 20
    assert answered(authd) == 200


def test_huge_header_block_is_refused_431(authd: Authd) -> None:
    with connect(authd) as sock:
        headers = b"".join(b"x-pad-%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
        sock.sendall(b"GET /check/public/x HTTP/1.1\r\nhost: api\r\n" + headers + b"\r\n")
        assert status_of(sock) == 431
    assert answered(authd) == 200


def test_connect_is_refused_405(authd: Authd) -> None:
    with connect(authd) as sock:
        sock.sendall(b"CONNECT internal:443 HTTP/1.1\r\nhost: internal:443\r\n\r\n")
        assert status_of(sock) == 405
        assert closed(sock)
    assert answered(authd) == 200


def test_upgrade_is_refused_400(authd: Authd) -> None:
    with connect(authd) as sock:
        sock.sendall(
            b"GET /check/public/x HTTP/1.1\r\nhost: api\r\nconnection: upgrade\r\n"
            b"upgrade: h2c\r\ncontent-length: 0\r\n\r\n"
        )
        assert status_of(sock) == 400
        assert closed(sock)
    assert answered(authd) == 200


def test_idle_connections_beyond_the_cap_are_closed_then_freed_by_the_idle_timeout(
    authd: Authd,
) -> None:
    held = [connect(authd) for _ in range(MAX_CONNECTIONS)]
    try:
        with connect(authd) as extra:
            assert closed(extra)  # the listener is full: closed at once
        for sock in held:  # each idle one is closed after idle_timeout (1 s)
            assert closed(sock)
        assert answered(authd) == 200
    finally:
        for sock in held:
            sock.close()


def test_slowloris_is_cut_at_the_idle_timeout_while_others_are_answered(authd: Authd) -> None:
    with connect(authd) as slow:
        slow.sendall(b"GET /check/public/x HTTP/1.1\r\nhost: api\r\n")
        slow.settimeout(0.2)
        started = time.monotonic()
        cut = False
        while not cut and time.monotonic() - started < 10:
            assert answered(authd) == 200
            try:
                slow.sendall(b"x")
                cut = slow.recv(1) == b""
            except TimeoutError:
                pass
            except OSError:
                cut = True
        assert cut


def test_sigterm_stops_within_5s_with_abusive_connections_open() -> None:
    tmp = short_tmpdir()
    daemon = start(tmp / "authd")
    open_sockets = []
    try:
        for prefix in (b"GET /check/public/x HTTP/1.1\r\nhost: api\r\n", b"POST /check/x"):
            sock = connect(daemon)
            sock.sendall(prefix)
            open_sockets.append(sock)
        body = connect(daemon)
        body.sendall(b"POST /check/x HTTP/1.1\r\nhost: a\r\ncontent-length: 100000\r\n\r\nxx")
        open_sockets.append(body)
        assert answered(daemon) == 200
        daemon.process.terminate()
        daemon.process.wait(timeout=5)
    finally:
        for sock in open_sockets:
            sock.close()
        daemon.stop()
        log = daemon.stderr_path.read_text()
        shutil.rmtree(tmp, ignore_errors=True)
    assert "Traceback" not in log

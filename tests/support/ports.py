"""Free TCP ports on 127.0.0.1 for the processes that tests start (daemons, Envoy, Redis).

Two ways a port "that was free a moment ago" goes wrong, both seen in CI: the kernel's
``bind(0)`` hands the same port to two callers in a row, and an outgoing connection takes the
port as its ephemeral source port before the process meant for it binds. So ports come from a
band just below the kernel's ephemeral range (never a source port) and this process never
hands one out twice. Under pytest-xdist each worker draws from its own slice of the band, so
two workers never pick the same port.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from functools import cache
from pathlib import Path

HOST = "127.0.0.1"
_BAND = 12_000  # ports below the ephemeral range that we draw from
_given: set[int] = set()
_lock = threading.Lock()


@cache
def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_is_free(port: int) -> bool:
    """Whether a listener could bind ``port`` on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, below: int = 65535) -> int:
    """A port on 127.0.0.1 that nothing listens on, never returned before by this process.

    ``below`` caps the port (Redis Cluster nodes also need port + 10000).
    """
    high = min(_ephemeral_low() - 1, below)
    low = max(1024, high - _BAND)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
        size = (high - low) // workers
        low, high = low + worker * size, low + (worker + 1) * size - 1
    with _lock:
        for _ in range(1000):
            port = random.randint(low, high)
            if port not in _given and port_is_free(port):
                _given.add(port)
                return port
    raise RuntimeError(f"found no free port in {low}..{high}")

"""A small decision log service, as OPA's log pipelines run: POST /logs, gzip JSON arrays."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.envoy import wait_for


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        collector = self.server.collector
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        collector.arrived(self.path, dict(self.headers.items()), body)
        collector.release.wait(timeout=60)  # held while the test says so
        status = collector.next_status()
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    collector: LogCollector


class LogCollector:
    """Records every batch; ``fail(n)`` answers the next n with 500, ``hold()`` stalls them."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.collector = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []  # every POST, as sent
        self.batches: list[list[dict[str, Any]]] = []  # the accepted ones, decoded
        self._failures = 0
        self.release = threading.Event()
        self.release.set()
        self._pending: list[bytes] = []
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def arrived(self, path: str, headers: dict[str, str], body: bytes) -> None:
        with self._lock:
            self.requests.append((path, headers, body))
            self._pending.append(body)

    def next_status(self) -> int:
        with self._lock:
            body = self._pending.pop(0)
            if self._failures:
                self._failures -= 1
                return 500
            self.batches.append(json.loads(gzip.decompress(body)))
            return 200

    def fail(self, times: int) -> None:
        with self._lock:
            self._failures = times

    def hold(self) -> None:
        self.release.clear()

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [event for batch in self.batches for event in batch]

    def wait_for_events(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            events = self.events
            return events if len(events) >= count else None

        return wait_for(f"{count} decision events at the collector", enough, timeout)

    def wait_for_requests(self, count: int, timeout: float = 30.0) -> None:
        probe: Callable[[], bool | None] = lambda: len(self.requests) >= count or None  # noqa: E731
        wait_for(f"{count} uploads at the collector", probe, timeout)

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

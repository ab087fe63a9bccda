"""A stand-in for an OPA server: OPA's REST Data API on 127.0.0.1, answered by a function.

No OPA binary can be installed here. ``POST /v1/data/<path>`` with ``{"input": ...}`` is
answered with ``answer(path, input)``: (status, content type, body); OPA itself answers an
undefined document with 200 and ``{}``. Every request is recorded. ``stop()`` and
``start()`` take it down and bring it back on the same port (an OPA that is down refuses
connections); a handler that waits on ``release`` stands for a slow OPA.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, str, bytes]

HOST = "127.0.0.1"


def document(result: Any) -> Answer:
    """OPA's answer for a defined document."""
    return 200, "application/json", json.dumps({"result": result}).encode()


UNDEFINED: Answer = (200, "application/json", b"{}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Close the kept-alive connections too: a server that is down answers nothing."""
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class OpaStandIn:
    """OPA's Data API over ``answer``; remembers what it was asked (path, input)."""

    def __init__(self, answer: Callable[[str, Any], Answer] | None = None) -> None:
        self._answer = answer
        self.requests: list[tuple[str, Any]] = []  # (path, input)
        self.client_ports: set[int] = set()
        self.release = threading.Event()  # lets a held "slow" request finish
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.start()

    def answer(self, path: str, received: Any) -> Answer:
        """(status, content type, body) for a query of ``path`` with input ``received``."""
        assert self._answer is not None, "give an answer function or override answer()"
        return self._answer(path, received)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def inputs(self) -> list[Any]:
        return [received for _, received in self.requests]

    def start(self) -> None:
        """Listen (again) on ``port``: any free port the first time, the same one after."""
        self._server = _Server((HOST, self.port), self._handler())
        self.port = int(self._server.server_address[1])
        # A short poll interval only makes shutdown() prompt; requests are served at once.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: new connections are refused until ``start()``."""
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.release.clear()

    def close(self) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as OPA's server does

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                payload = json.loads(self.rfile.read(length))
                path = self.path.removeprefix("/v1/data/")
                stand_in.requests.append((path, payload["input"]))
                stand_in.client_ports.add(self.client_address[1])
                status, content_type, body = stand_in.answer(path, payload["input"])
                try:
                    self.send_response(status)
                    self.send_header("content-type", content_type)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (a timeout)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

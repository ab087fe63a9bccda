"""ext_authz in Envoy's HTTP service mode: a raw asyncio protocol with httptools.

Envoy sends the original method and path (after a configurable prefix), the host, the
allowed headers and optionally the body as an HTTP/1.1 request; 200 allows (with upstream
headers, and ``x-envoy-auth-headers-to-remove``), anything else denies with our status,
headers and body. It costs a fraction of gRPC's per-request CPU, but Envoy sends no
connection attributes this way: the peer identity arrives only in headers that Envoy itself
sets from the TLS connection (``headers_to_add`` with ``%DOWNSTREAM_PEER_URI_SAN%`` and
``%DOWNSTREAM_PEER_CERT%``). On mTLS Envoy overwrites a client-sent header of the same name;
on plaintext the formatters are empty and Envoy adds nothing, so the protection rests on the
deploy configs never listing those names in ``allowed_headers`` (Envoy forwards only the
headers listed there). The certificate is verified against our bundle all the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from http import HTTPStatus
from typing import Any, cast

import httptools

from authd.authz.metrics import AuthzMetrics
from authd.authz.pipeline import Authorizer
from authd.check.model import CheckContext, Outcome
from authd.transport.eager import run_eagerly

log = logging.getLogger(__name__)

PEER_URI_HEADER = "x-authd-peer-uri-san"
PEER_CERT_HEADER = "x-authd-peer-cert"
# HTTP mode has no context_extensions: Envoy sets them as constant headers instead
# (``headers_to_add``: x-authd-ctx-policy: gateway), which replace a client's copy.
CONTEXT_HEADER_PREFIX = "x-authd-ctx-"
_ERROR_RESPONSE = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n"
    b"content-length: 22\r\n\r\nauthd could not decide"
)
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
# Header names as Envoy sends them → their lower-case text: the same few names every time.
_HEADER_NAMES_KEPT = 512
_header_names: dict[bytes, str] = {}


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


def http_response(outcome: Outcome) -> bytes:
    if outcome.allowed:
        lines = [f"{k}: {v}\r\n" for k, v in outcome.upstream_headers.items()]
        if outcome.remove_headers:
            lines.append(f"x-envoy-auth-headers-to-remove: {','.join(outcome.remove_headers)}\r\n")
        lines.append("content-length: 0\r\n\r\n")
        return b"HTTP/1.1 200 OK\r\n" + "".join(lines).encode("latin-1")
    body = outcome.deny_body.encode("utf-8")
    lines = [f"{k}: {v}\r\n" for k, v in outcome.deny_headers.items()]
    lines.append(f"content-length: {len(body)}\r\n\r\n")
    return _status_line(outcome.status) + "".join(lines).encode("latin-1") + body


class HttpCheckProtocol(asyncio.Protocol):
    def __init__(self, server: HttpAuthzServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._queue: deque[CheckContext] = deque()
        self._busy = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_BAD_REQUEST)
                self._transport.close()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = _header_names.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_header_names) < _HEADER_NAMES_KEPT:
                _header_names[name] = key
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous},{text}"

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode("ascii")
        self._queue.append(self._server.context(method, self._url, self._headers, self._body))
        if not self._busy:
            self._next()

    # -- checks, one at a time per connection, answered in order ---------------------------

    def _next(self) -> None:
        while self._queue and not self._busy:
            self._busy = True
            run_eagerly(self._server.authorizer.check(self._queue.popleft()), self._answer)

    def _answer(self, outcome: Outcome | None, error: BaseException | None) -> None:
        self._busy = False
        if self._transport is None:
            return
        if outcome is not None:
            self._transport.write(http_response(outcome))
        else:
            log.error("ext_authz HTTP check failed", exc_info=error)
            self._server.error()
            self._transport.write(_ERROR_RESPONSE)
        if not self._parser.should_keep_alive():
            self._transport.close()
            return
        if self._queue:
            self._next()


class HttpAuthzServer:
    def __init__(
        self,
        authorizer: Authorizer,
        *,
        host: str,
        port: int,
        path_prefix: str = "",
        peer_uri_header: str = PEER_URI_HEADER,
        peer_cert_header: str = PEER_CERT_HEADER,
        context_header_prefix: str = CONTEXT_HEADER_PREFIX,
        metrics: AuthzMetrics | None = None,
    ) -> None:
        self.authorizer = authorizer
        self.host = host
        self.port = port
        self._prefix = path_prefix.rstrip("/")
        self._peer_uri_header = peer_uri_header
        self._peer_cert_header = peer_cert_header
        self._context_prefix = context_header_prefix
        self._metrics = metrics
        self._server: asyncio.AbstractServer | None = None

    def context(
        self, method: str, url: bytes, headers: dict[str, str], body: list[bytes]
    ) -> CheckContext:
        path = url.decode("latin-1")
        if self._prefix and path.startswith(self._prefix):
            path = path[len(self._prefix) :] or "/"
        principal = headers.pop(self._peer_uri_header, "")
        certificate = headers.pop(self._peer_cert_header, "")
        extensions: dict[str, str] = {}
        prefix = self._context_prefix
        for name in [h for h in headers if h.startswith(prefix)]:
            extensions[name[len(prefix) :]] = headers.pop(name)
        return CheckContext(
            method=method,
            host=headers.get("host", ""),
            path=path,
            headers=headers,
            body=b"".join(body),
            truncated_body=headers.get("x-envoy-auth-partial-body") == "true",
            source_principal=principal,
            source_certificate=certificate,
            request_id=headers.get("x-request-id", ""),
            context_extensions=extensions,
            transport="http",
        )

    def error(self) -> None:
        if self._metrics is not None:
            self._metrics.error("http")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpCheckProtocol(self), self.host, self.port, reuse_port=False
        )
        sockets: Any = self._server.sockets
        self.port = sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

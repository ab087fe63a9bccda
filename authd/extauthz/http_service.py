"""ext_authz in Envoy's HTTP service mode: a raw asyncio protocol with httptools.

Envoy sends the original method and path (after a configurable prefix), the host, the
allowed headers and optionally the body as an HTTP/1.1 request; 200 allows (with upstream
headers, ``x-envoy-auth-headers-to-remove``, and the policy's ``response_headers_to_add``,
which Envoy adds to the client's response when ``allowed_client_headers_on_success`` lists
them), anything else denies with our status, headers and body. It costs a fraction of gRPC's
per-request CPU, but Envoy sends no connection attributes this way: the peer identity
arrives only in headers that Envoy itself sets from the TLS connection (``headers_to_add``
with ``%DOWNSTREAM_PEER_URI_SAN%`` and ``%DOWNSTREAM_PEER_CERT%``). On mTLS Envoy overwrites
a client-sent header of the same name; on plaintext the formatters are empty and Envoy adds
nothing, so the protection rests on the deploy configs never listing those names in
``allowed_headers`` (Envoy forwards only the headers listed there). The certificate is
verified against our bundle all the same.

Within ``ListenerLimits``: a request target over ``max_url_length`` is answered 414, a header
block over ``max_header_list_size`` 431, a body over ``max_request_bytes`` 413 (a declared
length at once, a chunked one when it gets there), CONNECT 405, any Upgrade 400, requests
read ahead of the one in flight beyond ``MAX_PIPELINED`` 429, garbage 400; each then closes
the connection and is counted as a refusal. Beyond ``max_connections`` a connection is
closed at once; a request must arrive whole within ``idle_timeout`` of the previous answer
(or of connecting), else the connection is closed (counted as ``request_timeout`` when part
of a request had arrived). Reading pauses while a check is in flight and while more than
``max_connection_buffer`` of answers wait for the client to take them.
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
from authd.check.header_values import is_field_value, is_token
from authd.check.model import CheckContext, EnvoyResponse, Outcome
from authd.policy.base import PolicyError
from authd.transport.eager import run_eagerly
from authd.transport.limits import ListenerLimits
from authd.transport.refusals import RefusalCallback, RefusalReporter

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
# Requests read ahead of the one being answered (Envoy sends one at a time per connection).
MAX_PIPELINED = 16
# Request line and line ends on top of the URL and header limits, before a head is too large.
_HEAD_SLACK = 1024
# Header names as Envoy sends them → their lower-case text: the same few names every time.
_HEADER_NAMES_KEPT = 512
_header_names: dict[bytes, str] = {}


class Refused(Exception):
    """A request the listener answers itself, with ``status``, and then closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")


def refusal_response(refused: Refused) -> bytes:
    body = refused.reason.encode("ascii")
    return (
        _status_line(refused.status)
        + b"content-type: text/plain\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode("ascii")
        + body
    )


def _check_sendable(headers: dict[str, str], removed: str = "") -> None:
    # The pipeline made every header sendable (authd.check.header_values); this only makes
    # sure no control character (a line break above all) or non-ASCII ever reaches the wire.
    probe = "".join(headers.values()) + "".join(headers) + removed
    if probe.isascii() and probe.isprintable():
        return
    if not all(is_token(k) and is_field_value(v) for k, v in headers.items()):
        raise ValueError("unsendable header")
    if not all(is_token(name) for name in removed.split(",") if removed):
        raise ValueError("unsendable header name to remove")


def _lines(pairs: tuple[tuple[str, str], ...]) -> str:
    return "".join([f"{k}: {v}\r\n" for k, v in pairs])


def _opa_envoy_http_response(outcome: Outcome, envoy: EnvoyResponse) -> bytes:
    """What reaches the client and upstream as with the OPA-Envoy plugin's CheckResponse.

    Every header value its own line (Envoy sets those ``allowed_upstream_headers`` lists and
    adds those ``allowed_upstream_headers_to_append`` lists); no content-type the policy did
    not give. Query-parameter mutations cannot be expressed in HTTP mode.
    """
    for pairs in (envoy.headers, envoy.response_headers_to_add):
        if not all(is_token(k) and is_field_value(v) for k, v in pairs):
            raise ValueError("unsendable header")
    if outcome.allowed:
        removed = ",".join([*envoy.request_headers_to_remove, *outcome.remove_headers])
        _check_sendable(outcome.upstream_headers, removed)
        text = _lines(envoy.headers)
        text += "".join([f"{k}: {v}\r\n" for k, v in outcome.upstream_headers.items()])
        if removed:
            text += f"x-envoy-auth-headers-to-remove: {removed}\r\n"
        text += _lines(envoy.response_headers_to_add)
        return b"HTTP/1.1 200 OK\r\n" + text.encode("ascii") + b"content-length: 0\r\n\r\n"
    _check_sendable(outcome.deny_headers)
    body = outcome.deny_body.encode("utf-8")
    text = _lines(envoy.headers)
    text += "".join([f"{k}: {v}\r\n" for k, v in outcome.deny_headers.items()])
    text += f"content-length: {len(body)}\r\n\r\n"
    return _status_line(outcome.status) + text.encode("ascii") + body


def http_response(outcome: Outcome) -> bytes:
    """The reply for ``outcome``. Its headers are sendable: the pipeline checked or encoded
    every name and value (``authd.check.header_values.sendable_outcome``), the one place that
    does, identically for both transports; a non-ASCII value would still fail to encode."""
    if outcome.envoy is not None:
        return _opa_envoy_http_response(outcome, outcome.envoy)
    if outcome.allowed:
        headers = outcome.upstream_headers
        removed = ",".join(outcome.remove_headers)
        text = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
        if removed:
            text += f"x-envoy-auth-headers-to-remove: {removed}\r\n"
        # The policy's response_headers_to_add: Envoy passes those its
        # allowed_client_headers_on_success lists to the client's response.
        if added := outcome.decision.response_headers_to_add:
            text += "".join([f"{k}: {v}\r\n" for k, v in added.items()])
        return b"HTTP/1.1 200 OK\r\n" + text.encode("ascii") + b"content-length: 0\r\n\r\n"
    headers = outcome.deny_headers
    body = outcome.deny_body.encode("utf-8")
    text = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
    text += f"content-length: {len(body)}\r\n\r\n"
    return _status_line(outcome.status) + text.encode("ascii") + body


class HttpCheckProtocol(asyncio.Protocol):
    """One connection from Envoy: requests parsed within the limits, answered in order.

    Reading pauses while a check is in flight or the client does not take its answers; a
    request must arrive whole within ``idle_timeout`` of the previous answer (or of
    connecting); past any limit the client gets the status, the connection closes, and the
    refusal is counted.
    """

    def __init__(self, server: HttpAuthzServer) -> None:
        self._server = server
        self._limits = server.limits
        self._max_head = self._head_limit()
        self._max_headers = self._limits.max_header_list_size
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._repeated: dict[str, list[str]] | None = None
        self._header_bytes = 0
        self._head_bytes = 0
        self._in_head = True
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._queue: deque[CheckContext] = deque()
        self._busy = False
        self._closing = False
        self._writing_paused = False
        self._reading_paused = False
        self._refusal: Refused | None = None
        # One timer per connection, moved on lazily: when it fires before the deadline it is
        # set again for the rest, so an answer only writes down a new deadline.
        self._idle: asyncio.TimerHandle | None = None
        self._idle_deadline: float | None = None
        # The loop, kept: asking for the running one costs a getpid() system call each time.
        self._loop = asyncio.get_running_loop()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        if not self._server.admit(self):
            self._closing = True
            self._transport.close()
            return
        self._transport.set_write_buffer_limits(high=self._limits.max_connection_buffer)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget(self)
        self._transport = None
        self._queue.clear()
        self._disarm_idle()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
            if self._in_head and self._head_bytes > self._max_head:
                raise Refused(431, "header_too_large")
        except Refused as refused:
            self._refuse(refused)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Refused):
                self._refuse(cause)
            else:
                log.error("ext_authz HTTP request handling failed", exc_info=cause)
                self._refuse(Refused(400, "malformed"))
        except httptools.HttpParserUpgrade:
            self._refuse(Refused(400, "upgrade"))
        except httptools.HttpParserError:
            self._refuse(Refused(400, "malformed"))

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._repeated = None
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_url_length:
            raise Refused(414, "url_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._max_headers:
            raise Refused(431, "header_too_large")
        key = _header_names.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_header_names) < _HEADER_NAMES_KEPT:
                _header_names[name] = key
        text = value.decode("latin-1")
        headers = self._headers
        if key not in headers:
            headers[key] = text
            return
        # Repeated: collected, joined once the head is complete (linear in the head's size).
        if self._repeated is None:
            self._repeated = {}
        self._repeated.setdefault(key, [headers[key]]).append(text)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._repeated is not None:
            for key, values in self._repeated.items():
                self._headers[key] = ",".join(values)
        parser = self._parser
        if parser.should_upgrade():
            if parser.get_method() == b"CONNECT":
                raise Refused(405, "connect")
            raise Refused(400, "upgrade")
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > self._limits.max_request_bytes:
            raise Refused(413, "body_too_large")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_request_bytes:
            raise Refused(413, "body_too_large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        if len(self._queue) >= MAX_PIPELINED:
            raise Refused(429, "pipeline_depth")
        method = self._parser.get_method().decode("ascii")
        self._queue.append(self._server.context(method, self._url, self._headers, self._body))
        self._body = []
        self._idle_deadline = None
        if not self._busy:
            self._next()
        # Most checks are answered within _next: reading pauses only for one that waits
        # (pausing and resuming for each check costs two system calls). One answered already
        # updated the reading state (_answer).
        if self._busy or self._queue:
            self._update_reading()

    # -- checks, one at a time per connection, answered in order ---------------------------

    def _next(self) -> None:
        while self._queue and not self._busy:
            self._busy = True
            check = self._server.authorizer.check(self._queue.popleft())
            run_eagerly(check, self._answer, self._loop)

    def _answer(self, outcome: Outcome | None, error: BaseException | None) -> None:
        self._busy = False
        transport = self._transport
        if transport is None:
            return
        response = _ERROR_RESPONSE
        if outcome is not None:
            try:
                response = http_response(outcome)
            except ValueError as exc:
                error = exc
        if error is not None:
            # A PolicyError (OPA unreachable, say) says all there is to say in one line.
            traceback = not isinstance(error, PolicyError)
            log.error("ext_authz HTTP check failed: %s", error, exc_info=traceback)
            self._server.error()
        transport.write(response)
        if self._queue:
            self._next()
            return
        if self._refusal is not None:
            self._refuse(self._refusal)
            return
        if not self._parser.should_keep_alive():
            self._closing = True
            transport.close()
            return
        # _update_reading without the call when nothing changes (nothing is queued here).
        if (self._writing_paused or self._closing) != self._reading_paused:
            self._update_reading()
        self._arm_idle()

    # -- limits ------------------------------------------------------------------------------

    def _head_limit(self) -> int:
        return self._limits.max_header_list_size + self._limits.max_url_length + _HEAD_SLACK

    def _refuse(self, refused: Refused) -> None:
        """Answer ``refused`` after the answers already owed, then close."""
        self._closing = True
        if self._busy or self._queue:
            self._refusal = refused
            return
        self._server.refusals(refused.reason)
        if self._transport is not None:
            self._transport.write(refusal_response(refused))
            self._transport.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None:
            return
        pause = self._busy or bool(self._queue) or self._writing_paused or self._closing
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _arm_idle(self) -> None:
        loop = self._loop
        self._idle_deadline = deadline = loop.time() + self._limits.idle_timeout
        if self._idle is None:
            self._idle = loop.call_at(deadline, self._idle_expired)

    def _disarm_idle(self) -> None:
        self._idle_deadline = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_expired(self) -> None:
        self._idle = None
        deadline = self._idle_deadline
        if deadline is None or self._transport is None or self._busy or self._queue:
            return  # a check in flight: its answer sets the next deadline
        loop = self._loop
        if loop.time() < deadline:
            self._idle = loop.call_at(deadline, self._idle_expired)
            return
        if self._head_bytes or not self._in_head:
            # Part of a request arrived and the rest did not (a slowloris, or a lost peer).
            self._server.refusals("request_timeout")
        self._closing = True
        self._transport.close()

    @property
    def reading(self) -> bool:
        """Whether the connection reads from its client now (not paused, not closing)."""
        return self._transport is not None and not self._reading_paused and not self._closing

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


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
        limits: ListenerLimits | None = None,
        on_refusal: RefusalCallback | None = None,
    ) -> None:
        self.authorizer = authorizer
        self.limits = limits or ListenerLimits()
        self.refusals = RefusalReporter("ext_authz_http", on_refusal)
        self._connections: set[HttpCheckProtocol] = set()
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

    def admit(self, connection: HttpCheckProtocol) -> bool:
        """Count ``connection`` in, or refuse it when the listener is full."""
        if len(self._connections) >= self.limits.max_connections:
            self.refusals("max_connections")
            return False
        self._connections.add(connection)
        return True

    def forget(self, connection: HttpCheckProtocol) -> None:
        self._connections.discard(connection)

    @property
    def connections(self) -> frozenset[HttpCheckProtocol]:
        """The connections open now."""
        return frozenset(self._connections)

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
            # Open connections end now too: a stalled client must not hold up shutdown.
            for connection in list(self._connections):
                connection.abort()
            await self._server.wait_closed()

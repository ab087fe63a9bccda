"""gRPC over HTTP/2 served from the event loop: ext_authz Check at a fraction of grpc.aio's cost.

Why it exists: grpc.aio spends most of a call's CPU handing events between grpc core's
thread and the event loop; the same call answered by an asyncio protocol in the loop thread
costs a fraction of it (``bench/extauthz.py`` measures both). This is the default engine of
authd's ext_authz gRPC listener (``authz.grpc_engine = "native"``); the grpc.aio server stays
available as ``"grpcio"`` and serves the same servicers.

This module is the thin asyncio adapter: the HTTP/2 protocol is ``http2.connection`` (sans-I/O),
and this turns its events into calls of grpc-style servicers (``async def Check(self, request,
context)``, async generators for streams): unary, server-streaming and bidirectional methods,
length-prefixed messages up to ``max_request_bytes`` (RESOURCE_EXHAUSTED beyond), no
compression (UNIMPLEMENTED), status and percent-encoded message in trailers (one Trailers-Only
HEADERS frame when there is no message), UNIMPLEMENTED for an unknown method, HTTP 405/415 for
what is not a gRPC request.

Bounds (``ListenerLimits``): connections beyond ``max_connections`` get SETTINGS and GOAWAY
ENHANCE_YOUR_CALM and are closed; a connection with nothing in flight for ``idle_timeout``
gets GOAWAY NO_ERROR and is closed; a streaming call's ``write`` waits while the peer's windows
keep its answers queued (the call, and the requests it has not read, wait with it); reading
stops while the peer does not take what is written. Every refusal goes to a
``RefusalCounter``. Not: TLS, HTTP/1.1 upgrade, server push, deadlines (``grpc-timeout`` is
not enforced; Envoy enforces its own ext_authz timeout) and client-streaming methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from authd.transport.eager import run_eagerly
from authd.transport.grpc.status import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    GrpcError,
    http_status,
    percent_encode,
    status_of,
    status_trailers,
)
from authd.transport.http2 import events as ev
from authd.transport.http2.connection import H2Connection
from authd.transport.http2.frames import CANCEL, ENHANCE_YOUR_CALM, changes_dynamic_table
from authd.transport.limits import ListenerLimits
from authd.transport.refusals import RefusalCounter

__all__ = [
    "GrpcError",
    "NativeGrpcServer",
    "ServicerContext",
    "changes_dynamic_table",
    "percent_encode",
    "status_trailers",
]

LINGER = 1.0  # seconds a connection ended by our GOAWAY is read (and dropped) before closing
STREAM_SEND_BUFFER = 256 * 1024  # a streaming call's write waits while more than this waits
_MESSAGE_PREFIX = struct.Struct(">BI")


@dataclass(frozen=True, slots=True)
class _Method:
    handler: Callable[..., Any]
    deserialize: Callable[[bytes], Any]
    request_streaming: bool
    response_streaming: bool


class _Call:
    __slots__ = (
        "body",
        "context",
        "held",
        "id",
        "metadata",
        "method",
        "more",
        "request_ended",
        "reset",
        "responded",
        "sent_headers",
        "task",
    )

    def __init__(self, stream_id: int, method: _Method, metadata: tuple[tuple[str, str], ...]):
        self.id = stream_id
        self.method = method
        self.metadata = metadata
        self.body = bytearray()
        self.held = 0  # flow-controlled bytes received and not yet acknowledged
        self.request_ended = False
        self.responded = False
        self.reset = False  # gone: reset by either side, or the connection is lost
        self.sent_headers = False
        self.task: asyncio.Future[Any] | None = None  # a call that waits, to cancel on reset
        self.more: asyncio.Future[None] | None = None  # a stream call waiting for data
        self.context: ServicerContext | None = None


class ServicerContext:
    """The part of grpc.aio's ServicerContext that servicers use here."""

    __slots__ = ("_call", "_connection", "code", "details")

    def __init__(self, connection: _Connection, call: _Call) -> None:
        self._connection = connection
        self._call = call
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> NoReturn:
        raise GrpcError(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def write(self, message: Any) -> None:
        """Send a message of a streaming answer; waits while the peer does not take them."""
        call, connection = self._call, self._connection
        if call.reset:
            raise asyncio.CancelledError
        connection.send_message(call, message.SerializeToString())
        connection.write_out()
        await connection.room_for(call)
        if call.reset:
            raise asyncio.CancelledError

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._call.metadata

    def peer(self) -> str:
        return self._connection.peer

    def cancelled(self) -> bool:
        return self._call.reset

    def done(self) -> bool:
        return self._call.reset or self._call.responded


class _Connection(asyncio.Protocol):
    def __init__(self, server: NativeGrpcServer) -> None:
        self._server = server
        self._methods = server.methods
        self._limits = server.limits
        self.h2 = H2Connection(server.limits, on_refusal=server.refusals)
        self._transport: asyncio.Transport | None = None
        self.peer = ""
        self.calls: dict[int, _Call] = {}
        self._batching = False  # inside data_received: answers are written at its end
        self._writing_paused = False
        self._waiters: list[asyncio.Future[None]] = []
        self.going_away = False
        self.closed = False
        self.last_busy = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"ipv{6 if ':' in peer[0] else 4}:{peer[0]}:{peer[1]}"
        else:
            self.peer = "unix:" + (peer or "")
        self.h2.initiate_connection()
        server = self._server
        if len(server.connections) >= self._limits.max_connections:
            self.h2.close_connection(ENHANCE_YOUR_CALM, "too many connections", "max_connections")
            self.write_out()
            self._linger()
            return
        server.connections.add(self)
        self.last_busy = asyncio.get_running_loop().time()
        self.write_out()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connections.discard(self)
        for call in self.calls.values():
            self._drop(call)
        self.calls.clear()
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._transport is not None:
            self._transport.pause_reading()  # a peer that does not read gets nothing more

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # lingering after a connection error: what the peer still sends is dropped
        self._batching = True
        try:
            for event in self.h2.events_from(data):
                kind = type(event)
                if kind is ev.DataReceived:
                    self._on_data(event)  # type: ignore[arg-type]
                elif kind is ev.RequestReceived:
                    self._on_request(event)  # type: ignore[arg-type]
                else:
                    self._on_event(event)
        finally:
            self._batching = False
        self.write_out()
        if self.h2.closed:
            self._linger()
            return
        if self._waiters:
            self._wake()
        if (self.going_away or self.h2.peer_going_away) and not self.busy():
            self.close()

    # --- events ---------------------------------------------------------------------------

    def _on_event(self, event: ev.Event) -> None:
        """Events other than requests and their data (those two are the hot path)."""
        if isinstance(event, ev.StreamEnded):
            call = self.calls.get(event.stream_id)
            if call is not None:
                self._end_of_request(call)
        elif isinstance(event, ev.StreamReset):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                self._drop(call)
        elif isinstance(event, ev.ConnectionTerminated):
            for call in self.calls.values():
                self._drop(call)
            self.calls.clear()
        # GoAwayReceived: h2.peer_going_away; open calls finish, then the connection closes.

    def _on_request(self, event: ev.RequestReceived) -> None:
        head, stream_id = event.head, event.stream_id
        target = self._methods.get(head.path)
        content_type = head.content_type
        if head.method != b"POST":
            self.h2.send_headers(stream_id, http_status(b"405"), end_stream=True)
        elif content_type is None or not content_type.startswith(b"application/grpc"):
            self.h2.send_headers(stream_id, http_status(b"415"), end_stream=True)
        elif target is None:
            shown = head.path.decode("latin-1")
            code = grpc.StatusCode.UNIMPLEMENTED
            trailers = status_trailers(code.value[0], f"unknown method {shown}")
            self.h2.end_stream(stream_id, RESPONSE_HEADERS + trailers)
        else:
            call = _Call(stream_id, target, head.metadata)
            self.calls[stream_id] = call
            if target.request_streaming:
                self._start_stream_call(call)
            if event.end_stream:
                self._end_of_request(call)

    def _on_data(self, event: ev.DataReceived) -> None:
        call = self.calls.get(event.stream_id)
        if call is None or call.responded:
            self.h2.acknowledge_received_data(event.stream_id, event.flow_size)
        else:
            call.body += event.data
            call.held += event.flow_size
            if call.method.request_streaming:
                self._check_next_message(call)
                self._more(call)
            elif len(call.body) > self._limits.max_request_bytes + 5:
                self._server.refusals("max_request_bytes")
                self._finish(
                    call,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"request message larger than {self._limits.max_request_bytes} bytes",
                )
        if event.end_stream and call is not None and not call.responded:
            self._end_of_request(call)

    # --- calls ----------------------------------------------------------------------------

    def _end_of_request(self, call: _Call) -> None:
        call.request_ended = True
        method = call.method
        if call.responded:
            return
        if method.request_streaming:
            self._more(call)
            return
        self.h2.acknowledge_received_data(call.id, call.held)
        call.held = 0
        message = self._single_message(call)
        if message is None:
            return
        try:
            request = method.deserialize(message)
        except DecodeError:
            self._finish(call, grpc.StatusCode.INTERNAL, "cannot parse the request message")
            return
        context = call.context = ServicerContext(self, call)
        if method.response_streaming:
            call.task = asyncio.ensure_future(self._run_stream(call, request, context))
            return
        try:
            coroutine = method.handler(request, context)
        except Exception as exc:
            self._call_done(call, None, exc)
            return
        call.task = run_eagerly(coroutine, lambda result, exc: self._call_done(call, result, exc))

    def _single_message(self, call: _Call) -> bytes | None:
        body = call.body
        if len(body) < 5:
            self._finish(call, grpc.StatusCode.INTERNAL, "request without a message")
            return None
        compressed, length = _MESSAGE_PREFIX.unpack_from(body)
        if compressed:
            self._finish(call, grpc.StatusCode.UNIMPLEMENTED, "compressed messages unsupported")
            return None
        if len(body) != 5 + length:
            self._finish(call, grpc.StatusCode.INTERNAL, "a unary call takes one message")
            return None
        return bytes(body[5:])

    def _call_done(self, call: _Call, result: Any, exc: BaseException | None) -> None:
        if call.reset or call.responded:
            return
        self._answer(call, result, exc)
        # Send each answer as soon as it is ready, not with the rest of the batch it came in:
        # the peer works on the first while we work on the next (one write per answer).
        self.write_out()

    def _answer(self, call: _Call, result: Any, exc: BaseException | None) -> None:
        if exc is None:
            context = call.context
            if context is not None and context.code not in (None, grpc.StatusCode.OK):
                self._finish(call, context.code, context.details)
                return
            try:
                payload = result.SerializeToString()
            except Exception as error:
                exc = error
            else:
                if call.sent_headers or call.reset or call.responded:
                    self.send_message(call, payload)
                    self._finish(call, grpc.StatusCode.OK)
                    return
                call.responded = call.sent_headers = True
                self.calls.pop(call.id, None)
                message = _MESSAGE_PREFIX.pack(0, len(payload)) + payload
                self.h2.respond(call.id, RESPONSE_HEADERS, message, OK_TRAILERS)
                return
        code, message = status_of(exc)
        self._finish(call, code, message)

    def _start_stream_call(self, call: _Call) -> None:
        call.context = ServicerContext(self, call)
        deserialize = call.method.deserialize

        async def requests() -> AsyncIterator[Any]:
            # Messages stay as received bytes until the call reads them, and are given back to
            # the peer's windows only then: what a call has not read is bounded by them.
            while True:
                message = self._next_message(call)
                if message is None:
                    if call.request_ended or call.reset or call.responded:
                        return
                    call.more = asyncio.get_running_loop().create_future()
                    await call.more
                    continue
                self.h2.acknowledge_received_data(call.id, 5 + len(message))
                self.write_out()
                yield deserialize(message)
                await asyncio.sleep(0)  # one stream's messages never starve the loop

        call.task = asyncio.ensure_future(self._run_stream(call, requests(), call.context))

    def _next_message(self, call: _Call) -> bytes | None:
        """The next whole request message of a streaming call, or None until one arrives."""
        body = call.body
        if len(body) < 5:
            return None
        compressed, length = _MESSAGE_PREFIX.unpack_from(body)
        if compressed or length > self._limits.max_request_bytes:
            self._check_next_message(call)
            return None
        if len(body) < 5 + length:
            return None
        message = bytes(body[5 : 5 + length])
        del body[: 5 + length]
        return message

    def _check_next_message(self, call: _Call) -> None:
        """End a streaming call whose next message is compressed or too large."""
        body = call.body
        if len(body) < 5:
            return
        compressed, length = _MESSAGE_PREFIX.unpack_from(body)
        if not compressed and length <= self._limits.max_request_bytes:
            return
        if compressed:
            code = grpc.StatusCode.UNIMPLEMENTED
        else:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            self._server.refusals("max_request_bytes")
        self._finish(call, code, "compressed or oversized request message")
        if call.task is not None:
            call.task.cancel()

    def _more(self, call: _Call) -> None:
        more, call.more = call.more, None
        if more is not None and not more.done():
            more.set_result(None)

    async def _run_stream(self, call: _Call, request: Any, context: ServicerContext) -> None:
        try:
            result = call.method.handler(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    await context.write(response)
            else:
                await result
        except asyncio.CancelledError:
            if not call.reset and not call.responded:
                self._finish(call, grpc.StatusCode.UNAVAILABLE, "the server is stopping")
                self.write_out()
            return
        except Exception as exc:
            self._call_done(call, None, exc)
            return
        if not call.reset and not call.responded:
            self._finish(call, context.code or grpc.StatusCode.OK, context.details)
            self.write_out()

    # --- sending --------------------------------------------------------------------------

    def send_message(self, call: _Call, payload: bytes) -> None:
        if call.reset or call.responded:
            return
        if not call.sent_headers:
            call.sent_headers = True
            self.h2.send_headers(call.id, RESPONSE_HEADERS)
        self.h2.send_data(call.id, _MESSAGE_PREFIX.pack(0, len(payload)) + payload)

    def _finish(self, call: _Call, code: grpc.StatusCode, message: str = "") -> None:
        """Send the status: as trailers, or as a Trailers-Only response if nothing was sent."""
        if call.reset or call.responded:
            return
        call.responded = True
        self.calls.pop(call.id, None)
        trailers = (
            OK_TRAILERS if code is grpc.StatusCode.OK else status_trailers(code.value[0], message)
        )
        if not call.sent_headers:
            call.sent_headers = True
            trailers = RESPONSE_HEADERS + trailers
        self.h2.end_stream(call.id, trailers)
        call.body.clear()

    async def room_for(self, call: _Call) -> None:
        """Wait while ``call``'s answers wait for the peer (its windows, or its reading)."""
        h2, limit = self.h2, self._limits.max_connection_buffer
        while (
            not call.reset
            and not self.closed
            and (
                self._writing_paused
                or h2.stream_pending(call.id) > STREAM_SEND_BUFFER
                or h2.buffered_bytes > limit
            )
        ):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def write_out(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed and self._transport is not None:
            self._transport.write(data)

    def _drop(self, call: _Call) -> None:
        call.reset = True
        call.body.clear()
        if call.task is not None and not call.task.done():
            call.task.cancel()

    def busy(self) -> bool:
        """A request in flight, or answers the peer has not taken yet."""
        return bool(self.calls or self.h2.streams)

    def shut_down(self) -> None:
        """Refuse new streams (GOAWAY naming the last one accepted); close once idle."""
        if self.closed:
            return
        self.going_away = True
        self.h2.start_shutdown()
        self.write_out()
        if not self.busy():
            self.close()

    def close(self) -> None:
        if self._batching:  # data_received closes once its frames are written
            return
        self.closed = True
        self._wake()
        if self._transport is not None:
            self._transport.close()

    def _linger(self) -> None:
        """After our GOAWAY for an error: end our side, drop what the peer still sends.

        Closing with unread input makes the kernel reset the connection, and a reset can
        discard the GOAWAY before the peer reads it; so the socket stays open for reading
        (and dropping) until the peer closes, or LINGER seconds at most.
        """
        self.closed = True
        self._server.connections.discard(self)
        self._wake()
        transport = self._transport
        if transport is None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER, transport.abort)

    def abort(self) -> None:
        """Close now, dropping what the peer did not take (stop's last word)."""
        for call in list(self.calls.values()):
            self.h2.reset_stream(call.id, CANCEL)
        self.closed = True
        self._wake()
        if self._transport is not None:
            self._transport.abort()


class NativeGrpcServer:
    """Serves grpc-style servicers on TCP addresses and Unix sockets within ``limits``."""

    def __init__(
        self,
        limits: ListenerLimits | None = None,
        *,
        refusals: RefusalCounter | None = None,
    ) -> None:
        self.limits = limits or ListenerLimits()
        self.refusals = refusals or RefusalCounter("ext_authz_grpc")
        self.methods: dict[bytes, _Method] = {}
        self.connections: set[_Connection] = set()
        self._servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.Task[None] | None = None

    def add_servicer(self, service: ServiceDescriptor, servicer: object) -> None:
        """Serve every method of ``service`` that ``servicer`` implements."""
        for method in service.methods:
            handler = getattr(servicer, method.name, None)
            if handler is None:
                continue
            if method.client_streaming and not method.server_streaming:
                raise ValueError(f"{method.full_name}: client-streaming methods are not served")
            request_class = message_factory.GetMessageClass(method.input_type)
            path = f"/{service.full_name}/{method.name}".encode("ascii")
            self.methods[path] = _Method(
                handler=handler,
                deserialize=request_class.FromString,
                request_streaming=method.client_streaming,
                response_streaming=method.server_streaming,
            )

    def protocol(self) -> asyncio.Protocol:
        """The protocol of one new connection (what the listeners make per accept)."""
        return _Connection(self)

    async def listen_tcp(self, address: str) -> int:
        """Listen on ``host:port`` (port 0 picks one); returns the port. Raises OSError."""
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self.protocol, host.strip("[]") or None, int(port), reuse_port=False
        )
        self._started(server)
        sockets = server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else int(port)

    async def listen_unix(self, path: str) -> None:
        """Listen on a Unix socket, replacing a stale socket file but never a live one."""
        _remove_stale_socket(path)
        loop = asyncio.get_running_loop()
        self._started(await loop.create_unix_server(self.protocol, path))

    def _started(self, server: asyncio.base_events.Server) -> None:
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        period = max(0.05, min(1.0, self.limits.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.close_idle(loop.time())

    def close_idle(self, now: float) -> int:
        """GOAWAY NO_ERROR and close each connection idle since ``idle_timeout`` before ``now``.

        Returns how many were closed. Called periodically; tests call it with a clock of
        their own instead of waiting.
        """
        closed = 0
        for connection in list(self.connections):
            if connection.busy():
                connection.last_busy = now
            elif now - connection.last_busy >= self.limits.idle_timeout:
                self.refusals("idle_timeout")
                connection.shut_down()
                closed += 1
        return closed

    async def stop(self, grace: float) -> None:
        """Stop accepting, let calls in flight finish for up to ``grace`` seconds, close."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.shut_down()
            for call in list(connection.calls.values()):
                if call.method.response_streaming and call.task is not None:
                    call.task.cancel()  # watches never end by themselves
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(c.busy() for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.busy():
                connection.abort()
            else:
                connection.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover of a process that died
    else:
        raise OSError(f"{path} is in use by another process")
    finally:
        probe.close()

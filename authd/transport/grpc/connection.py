"""One connection of the native gRPC server: the asyncio adapter around the HTTP/2 core.

Socket bytes go to ``H2Connection``; its events become calls of grpc-style servicers, and
what the core queues is written back. See ``authd.transport.grpc_server`` for what is served
and within which bounds.
"""

from __future__ import annotations

import asyncio
import inspect
import struct
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from authd.transport.eager import run_eagerly
from authd.transport.grpc.call import Call, Method, ServicerContext
from authd.transport.grpc.status import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    http_status,
    status_of,
    status_trailers,
)
from authd.transport.http2 import events as ev
from authd.transport.http2.connection import H2Connection
from authd.transport.http2.frames import CANCEL, ENHANCE_YOUR_CALM
from authd.transport.limits import ListenerLimits
from authd.transport.refusals import RefusalReporter

LINGER = 1.0  # seconds a connection ended by our GOAWAY is read (and dropped) before closing
STREAM_SEND_BUFFER = 256 * 1024  # a streaming call's write waits while more than this waits
# Frames read per turn of the loop: a read holding more (thousands of small frames, each
# maybe a Check) is read on in later turns, with reading paused, so other connections are
# served between its chunks. A Check is two frames; Envoy's reads hold far fewer.
FRAMES_PER_TURN = 128
_MESSAGE_PREFIX = struct.Struct(">BI")


class Listener(Protocol):
    """What a connection needs of the server that accepted it."""

    methods: dict[bytes, Method]
    limits: ListenerLimits
    refusals: RefusalReporter
    connections: set[GrpcConnection]


class GrpcConnection(asyncio.Protocol):
    """gRPC calls over one HTTP/2 connection."""

    def __init__(self, server: Listener) -> None:
        self._server = server
        self._methods = server.methods
        self._limits = server.limits
        self.h2 = H2Connection(server.limits, on_refusal=server.refusals)
        self._transport: asyncio.Transport | None = None
        self.peer = ""
        self.calls: dict[int, Call] = {}
        self._batching = False  # inside data_received: answers are written at its end
        self._writing_paused = False
        self._frames_waiting = False  # reading paused: the core holds frames for the next turn
        self._waiters: list[asyncio.Future[None]] = []
        self.going_away = False
        self.closed = False
        self.last_busy = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
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
        self.last_busy = self._loop.time()
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
        if self._transport is not None and not self.closed and not self._frames_waiting:
            self._transport.resume_reading()
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # lingering after a connection error: what the peer still sends is dropped
        self._read(data)

    def _read_on(self) -> None:
        """The next turn's frames of a read that held more than FRAMES_PER_TURN."""
        if self.closed:
            return
        self._read(b"")

    def _read(self, data: bytes) -> None:
        self._batching = True
        try:
            for event in self.h2.events_from(data, FRAMES_PER_TURN):
                kind = type(event)
                if kind is ev.DataReceived:
                    self._on_data(event)  # type: ignore[arg-type]
                elif kind is ev.RequestReceived:
                    self._on_request(event)  # type: ignore[arg-type]
                else:
                    self._on_event(event)
        finally:
            self._batching = False
        h2 = self.h2
        if h2.output:
            self.write_out()
        if h2.closed:
            self._linger()
            return
        if h2._buffer and h2.frame_waiting:  # nothing buffered: no frame waits (no call)
            if not self._frames_waiting and self._transport is not None:
                self._frames_waiting = True
                self._transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._read_on)
        elif self._frames_waiting:
            self._frames_waiting = False
            if self._transport is not None and not self._writing_paused:
                self._transport.resume_reading()
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
            call = Call(stream_id, target, head.metadata)
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

    def _end_of_request(self, call: Call) -> None:
        call.request_ended = True
        method = call.method
        if call.responded:
            return
        if method.request_streaming:
            self._more(call)
            return
        self.h2.acknowledge_received_data(call.id, call.held)
        call.held = 0
        body = call.body
        if len(body) > 5 and _MESSAGE_PREFIX.unpack_from(body) == (0, len(body) - 5):
            message = bytes(body[5:])  # the usual: one whole uncompressed message
        else:
            single = self._single_message(call)
            if single is None:
                return
            message = single
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
        call.task = run_eagerly(coroutine, partial(self._call_done, call), self._loop)

    def _single_message(self, call: Call) -> bytes | None:
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

    def _call_done(self, call: Call, result: Any, exc: BaseException | None) -> None:
        if call.reset or call.responded:
            return
        self._answer(call, result, exc)
        # Send each answer as soon as it is ready, not with the rest of the batch it came in:
        # the peer works on the first while we work on the next (one write per answer).
        self.write_out()

    def _answer(self, call: Call, result: Any, exc: BaseException | None) -> None:
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

    def _start_stream_call(self, call: Call) -> None:
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

    def _next_message(self, call: Call) -> bytes | None:
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

    def _check_next_message(self, call: Call) -> None:
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

    def _more(self, call: Call) -> None:
        more, call.more = call.more, None
        if more is not None and not more.done():
            more.set_result(None)

    async def _run_stream(self, call: Call, request: Any, context: ServicerContext) -> None:
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

    def send_message(self, call: Call, payload: bytes) -> None:
        if call.reset or call.responded:
            return
        if not call.sent_headers:
            call.sent_headers = True
            self.h2.send_headers(call.id, RESPONSE_HEADERS)
        self.h2.send_data(call.id, _MESSAGE_PREFIX.pack(0, len(payload)) + payload)

    def _finish(self, call: Call, code: grpc.StatusCode, message: str = "") -> None:
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

    async def room_for(self, call: Call) -> None:
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

    def _drop(self, call: Call) -> None:
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

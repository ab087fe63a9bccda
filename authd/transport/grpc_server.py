"""gRPC over HTTP/2 served from the event loop: ext_authz Check at a fraction of grpc.aio's cost.

Why it exists: measured here (``bench/extauthz.py``, Envoy ``--concurrency 1``), grpc.aio
spends ~125 µs of CPU on a call that does nothing, because grpc core polls its completion queue
on its own thread and hands each event to the event loop (5-7 context switches per call).
The same call answered by an asyncio protocol in the loop thread costs ~11 µs, most of it
the system calls (a header block that cannot change the HPACK table, which is what Envoy sends
once its headers are indexed, is decoded once and remembered: Huffman decoding in Python was
the dearest part otherwise). This is the default engine of authd's ext_authz gRPC listener
(``authz.grpc_engine = "native"``); the grpc.aio server stays available as ``"grpcio"`` and
serves the same servicers.

What it speaks, server side only:

- HTTP/2 (RFC 9113) in cleartext with prior knowledge, which is what Envoy's ``envoy_grpc``
  clusters and gRPC clients use towards a plaintext server: the connection preface, SETTINGS
  (acknowledged; the peer's INITIAL_WINDOW_SIZE and MAX_FRAME_SIZE are honoured), PING,
  GOAWAY both ways, RST_STREAM, flow control in both directions (WINDOW_UPDATE; what the peer's
  windows do not admit waits for them), HEADERS with CONTINUATION, padding and priority
  fields, unknown frame types ignored; protocol violations end the connection with GOAWAY and
  the RFC's error code. Header blocks are decoded by the ``hpack`` package (dynamic table,
  Huffman); ours are literals that never touch the dynamic table.
- gRPC over HTTP/2: unary, server-streaming and bidirectional methods of grpc-style servicers
  (``async def Check(self, request, context)``, async generators for streams), length-prefixed
  messages, a maximum message size (RESOURCE_EXHAUSTED), no compression (a compressed message
  gets UNIMPLEMENTED), status and percent-encoded message in trailers (one Trailers-Only
  HEADERS frame when there is no message), UNIMPLEMENTED for an unknown method, HTTP 415 for a
  content-type that is not ``application/grpc``.
- Limits: 1,000 concurrent streams per connection, 4 MiB per message, and 16 MiB of request
  data held per connection: bytes are given back to the peer's window only once their request
  is handed on, and a peer that sends beyond its window is disconnected (FLOW_CONTROL_ERROR).
- Not: TLS, HTTP/1.1 upgrade, server push, deadlines (``grpc-timeout`` is not enforced; Envoy
  enforces its own ext_authz timeout) and client-streaming methods (no servicer here has one).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import hpack
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from authd.transport.eager import run_eagerly
from authd.transport.sockets import parse_host_port, remove_stale_socket

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Settings.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
# Error codes (RFC 9113 §7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
FRAME_SIZE = 16_384  # the largest frame we accept: the protocol default, never raised
RECEIVE_WINDOW = 1 << 24  # advertised per stream and for the connection
MAX_STREAMS = 1000
MAX_HEADER_LIST = 16 * 1024
MAX_MESSAGE = 4 * 1024 * 1024  # grpcio's default receive limit
MAX_STATUS_MESSAGE = 1024

_HEADER = struct.Struct(">IBI")  # 24-bit length and type in one word, flags, stream id
_SETTING = struct.Struct(">HI")
_MESSAGE_PREFIX = struct.Struct(">BI")


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack((len(payload) << 8) | kind, flags, stream_id) + payload


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing (the dynamic table is untouched)."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


_STATUS_200 = b"\x88"  # static table entry 8, ":status: 200"
_RESPONSE_HEADERS = _STATUS_200 + _literal(b"content-type", b"application/grpc")
_OK_TRAILERS = _literal(b"grpc-status", b"0")
_SETTINGS_PAYLOAD = b"".join(
    _SETTING.pack(ident, value)
    for ident, value in (
        (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
        (SETTINGS_INITIAL_WINDOW_SIZE, RECEIVE_WINDOW),
        (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
    )
)
_GREETING = _frame(SETTINGS, 0, 0, _SETTINGS_PAYLOAD) + _frame(
    WINDOW_UPDATE, 0, 0, (RECEIVE_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")
)
_SETTINGS_ACK = _frame(SETTINGS, ACK, 0)
_PERCENT_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}


def _hpack_int_end(block: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    """The HPACK integer at ``position`` (RFC 7541 §5.1): its value and where it ends."""
    value = block[position] & ((1 << prefix_bits) - 1)
    position += 1
    if value < (1 << prefix_bits) - 1:
        return value, position
    shift = 0
    while True:
        byte = block[position]
        position += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def changes_dynamic_table(block: bytes) -> bool:
    """Whether a (valid) header block adds to or resizes the HPACK dynamic table.

    Indexed fields and literals without indexing or never indexed leave it as it is; a
    literal with incremental indexing or a table size update changes it (RFC 7541 §6).
    """
    position, end = 0, len(block)
    while position < end:
        first = block[position]
        if first & 0x80:  # indexed field
            _, position = _hpack_int_end(block, position, 7)
        elif first & 0xE0 != 0:  # 01xxxxxx incremental indexing, 001xxxxx size update
            return True
        else:  # 0000xxxx without indexing, 0001xxxx never indexed: skip name and value
            name_index, position = _hpack_int_end(block, position, 4)
            for _ in range(1 if name_index else 2):
                length, position = _hpack_int_end(block, position, 7)
                position += length
    return False


def percent_encode(message: str) -> bytes:
    """grpc-message encoding: printable ASCII except '%' as is, every other byte as %XX."""
    return b"".join(
        bytes((b,)) if b in _PERCENT_SAFE else b"%%%02X" % b for b in message.encode("utf-8")
    )


def status_trailers(code: int, message: str = "") -> bytes:
    block = _literal(b"grpc-status", str(code).encode("ascii"))
    if message:
        block += _literal(b"grpc-message", percent_encode(message[:MAX_STATUS_MESSAGE]))
    return block


class GrpcError(Exception):
    """End a call with a gRPC status (``context.abort`` raises this)."""

    def __init__(self, code: grpc.StatusCode, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Method:
    handler: Callable[..., Any]
    deserialize: Callable[[bytes], Any]
    request_streaming: bool
    response_streaming: bool


@dataclass(frozen=True, slots=True)
class _RequestHead:
    """What a request's header block says: pseudo-headers, content-type, the metadata."""

    method: bytes | None
    path: bytes | None
    content_type: bytes | None
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, headers: Iterable[tuple[bytes, bytes]]) -> _RequestHead:
        method = path = content_type = None
        metadata = []
        for name, value in headers:
            if name.startswith(b":"):
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                continue
            if name == b"content-type":
                content_type = value
            metadata.append((name.decode("latin-1"), value.decode("latin-1")))
        return cls(method, path, content_type, tuple(metadata))


class _Stream:
    __slots__ = (
        "body",
        "buffered",
        "context",
        "id",
        "metadata",
        "method",
        "pending",
        "recv_window",
        "request_ended",
        "requests",
        "reset",
        "responded",
        "send_window",
        "sent_headers",
        "task",
        "trailers",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.method: _Method | None = None
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.body = bytearray()
        self.request_ended = False
        self.responded = False  # the final HEADERS (END_STREAM) is written or queued
        self.reset = False  # gone: reset by either side, or the connection is lost
        self.sent_headers = False
        self.pending = bytearray()  # DATA payload the flow-control windows did not admit yet
        self.task: asyncio.Future[Any] | None = None  # a call that waits, to cancel on reset
        self.requests: asyncio.Queue[bytes | None] | None = None
        self.context: ServicerContext | None = None
        self.trailers: bytes | None = None  # the final HEADERS block, once pending DATA is out
        self.recv_window = RECEIVE_WINDOW  # what the peer may still send on this stream
        self.buffered = 0  # received bytes held in ``body``, not yet given back to the windows

    def request_streaming_open(self) -> bool:
        """A request stream still being read (its window is worth replenishing)."""
        return (
            self.method is not None
            and self.method.request_streaming
            and not self.request_ended
            and not self.reset
        )


class ServicerContext:
    """The part of grpc.aio's ServicerContext that servicers use here."""

    __slots__ = ("_connection", "_stream", "code", "details")

    def __init__(self, connection: _Connection, stream: _Stream) -> None:
        self._connection = connection
        self._stream = stream
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> NoReturn:
        raise GrpcError(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def write(self, message: Any) -> None:
        if self._stream.reset:
            raise asyncio.CancelledError
        self._connection.send_message(self._stream, message.SerializeToString())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._stream.metadata

    def peer(self) -> str:
        return self._connection.peer

    def cancelled(self) -> bool:
        return self._stream.reset

    def done(self) -> bool:
        return self._stream.reset or self._stream.responded


class _Connection(asyncio.Protocol):
    def __init__(self, server: NativeGrpcServer) -> None:
        self._server = server
        self._methods = server.methods
        self._transport: asyncio.Transport | None = None
        self.peer = ""
        self._buffer = b""
        self._preface_seen = False
        self._settings_seen = False
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_LIST
        self.streams: dict[int, _Stream] = {}
        self._last_stream_id = 0
        self._continuation: tuple[int, int, bytearray] | None = None
        self._send_window = DEFAULT_WINDOW  # the peer's connection window: what we may send
        self._initial_send_window = DEFAULT_WINDOW  # its SETTINGS_INITIAL_WINDOW_SIZE
        self._max_send_frame = FRAME_SIZE
        # What the peer may still send on the connection, and what we consumed since our last
        # WINDOW_UPDATE: request bytes are given back only once handed on, so what one
        # connection holds unanswered stays under RECEIVE_WINDOW.
        self._recv_window = RECEIVE_WINDOW
        self._released = 0
        self._table_size_changed = False  # the peer's SETTINGS_HEADER_TABLE_SIZE changed
        self._table_version = 0  # counts header blocks that may have changed the table
        self._last_block = b""
        self._last_version = -1
        self._last_head = _RequestHead(None, None, None, ())
        self._out: list[bytes] | None = None  # frames gathered while one read is handled
        self.going_away = False
        self._closed = False
        self._close_after_write = False

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"ipv{6 if ':' in peer[0] else 4}:{peer[0]}:{peer[1]}"
        else:
            self.peer = "unix:" + (peer or "")
        self._server.connections.add(self)
        transport.write(_GREETING)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        for stream in self.streams.values():
            self._drop(stream)
        self.streams.clear()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()  # a peer that does not read gets nothing more

    def resume_writing(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        if not self._preface_seen:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(buffer):
                    self._close_with(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._buffer = buffer
                return
            if not buffer.startswith(PREFACE):
                self._close_with(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            buffer = buffer[len(PREFACE) :]
            self._preface_seen = True
        self._out = out = []
        pos, end = 0, len(buffer)
        try:
            while end - pos >= 9:
                word, flags, stream_id = _HEADER.unpack_from(buffer, pos)
                length = word >> 8
                if length > FRAME_SIZE:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "frame larger than MAX_FRAME_SIZE")
                if end - pos - 9 < length:
                    break
                start = pos + 9
                pos = start + length
                self._on_frame(word & 0xFF, flags, stream_id & 0x7FFFFFFF, buffer[start:pos])
        except _ConnectionError as exc:
            out.append(self._goaway(exc.code, exc.message))
            self._closed = True
        finally:
            self._out = None
            if out and self._transport is not None:
                self._transport.write(b"".join(out))
        if self._closed or self._close_after_write:
            self.close()
            return
        self._buffer = buffer[pos:]
        if self.going_away and not self.streams:
            self.close()

    # --- frames ---------------------------------------------------------------------------

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected a CONTINUATION frame")
        if not self._settings_seen and kind != SETTINGS:
            raise _ConnectionError(PROTOCOL_ERROR, "the first frame must be SETTINGS")
        if kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == PING:
            if stream_id != 0:
                raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self._emit(_frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif kind == GOAWAY:
            if stream_id != 0:
                raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            self.going_away = True  # the peer opens no more streams; finish the open ones
        elif kind == PRIORITY:
            if stream_id == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._reset(stream_id, FRAME_SIZE_ERROR)
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "a client cannot push")
        # Unknown frame types are ignored (RFC 9113 §5.5).

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        self._settings_seen = True
        grew = False
        for offset in range(0, len(payload), 6):
            ident, value = _SETTING.unpack_from(payload, offset)
            if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta = value - self._initial_send_window
                self._initial_send_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                grew = grew or delta > 0
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                if not FRAME_SIZE <= value <= 2**24 - 1:
                    raise _ConnectionError(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._max_send_frame = value
            elif ident == SETTINGS_HEADER_TABLE_SIZE:
                self._table_size_changed = True
            elif ident == SETTINGS_ENABLE_PUSH and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        self._emit(_SETTINGS_ACK)
        if grew:
            self._flush_all()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self._flush_all()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0:
            self._reset(stream_id, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream_id, FLOW_CONTROL_ERROR)
            return
        self._flush(stream)

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
        if stream_id == 0 or stream_id > self._last_stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self._drop(stream)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._on_header_block(flags, stream_id, payload)
        else:
            self._continuation = (stream_id, flags, bytearray(payload))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is None or self._continuation[0] != stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION frame")
        _, first_flags, block = self._continuation
        block += payload
        if len(block) > 4 * MAX_HEADER_LIST:
            raise _ConnectionError(PROTOCOL_ERROR, "header block too large")
        if flags & END_HEADERS:
            self._continuation = None
            self._on_header_block(first_flags, stream_id, bytes(block))

    def _request_head(self, block: bytes) -> _RequestHead:
        """Decode a header block (every one, even of a refused stream: the table must follow).

        Once Envoy's headers are in the dynamic table, it sends the same bytes each time:
        indexed fields and a ``:path`` literal it never indexes. A block that does not change
        the dynamic table decodes the same way until the table changes, so the last such block
        is remembered with the table's version and not decoded again (Huffman decoding in
        Python is the dearest part of a call otherwise).
        """
        if block == self._last_block and self._table_version == self._last_version:
            return self._last_head
        try:
            head = _RequestHead.of(self._decoder.decode(block, raw=True))
        except hpack.HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        if changes_dynamic_table(block):
            self._table_version += 1
        else:
            self._last_block, self._last_version, self._last_head = block, self._table_version, head
        return head

    def _on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        head = self._request_head(block)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: they must end its side
            if not flags & END_STREAM:
                self._reset(stream_id, PROTOCOL_ERROR)
            elif not stream.request_ended:
                self._end_of_request(stream)
            return
        if stream_id <= self._last_stream_id or not stream_id % 2:
            raise _ConnectionError(PROTOCOL_ERROR, "stream id not a new odd number")
        self._last_stream_id = stream_id
        if self.going_away or len(self.streams) >= MAX_STREAMS:
            self._emit(_frame(RST_STREAM, 0, stream_id, REFUSED_STREAM.to_bytes(4, "big")))
            return
        stream = _Stream(stream_id, self._initial_send_window)
        self.streams[stream_id] = stream
        stream.metadata = head.metadata
        path, content_type = head.path, head.content_type
        ended = bool(flags & END_STREAM)
        target = self._methods.get(path or b"")
        if head.method != b"POST":
            stream.request_ended = ended
            self._http_error(stream, b"405")
        elif content_type is None or not content_type.startswith(b"application/grpc"):
            stream.request_ended = ended
            self._http_error(stream, b"415")
        elif target is None:
            stream.request_ended = ended
            shown = (path or b"").decode("latin-1")
            self._finish(stream, grpc.StatusCode.UNIMPLEMENTED, f"unknown method {shown}")
        else:
            stream.method = target
            if target.request_streaming:
                self._start_stream_call(stream, target)
            if ended:
                self._end_of_request(stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._recv_window -= size
        if self._recv_window < 0:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            self._release(size)  # a stream already answered or reset: frames in flight
            return
        if stream.request_ended:
            self._release(size)
            self._reset(stream_id, STREAM_CLOSED)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._release(size)
            self._reset(stream_id, FLOW_CONTROL_ERROR)
            return
        if flags & PADDED:
            payload = _unpad(payload)
        method = stream.method
        if method is not None and not stream.responded:
            stream.body += payload
            stream.buffered += size
            if method.request_streaming:
                self._queue_messages(stream)
            elif len(stream.body) > MAX_MESSAGE + 5:
                self._finish(
                    stream,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"request message larger than {MAX_MESSAGE} bytes",
                )
        else:
            self._release(size)
        if flags & END_STREAM:
            self._end_of_request(stream)

    def _release(self, size: int) -> None:
        """Give ``size`` consumed bytes back to the peer's connection window, in large steps."""
        self._released += size
        if self._released >= RECEIVE_WINDOW // 2:
            self._emit(_frame(WINDOW_UPDATE, 0, 0, self._released.to_bytes(4, "big")))
            self._recv_window += self._released
            self._released = 0

    def _release_stream(self, stream: _Stream) -> None:
        """Give back what ``stream`` holds: to the connection, and to the stream if it goes on."""
        size, stream.buffered = stream.buffered, 0
        if not size:
            return
        self._release(size)
        if stream.request_streaming_open():
            stream.recv_window += size
            self._emit(_frame(WINDOW_UPDATE, 0, stream.id, size.to_bytes(4, "big")))

    # --- calls ----------------------------------------------------------------------------

    def _end_of_request(self, stream: _Stream) -> None:
        stream.request_ended = True
        method = stream.method
        if stream.responded or method is None:
            self._forget_if_done(stream)
            return
        if method.request_streaming:
            assert stream.requests is not None
            stream.requests.put_nowait(None)
            return
        self._release_stream(stream)
        message = self._single_message(stream)
        if message is None:
            return
        try:
            request = method.deserialize(message)
        except DecodeError:
            self._finish(stream, grpc.StatusCode.INTERNAL, "cannot parse the request message")
            return
        context = stream.context = ServicerContext(self, stream)
        if method.response_streaming:
            stream.task = asyncio.ensure_future(self._run_stream(stream, request, context))
            return
        try:
            coroutine = method.handler(request, context)
        except Exception as exc:
            self._call_done(stream, None, exc)
            return
        stream.task = run_eagerly(
            coroutine, lambda result, exc: self._call_done(stream, result, exc)
        )

    def _single_message(self, stream: _Stream) -> bytes | None:
        body = stream.body
        if len(body) < 5:
            self._finish(stream, grpc.StatusCode.INTERNAL, "request without a message")
            return None
        compressed, length = _MESSAGE_PREFIX.unpack_from(body)
        if compressed:
            self._finish(stream, grpc.StatusCode.UNIMPLEMENTED, "compressed messages unsupported")
            return None
        if len(body) != 5 + length:
            self._finish(stream, grpc.StatusCode.INTERNAL, "a unary call takes one message")
            return None
        return bytes(body[5:])

    def _call_done(self, stream: _Stream, result: Any, exc: BaseException | None) -> None:
        if stream.reset or stream.responded:
            return
        self._answer(stream, result, exc)
        # Send each answer as soon as it is ready, not with the rest of the batch it came in:
        # the peer works on the first while we work on the next (one write per answer).
        out = self._out
        if out and self._transport is not None:
            self._transport.write(b"".join(out))
            out.clear()

    def _answer(self, stream: _Stream, result: Any, exc: BaseException | None) -> None:
        if exc is None:
            context = stream.context
            if context is not None and context.code not in (None, grpc.StatusCode.OK):
                self._finish(stream, context.code, context.details)
                return
            try:
                payload = result.SerializeToString()
            except Exception as error:
                exc = error
            else:
                self.send_message(stream, payload)
                self._finish(stream, grpc.StatusCode.OK)
                return
        code, message = _status_of(exc)
        self._finish(stream, code, message)

    def _start_stream_call(self, stream: _Stream, method: _Method) -> None:
        stream.requests = asyncio.Queue()
        stream.context = ServicerContext(self, stream)

        async def requests() -> AsyncIterator[Any]:
            assert stream.requests is not None
            while (message := await stream.requests.get()) is not None:
                yield method.deserialize(message)

        stream.task = asyncio.ensure_future(self._run_stream(stream, requests(), stream.context))

    def _queue_messages(self, stream: _Stream) -> None:
        body = stream.body
        assert stream.requests is not None
        while len(body) >= 5:
            compressed, length = _MESSAGE_PREFIX.unpack_from(body)
            if compressed or length > MAX_MESSAGE:
                code = (
                    grpc.StatusCode.UNIMPLEMENTED
                    if compressed
                    else grpc.StatusCode.RESOURCE_EXHAUSTED
                )
                self._finish(stream, code, "compressed or oversized request message")
                if stream.task is not None:
                    stream.task.cancel()
                return
            if len(body) < 5 + length:
                break
            stream.requests.put_nowait(bytes(body[5 : 5 + length]))
            del body[: 5 + length]
            self._release_stream(stream)

    async def _run_stream(self, stream: _Stream, request: Any, context: ServicerContext) -> None:
        assert stream.method is not None
        try:
            result = stream.method.handler(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    await context.write(response)
            else:
                await result
        except asyncio.CancelledError:
            if not stream.reset and not stream.responded:
                self._finish(stream, grpc.StatusCode.UNAVAILABLE, "the server is stopping")
            return
        except Exception as exc:
            self._call_done(stream, None, exc)
            return
        if not stream.reset and not stream.responded:
            code = context.code or grpc.StatusCode.OK
            self._finish(stream, code, context.details)

    # --- sending --------------------------------------------------------------------------

    def send_message(self, stream: _Stream, payload: bytes) -> None:
        if stream.reset or stream.responded:
            return
        if not stream.sent_headers:
            stream.sent_headers = True
            self._emit(self._headers(stream.id, 0, _RESPONSE_HEADERS))
        stream.pending += _MESSAGE_PREFIX.pack(0, len(payload))
        stream.pending += payload
        self._flush(stream)

    def _finish(self, stream: _Stream, code: grpc.StatusCode, message: str = "") -> None:
        """Send the status: as trailers, or as a Trailers-Only response if nothing was sent."""
        if stream.reset or stream.responded:
            return
        stream.responded = True
        trailers = (
            _OK_TRAILERS if code is grpc.StatusCode.OK else status_trailers(code.value[0], message)
        )
        if not stream.sent_headers:
            stream.sent_headers = True
            trailers = _RESPONSE_HEADERS + trailers
        if not stream.pending:
            self._emit(self._headers(stream.id, END_STREAM, trailers))
            self._forget_if_done(stream)
        else:
            stream.trailers = trailers

    def _http_error(self, stream: _Stream, status: bytes) -> None:
        stream.responded = stream.sent_headers = True
        block = _literal(b":status", status)
        self._emit(self._headers(stream.id, END_STREAM, block))
        self._forget_if_done(stream)

    def _flush(self, stream: _Stream) -> None:
        """Send what the windows admit of the stream's pending DATA, then its trailers."""
        pending = stream.pending
        while pending:
            allowed = min(self._send_window, stream.send_window, self._max_send_frame)
            if allowed <= 0:
                return
            chunk = bytes(pending[:allowed])
            del pending[:allowed]
            self._send_window -= len(chunk)
            stream.send_window -= len(chunk)
            self._emit(_frame(DATA, 0, stream.id, chunk))
        if stream.trailers is not None:
            self._emit(self._headers(stream.id, END_STREAM, stream.trailers))
            stream.trailers = None
            self._forget_if_done(stream)

    def _flush_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending:
                self._flush(stream)

    def _forget_if_done(self, stream: _Stream) -> None:
        if not stream.responded or stream.pending:
            return
        if not stream.request_ended:
            # Answered before the client finished sending: tell it to stop (RFC 9113 §8.1).
            self._emit(_frame(RST_STREAM, 0, stream.id, NO_ERROR.to_bytes(4, "big")))
        self.streams.pop(stream.id, None)
        stream.reset = True
        stream.body.clear()
        self._release_stream(stream)
        if self.going_away and not self.streams:
            self.close()

    def _reset(self, stream_id: int, code: int) -> None:
        self._emit(_frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self._drop(stream)

    def _drop(self, stream: _Stream) -> None:
        stream.reset = True
        stream.pending.clear()
        stream.body.clear()
        self._release_stream(stream)
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()

    def _headers(self, stream_id: int, flags: int, block: bytes) -> bytes:
        """A HEADERS frame; the first after the peer changed its table size says ours is 0."""
        if self._table_size_changed:
            self._table_size_changed = False
            block = b"\x20" + block  # dynamic table size update to 0 (RFC 7541 §6.3)
        return _frame(HEADERS, END_HEADERS | flags, stream_id, block)

    def _emit(self, frame: bytes) -> None:
        if self._out is not None:
            self._out.append(frame)
        elif self._transport is not None and not self._closed:
            self._transport.write(frame)

    def _goaway(self, code: int, message: str) -> bytes:
        debug = message.encode("utf-8")[:256]
        payload = self._last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + debug
        return _frame(GOAWAY, 0, 0, payload)

    def _close_with(self, code: int, message: str) -> None:
        self._emit(self._goaway(code, message))
        self.close()

    def shut_down(self) -> None:
        """Refuse new streams (GOAWAY naming the last one accepted); close once idle."""
        if self._closed:
            return
        self.going_away = True
        self._emit(self._goaway(NO_ERROR, "authd is stopping"))
        if not self.streams:
            self.close()

    def close(self) -> None:
        if self._out is not None:  # inside data_received: close once its frames are written
            self._close_after_write = True
            return
        self._closed = True
        if self._transport is not None:
            self._transport.close()


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise _ConnectionError(PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]


def _status_of(exc: BaseException | None) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, GrpcError):
        return exc.code, exc.message
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the call was cancelled"
    log.error("gRPC handler failed", exc_info=exc)
    return grpc.StatusCode.UNKNOWN, f"unexpected {type(exc).__name__}"


class NativeGrpcServer:
    """Serves grpc-style servicers on TCP addresses and Unix sockets."""

    def __init__(self) -> None:
        self.methods: dict[bytes, _Method] = {}
        self.connections: set[_Connection] = set()
        self._servers: list[asyncio.base_events.Server] = []

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
        host, port = parse_host_port(address)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.protocol, host, port, reuse_port=False)
        self._servers.append(server)
        sockets = server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else int(port)

    async def listen_unix(self, path: str) -> None:
        """Listen on a Unix socket, replacing a stale socket file but never a live one."""
        remove_stale_socket(path)
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_unix_server(self.protocol, path))

    async def stop(self, grace: float) -> None:
        """Stop accepting, let calls in flight finish for up to ``grace`` seconds, close."""
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.shut_down()
            for stream in list(connection.streams.values()):
                method, task = stream.method, stream.task
                if method is not None and method.response_streaming and task is not None:
                    task.cancel()  # watches never end by themselves
        deadline = asyncio.get_running_loop().time() + grace
        while any(c.streams for c in self.connections):
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()


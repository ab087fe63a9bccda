"""The server side of an HTTP/2 connection, sans-I/O: bytes in, events out, bytes to send.

``receive_data(bytes)`` parses frames and returns events (``events.py``); the ``send_*``
methods queue frames; ``data_to_send()`` hands over what to write. Nothing here touches a
socket, a loop or a timer (time comes from an injected clock), so the whole protocol is
tested with lists of frames. Windows are plain counters.

What it enforces (RFC 9113, and the abuse bounds of §10.5 as Envoy and nghttp2 apply them):

- the preface, frame sizes, stream ids and states, SETTINGS values (a window setting that
  would take a window above 2^31-1 is a FLOW_CONTROL_ERROR), malformed requests (§8.1.1,
  §8.3: pseudo-headers, field names, connection-specific fields) as stream PROTOCOL_ERROR;
- flow control both ways: DATA is sent only as far as both of the peer's windows admit, the
  rest waits per stream; request bytes are given back to the peer's windows only once the
  user acknowledges them, so what one connection holds is bounded by its receive window;
- ``ListenerLimits``: SETTINGS_MAX_CONCURRENT_STREAMS and SETTINGS_MAX_HEADER_LIST_SIZE
  advertised and enforced; while the connection holds more than ``max_connection_buffer``
  (request bytes not acknowledged plus answers its windows did not admit) new streams are
  refused (REFUSED_STREAM) until the peer takes what waits;
- floods end the connection with GOAWAY ENHANCE_YOUR_CALM: PING and SETTINGS beyond a rate,
  RST_STREAM beyond a rate (rapid reset), consecutive empty DATA/HEADERS/CONTINUATION
  frames, more CONTINUATION frames in one header block than the header list size needs, and
  a header list larger than advertised (the HPACK decoder stops at the limit, so no
  decompression bomb is ever inflated).

Every refusal is reported through ``on_refusal(reason)``.

``events_from(data, max_frames)`` reads at most ``max_frames`` frames and keeps the rest;
``frame_waiting`` says whether a whole frame is still buffered. The user decides how much
to read per turn of its loop, so one connection's burst of cheap frames cannot keep others
waiting: the core itself never looks at time or turns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from authd.transport.http2 import frames as f
from authd.transport.http2.budget import Budget
from authd.transport.http2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from authd.transport.http2.frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    FRAME_SIZE,
    HEADERS,
    PADDED,
    PRIORITY_FLAG,
)
from authd.transport.http2.headers import HeaderDecoder, MalformedRequest, check_trailers
from authd.transport.http2.sending import Sending, Stream
from authd.transport.limits import ListenerLimits

STREAM_RECEIVE_WINDOW = 1 << 24  # advertised per stream (capped by the connection's buffer)
CONTROL_FRAME_BURST = 1000  # PING and SETTINGS frames at once ...
CONTROL_FRAME_RATE = 1000.0  # ... and per second after that
RESET_BURST = 1000  # streams the peer may reset at once (nghttp2's default) ...
RESET_RATE = 33.0  # ... and per second after that
MAX_EMPTY_FRAMES = 16  # consecutive frames with an empty payload that do not end anything


class H2Connection(Sending):
    """One server-side HTTP/2 connection; see the module docstring."""

    def __init__(
        self,
        limits: ListenerLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.limits = limits = limits or ListenerLimits()
        self._on_refusal = on_refusal
        self._out: list[bytes] = []
        # What waits to be written (the same list as data_to_send empties): a user checks it
        # before calling data_to_send.
        self.output = self._out
        self._events: list[Event] = []
        self._buffer = b""
        self._pos = 0  # where the unread part of _buffer starts
        self._preface_seen = False
        self._settings_seen = False
        self._headers = HeaderDecoder(limits.max_header_list_size)
        self._max_block = 4 * limits.max_header_list_size  # Huffman may grow a field 30/8
        self._max_continuations = max(8, self._max_block // FRAME_SIZE + 1)
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self._continuation: tuple[int, int, bytearray] | None = None
        self._continuations = 0
        self._send_window = f.DEFAULT_WINDOW  # the peer's connection window
        self._initial_send_window = f.DEFAULT_WINDOW  # its SETTINGS_INITIAL_WINDOW_SIZE
        self._max_send_frame = FRAME_SIZE
        self._connection_window = max(
            f.DEFAULT_WINDOW, min(limits.max_connection_buffer, f.MAX_WINDOW)
        )
        self._stream_window = min(STREAM_RECEIVE_WINDOW, self._connection_window)
        self._recv_window = self._connection_window  # what the peer may still send
        self._released = 0  # acknowledged since our last connection WINDOW_UPDATE
        self.held_bytes = 0  # received, not acknowledged
        self.pending_bytes = 0  # answers waiting for the peer's windows
        self._control = Budget(CONTROL_FRAME_BURST, CONTROL_FRAME_RATE, clock)
        self._resets = Budget(RESET_BURST, RESET_RATE, clock)
        self._empty_frames = 0
        self._table_size_changed = False
        self.going_away = False  # we sent GOAWAY: no new streams
        self.peer_going_away = False
        self.closed = False  # a connection error was sent: write what is queued, then close

    # --- state ----------------------------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """Bytes this connection holds: requests not acknowledged plus answers not sent."""
        return self.held_bytes + self.pending_bytes

    def stream_pending(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        return len(stream.pending) if stream is not None else 0

    def initiate_connection(self) -> None:
        """Queue our SETTINGS and the connection window beyond the default."""
        limits = self.limits
        payload = b"".join(
            f.SETTING.pack(ident, value)
            for ident, value in (
                (f.SETTINGS_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
                (f.SETTINGS_INITIAL_WINDOW_SIZE, self._stream_window),
                (f.SETTINGS_MAX_HEADER_LIST_SIZE, limits.max_header_list_size),
            )
        )
        self._out.append(f.frame(f.SETTINGS, 0, 0, payload))
        if self._connection_window > f.DEFAULT_WINDOW:
            increment = self._connection_window - f.DEFAULT_WINDOW
            self._out.append(f.frame(f.WINDOW_UPDATE, 0, 0, increment.to_bytes(4, "big")))

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    # --- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes, max_frames: int | None = None) -> list[Event]:
        """Parse ``data`` (any split of the byte stream); never raises for what a peer sends."""
        return list(self.events_from(data, max_frames))

    @property
    def frame_waiting(self) -> bool:
        """A whole frame (or one too large to wait for) is buffered, not read yet."""
        rest = len(self._buffer) - self._pos
        if rest < 9 or self.closed or not self._preface_seen:
            return False
        length = int.from_bytes(self._buffer[self._pos : self._pos + 3], "big")
        return length > FRAME_SIZE or rest - 9 >= length

    def events_from(self, data: bytes, max_frames: int | None = None) -> Iterator[Event]:
        """``receive_data`` frame by frame: each frame's events come before the next is read,
        so what the user sends in answer is queued before the frames that follow it answer.
        After ``max_frames`` frames the rest stays buffered (see ``frame_waiting``)."""
        if self.closed:
            return
        events = self._events
        buffer, pos = self._buffer, self._pos
        if not buffer:
            buffer, pos = data, 0
        elif data:
            buffer, pos = buffer[pos:] + data, 0
        self._buffer, self._pos = b"", 0
        budget = -1 if max_frames is None else max_frames
        try:
            if not self._preface_seen:
                if not f.PREFACE.startswith(buffer[pos : pos + len(f.PREFACE)]):
                    raise f.ProtocolError(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                if len(buffer) - pos < len(f.PREFACE):
                    self._buffer, self._pos = buffer, pos
                    return
                pos += len(f.PREFACE)
                self._preface_seen = True
            end = len(buffer)
            unpack = FRAME_HEADER.unpack_from
            while end - pos >= 9 and not self.closed and budget:
                word, flags, stream_id = unpack(buffer, pos)
                length = word >> 8
                if length > FRAME_SIZE:
                    raise f.ProtocolError(f.FRAME_SIZE_ERROR, "frame larger than MAX_FRAME_SIZE")
                if end - pos - 9 < length:
                    break
                budget -= 1
                start = pos + 9
                pos = start + length
                kind = word & 0xFF
                if kind > HEADERS or self._continuation is not None or not self._settings_seen:
                    self._on_frame(kind, flags, stream_id & 0x7FFFFFFF, buffer[start:pos])
                elif kind == DATA:
                    self._on_data(flags, stream_id & 0x7FFFFFFF, buffer[start:pos])
                else:
                    self._on_headers(flags, stream_id & 0x7FFFFFFF, buffer[start:pos])
                if events:
                    if len(events) == 1:
                        yield events.pop()
                    else:
                        yield from events
                        events.clear()
            if not self.closed and pos < end:
                # Stopped by the budget: keep the read as it is, the next call goes on in it.
                # Otherwise only a part of one frame is left: keep that alone.
                self._buffer, self._pos = (buffer, pos) if not budget else (buffer[pos:], 0)
        except f.ProtocolError as exc:
            self.close_connection(exc.code, exc.message, exc.reason)
        yield from events
        events.clear()

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is not None and kind != CONTINUATION:
            raise f.ProtocolError(f.PROTOCOL_ERROR, "expected a CONTINUATION frame")
        if not self._settings_seen and kind != f.SETTINGS:
            raise f.ProtocolError(f.PROTOCOL_ERROR, "the first frame must be SETTINGS")
        if kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == f.SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == f.WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == f.PING:
            if stream_id != 0:
                raise f.ProtocolError(f.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise f.ProtocolError(f.FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & f.ACK:
                self._spend_control("PING")
                self._out.append(f.frame(f.PING, f.ACK, 0, payload))
        elif kind == f.RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif kind == f.GOAWAY:
            if stream_id != 0:
                raise f.ProtocolError(f.PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise f.ProtocolError(f.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            self.peer_going_away = True
            self._events.append(GoAwayReceived(int.from_bytes(payload[4:8], "big")))
        elif kind == f.PRIORITY:
            if stream_id == 0:
                raise f.ProtocolError(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5 and stream_id in self.streams:
                self._reset(stream_id, f.FRAME_SIZE_ERROR)
            # Priorities are deprecated (RFC 9113 §5.3.2) and otherwise ignored.
        elif kind == f.PUSH_PROMISE:
            raise f.ProtocolError(f.PROTOCOL_ERROR, "a client cannot push")
        # Unknown frame types are ignored (RFC 9113 §5.5).

    def _spend_control(self, what: str) -> None:
        if not self._control.take():
            raise f.ProtocolError(f.ENHANCE_YOUR_CALM, f"{what} flood", "control_frame_flood")

    def _empty_frame(self) -> None:
        self._empty_frames += 1
        if self._empty_frames > MAX_EMPTY_FRAMES:
            raise f.ProtocolError(f.ENHANCE_YOUR_CALM, "empty frames", "empty_frames")

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise f.ProtocolError(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise f.ProtocolError(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise f.ProtocolError(f.FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        self._spend_control("SETTINGS")
        self._settings_seen = True
        grew = False
        for offset in range(0, len(payload), 6):
            ident, value = f.SETTING.unpack_from(payload, offset)
            if ident == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise f.ProtocolError(f.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self._initial_send_window
                self._initial_send_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > f.MAX_WINDOW:
                        raise f.ProtocolError(f.FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
                grew = grew or delta > 0
            elif ident == f.SETTINGS_MAX_FRAME_SIZE:
                if not FRAME_SIZE <= value <= 2**24 - 1:
                    raise f.ProtocolError(f.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._max_send_frame = value
            elif ident == f.SETTINGS_HEADER_TABLE_SIZE:
                self._table_size_changed = True
            elif ident == f.SETTINGS_ENABLE_PUSH and value > 1:
                raise f.ProtocolError(f.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        self._out.append(f.frame(f.SETTINGS, f.ACK, 0))
        if grew:
            self._flush_all()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise f.ProtocolError(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise f.ProtocolError(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                raise f.ProtocolError(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self._flush_all()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise f.ProtocolError(f.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0:
            self._reset(stream_id, f.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > f.MAX_WINDOW:
            self._reset(stream_id, f.FLOW_CONTROL_ERROR)
            return
        self._flush(stream)

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise f.ProtocolError(f.FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
        if stream_id == 0 or stream_id > self.last_stream_id:
            raise f.ProtocolError(f.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not self._resets.take():
            raise f.ProtocolError(f.ENHANCE_YOUR_CALM, "too many stream resets", "rapid_reset")
        self._forget(stream)
        self._events.append(StreamReset(stream_id, int.from_bytes(payload, "big"), True))

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise f.ProtocolError(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = f.unpad(payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise f.ProtocolError(f.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        if flags & END_HEADERS:
            self._empty_frames = 0
            self._on_header_block(flags, stream_id, payload)
            return
        if payload:
            self._empty_frames = 0
        else:
            self._empty_frame()
        self._continuation = (stream_id, flags, bytearray(payload))
        self._continuations = 0

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is None or self._continuation[0] != stream_id:
            raise f.ProtocolError(f.PROTOCOL_ERROR, "unexpected CONTINUATION frame")
        self._continuations += 1
        if self._continuations > self._max_continuations:
            raise f.ProtocolError(
                f.ENHANCE_YOUR_CALM, "too many CONTINUATION frames", "continuation_flood"
            )
        if payload or flags & END_HEADERS:
            self._empty_frames = 0
        else:
            self._empty_frame()
        _, first_flags, block = self._continuation
        block += payload
        if len(block) > self._max_block:
            raise f.ProtocolError(f.ENHANCE_YOUR_CALM, "header block too large", "header_list_size")
        if flags & END_HEADERS:
            self._continuation = None
            self._on_header_block(first_flags, stream_id, bytes(block))

    def _on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: they must end its side
            headers = self._headers.decode(block)
            if not flags & END_STREAM:
                self._reset(stream_id, f.PROTOCOL_ERROR)
            elif stream.remote_closed:
                self._reset(stream_id, f.STREAM_CLOSED)
            else:
                try:
                    check_trailers(headers)
                except MalformedRequest:
                    self._reset(stream_id, f.PROTOCOL_ERROR)
                    return
                stream.remote_closed = True
                self._events.append(StreamEnded(stream_id))
                self._forget_if_done(stream)
            return
        if stream_id <= self.last_stream_id or not stream_id % 2:
            raise f.ProtocolError(f.PROTOCOL_ERROR, "stream id not a new odd number")
        self.last_stream_id = stream_id
        try:
            head = self._headers.request_head(block)
        except MalformedRequest:
            self._refuse_stream(stream_id, f.PROTOCOL_ERROR, "malformed_request")
            return
        if self.going_away:
            self._refuse_stream(stream_id, f.REFUSED_STREAM, None)
            return
        if len(self.streams) >= self.limits.max_concurrent_streams:
            self._refuse_stream(stream_id, f.REFUSED_STREAM, "max_concurrent_streams")
            return
        if self.held_bytes + self.pending_bytes > self.limits.max_connection_buffer:
            self._refuse_stream(stream_id, f.REFUSED_STREAM, "max_connection_buffer")
            return
        stream = Stream(stream_id, self._initial_send_window, self._stream_window)
        self.streams[stream_id] = stream
        ended = bool(flags & END_STREAM)
        stream.remote_closed = ended
        self._events.append(RequestReceived(stream_id, head, ended))

    def _refuse_stream(self, stream_id: int, code: int, reason: str | None) -> None:
        self._out.append(f.frame(f.RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))
        if reason is not None:
            self.refuse(reason)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise f.ProtocolError(f.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._recv_window -= size
        if self._recv_window < 0:
            raise f.ProtocolError(f.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if flags & PADDED:
            payload = f.unpad(payload)
        ended = bool(flags & END_STREAM)
        if payload or ended:
            self._empty_frames = 0
        else:
            self._empty_frame()
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise f.ProtocolError(f.PROTOCOL_ERROR, "DATA on an idle stream")
            self._release(size)  # a stream already answered or reset: frames in flight
            return
        if stream.remote_closed:
            self._release(size)
            self._reset(stream_id, f.STREAM_CLOSED)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._release(size)
            self._reset(stream_id, f.FLOW_CONTROL_ERROR)
            return
        stream.held += size
        self.held_bytes += size
        stream.remote_closed = ended
        self._events.append(DataReceived(stream_id, payload, size, ended))
        if ended:
            self._forget_if_done(stream)

    def acknowledge_received_data(self, stream_id: int, size: int) -> None:
        """The user is done with ``size`` bytes of ``stream_id``: the peer may send them again."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # forgotten streams gave their bytes back already
        size = min(size, stream.held)
        if size <= 0:
            return
        stream.held -= size
        self.held_bytes -= size
        self._release(size)
        if not stream.remote_closed:
            stream.recv_window += size
            self._out.append(f.frame(f.WINDOW_UPDATE, 0, stream_id, size.to_bytes(4, "big")))

    def _release(self, size: int) -> None:
        """Give ``size`` bytes back to the peer's connection window, in large steps."""
        self._released += size
        if self._released >= self._connection_window // 2:
            self._out.append(f.frame(f.WINDOW_UPDATE, 0, 0, self._released.to_bytes(4, "big")))
            self._recv_window += self._released
            self._released = 0

    # --- sending --------------------------------------------------------------------------

    def reset_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM ``code`` and forget the stream (no event: the user asked for it)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        self._out.append(f.frame(f.RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))
        self._forget(stream)

    def start_shutdown(self) -> None:
        """GOAWAY NO_ERROR naming the last stream accepted; later streams are refused."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self._out.append(self._goaway(f.NO_ERROR, "authd is stopping"))

    def close_connection(self, code: int, message: str, reason: str | None = None) -> None:
        """GOAWAY ``code`` and stop: nothing more is read; the user closes after writing."""
        if self.closed:
            return
        self.closed = True
        self._continuation = None
        self._out.append(self._goaway(code, message))
        self._events.append(ConnectionTerminated(code, message))
        if reason is not None:
            self.refuse(reason)
        for stream in list(self.streams.values()):
            self._forget(stream)

    def refuse(self, reason: str) -> None:
        if self._on_refusal is not None:
            self._on_refusal(reason)

    def _goaway(self, code: int, message: str) -> bytes:
        debug = message.encode("utf-8")[:256]
        payload = self.last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + debug
        return f.frame(f.GOAWAY, 0, 0, payload)

    def _forget_if_done(self, stream: Stream) -> None:
        if not stream.local_closed:
            return
        if not stream.remote_closed:
            # Answered before the client finished sending: tell it to stop (RFC 9113 §8.1).
            self._out.append(f.frame(f.RST_STREAM, 0, stream.id, bytes(4)))
        self._forget(stream)

    def _reset(self, stream_id: int, code: int) -> None:
        """A stream error: RST_STREAM, forget the stream, tell the user."""
        self._out.append(f.frame(f.RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._forget(stream)
            self._events.append(StreamReset(stream_id, code, False))

    def _forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self.pending_bytes -= len(stream.pending)
        stream.pending.clear()
        stream.trailers = None
        stream.local_closed = stream.remote_closed = True
        if stream.held:
            self.held_bytes -= stream.held
            self._release(stream.held)
            stream.held = 0

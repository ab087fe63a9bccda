"""The sending half of an HTTP/2 connection: frames out, DATA only as the peer's windows admit.

Each stream queues what its windows do not admit yet (``pending``); a WINDOW_UPDATE or a
larger SETTINGS_INITIAL_WINDOW_SIZE lets it go on. Header blocks come from ``frames.literal``
(no dynamic table), so the peer's table size only ever needs a size update to 0 first.
"""

from __future__ import annotations

from authd.transport.http2.frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    HEADERS,
    frame,
)


class Stream:
    """One stream's state on both sides: windows, bytes held, answers waiting."""

    __slots__ = (
        "held",
        "id",
        "local_closed",
        "pending",
        "recv_window",
        "remote_closed",
        "send_window",
        "trailers",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.recv_window = recv_window
        self.held = 0  # received bytes not yet acknowledged by the user
        self.pending = bytearray()  # DATA payload the windows did not admit yet
        self.trailers: bytes | None = None  # the final HEADERS block, once pending is out
        self.remote_closed = False
        self.local_closed = False


class Sending:
    """What ``H2Connection`` sends; the receiving half owns the state declared here."""

    streams: dict[int, Stream]
    pending_bytes: int
    _out: list[bytes]
    _send_window: int
    _max_send_frame: int
    _table_size_changed: bool

    def _forget_if_done(self, stream: Stream) -> None:
        raise NotImplementedError

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        """A header block (from ``frames.literal``) on an open stream; a closed one ignores it."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        if self._table_size_changed:
            self._table_size_changed = False
            block = b"\x20" + block  # dynamic table size update to 0 (RFC 7541 §6.3)
        flags = END_STREAM if end_stream else 0
        limit = self._max_send_frame
        if len(block) <= limit:
            self._out.append(frame(HEADERS, END_HEADERS | flags, stream_id, block))
        else:
            self._out.append(frame(HEADERS, flags, stream_id, block[:limit]))
            for start in range(limit, len(block), limit):
                last = start + limit >= len(block)
                chunk = block[start : start + limit]
                self._out.append(frame(CONTINUATION, END_HEADERS if last else 0, stream_id, chunk))
        if end_stream:
            stream.local_closed = True
            self._forget_if_done(stream)

    def send_data(self, stream_id: int, data: bytes) -> None:
        """Queue DATA; it goes out as far as the peer's windows admit, the rest when they open."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed or stream.trailers is not None:
            return
        stream.pending += data
        self.pending_bytes += len(data)
        self._flush(stream)

    def end_stream(self, stream_id: int, trailers: bytes) -> None:
        """End our side with a trailers block, once the DATA waiting before it is sent."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed or stream.trailers is not None:
            return
        if stream.pending:
            stream.trailers = trailers
        else:
            self.send_headers(stream_id, trailers, end_stream=True)

    def respond(self, stream_id: int, headers: bytes, data: bytes, trailers: bytes) -> None:
        """A whole answer: headers, ``data`` and the trailers that end the stream.

        The same as ``send_headers``, ``send_data`` and ``end_stream``; when the windows admit
        all of ``data`` at once (the usual case) its three frames are laid out in one go.
        """
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed or stream.trailers is not None:
            return
        size, limit = len(data), self._max_send_frame
        if (
            size > self._send_window
            or size > stream.send_window
            or size > limit
            or stream.pending
            or self._table_size_changed
            or len(headers) > limit
            or len(trailers) > limit
        ):
            self.send_headers(stream_id, headers)
            self.send_data(stream_id, data)
            self.end_stream(stream_id, trailers)
            return
        self._send_window -= size
        stream.send_window -= size
        pack = FRAME_HEADER.pack
        self._out += (
            pack((len(headers) << 8) | HEADERS, END_HEADERS, stream_id),
            headers,
            pack((size << 8) | DATA, 0, stream_id),
            data,
            pack((len(trailers) << 8) | HEADERS, END_HEADERS | END_STREAM, stream_id),
            trailers,
        )
        stream.local_closed = True
        if stream.remote_closed and not stream.held:
            del self.streams[stream_id]  # nothing pending, nothing held: nothing to give back
        else:
            self._forget_if_done(stream)

    def _flush(self, stream: Stream) -> None:
        """Send what the windows admit of the stream's pending DATA, then its trailers."""
        pending = stream.pending
        while pending:
            allowed = min(self._send_window, stream.send_window, self._max_send_frame)
            if allowed <= 0:
                return
            chunk = bytes(pending[:allowed])
            del pending[:allowed]
            size = len(chunk)
            self._send_window -= size
            stream.send_window -= size
            self.pending_bytes -= size
            self._out.append(frame(DATA, 0, stream.id, chunk))
        if stream.trailers is not None:
            trailers, stream.trailers = stream.trailers, None
            self.send_headers(stream.id, trailers, end_stream=True)

    def _flush_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending or stream.trailers is not None:
                self._flush(stream)

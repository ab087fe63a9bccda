"""A raw HTTP/2 client for tests: frames built by hand, sent whole, read back one by one."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import hpack
from grpc_reflection.v1alpha import reflection_pb2

CHECK = "/envoy.service.auth.v3.Authorization/Check"
ENHANCE_YOUR_CALM = 0xB
MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE = 0x3, 0x6

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 0x4, 0x5
HEADER_TABLE_SIZE = 0x1
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9


class Frame(NamedTuple):
    kind: int
    flags: int
    stream_id: int
    payload: bytes


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IBI", (len(payload) << 8) | kind, flags, stream_id) + payload


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


def goaway(last_stream_id: int, code: int) -> bytes:
    return frame(GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big"))


def grpc_message(message: Any, compressed: bool = False) -> bytes:
    payload = message.SerializeToString()
    return struct.pack(">BI", int(compressed), len(payload)) + payload


def padded(payload: bytes, pad: int) -> bytes:
    return bytes((pad,)) + payload + b"\0" * pad


def error_code(got: Frame) -> int:
    """The error code of a GOAWAY or RST_STREAM frame."""
    return int.from_bytes(got.payload[4:8] if got.kind == GOAWAY else got.payload, "big")


@dataclass
class Response:
    headers: list[dict[str, str]] = field(default_factory=list)  # each header block, in order
    data: bytearray = field(default_factory=bytearray)
    frames: list[Frame] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.headers[0][":status"]

    @property
    def grpc_status(self) -> str:
        return self.headers[-1]["grpc-status"]


class Peer:
    """A raw HTTP/2 client: whole frames out, frames in, header blocks through ``hpack``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()

    @classmethod
    async def connect(cls, port: int, opening: bytes = PREFACE + settings()) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = cls(reader, writer)
        peer.send(opening)
        return peer

    @staticmethod
    def parse(data: bytes) -> list[Frame]:
        """The whole frames in ``data``, in order."""
        frames, pos = [], 0
        while len(data) - pos >= 9:
            word, flags, stream_id = struct.unpack_from(">IBI", data, pos)
            end = pos + 9 + (word >> 8)
            frames.append(Frame(word & 0xFF, flags, stream_id & 0x7FFFFFFF, data[pos + 9 : end]))
            pos = end
        return frames

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    def header_block(self, path: str = CHECK, **overrides: str) -> bytes:
        headers = {
            ":method": "POST",
            ":scheme": "http",
            ":path": path,
            ":authority": "authd",
            "content-type": "application/grpc",
            "te": "trailers",
            **overrides,
        }
        return bytes(self.encoder.encode(list(headers.items())))

    def request(self, stream_id: int, message: bytes, **overrides: str) -> bytes:
        """A whole unary request: HEADERS, then the message in one DATA with END_STREAM."""
        headers = frame(HEADERS, END_HEADERS, stream_id, self.header_block(**overrides))
        return headers + frame(DATA, END_STREAM, stream_id, message)

    async def read(self) -> Frame | None:
        """The next frame, or None once the server has closed the connection."""
        try:
            head = await self.reader.readexactly(9)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        word, flags, stream_id = struct.unpack(">IBI", head)
        payload = await self.reader.readexactly(word >> 8)
        return Frame(word & 0xFF, flags, stream_id & 0x7FFFFFFF, payload)

    async def next(self, kind: int) -> Frame:
        while (got := await self.read()) is not None:
            if got.kind == kind:
                return got
        raise AssertionError(f"closed before a frame of type {kind}")

    async def until_closed(self) -> list[Frame]:
        frames = []
        while (got := await self.read()) is not None:
            frames.append(got)
        return frames

    async def goaway(self) -> Frame:
        """The GOAWAY that ends the connection, which the server must then close."""
        goaways = [f for f in await self.until_closed() if f.kind == GOAWAY]
        assert len(goaways) == 1
        return goaways[0]

    async def round_trip(self) -> list[Frame]:
        """Everything the server sends before it answers a PING sent now."""
        self.send(frame(PING, 0, 0, b"roundtrp"))
        frames = []
        while (got := await self.read()) is not None:
            if got.kind == PING and got.flags & ACK and got.payload == b"roundtrp":
                return frames
            frames.append(got)
        raise AssertionError("closed before the PING ACK")

    def absorb(self, response: Response, got: Frame) -> bool:
        """Add a frame of the response's stream to it; True once the stream has ended."""
        response.frames.append(got)
        if got.kind == HEADERS:
            response.headers.append(dict(self.decoder.decode(got.payload)))
        elif got.kind == DATA:
            response.data += got.payload
        return bool(got.flags & END_STREAM) or got.kind == RST_STREAM

    async def absorb_round_trip(self, response: Response, stream_id: int) -> bool:
        """Absorb what the server sends on ``stream_id`` before a PING's answer; True if ended."""
        ended = False
        for got in await self.round_trip():
            if got.stream_id == stream_id:
                assert not ended, "a frame after the end of the stream"
                ended = self.absorb(response, got)
        return ended

    async def response(self, stream_id: int, response: Response | None = None) -> Response:
        """Read until ``stream_id`` ends, adding its frames to ``response`` (or a new one)."""
        response = response or Response()
        while (got := await self.read()) is not None:
            if got.stream_id == stream_id and self.absorb(response, got):
                return response
        raise AssertionError(f"closed before stream {stream_id} ended")


REFLECTION_INFO = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def reflection_flood(peer: Peer, stream_id: int, count: int) -> bytes:
    """A reflection stream opened with ``count`` list_services requests in DATA frames."""
    message = grpc_message(reflection_pb2.ServerReflectionRequest(list_services=""))
    body = message * count
    frames = [frame(HEADERS, END_HEADERS, stream_id, peer.header_block(REFLECTION_INFO))]
    frames += [frame(DATA, 0, stream_id, body[i : i + 16_000]) for i in range(0, len(body), 16_000)]
    return b"".join(frames)


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def windowed_reflection_flood(port: int, streams: int, rounds: int) -> Peer:
    """A peer that never opens its own window but sends reflection requests on ``streams``
    streams as fast as the server's windows allow, for ``rounds`` round trips: what a server
    gives back to its windows while its answers cannot leave is what this peer gets to send."""
    peer = await Peer.connect(port, PREFACE + settings((INITIAL_WINDOW_SIZE, 0)))
    message = grpc_message(reflection_pb2.ServerReflectionRequest(list_services=""))
    stream_ids = [1 + 2 * n for n in range(streams)]
    peer.send(
        *(frame(HEADERS, END_HEADERS, s, peer.header_block(REFLECTION_INFO)) for s in stream_ids)
    )
    connection, initial = 65_535, 65_535
    windows: dict[int, int] = {}
    for _ in range(rounds):
        for got in await peer.round_trip():
            if got.kind == SETTINGS and not got.flags & ACK:
                for ident, value in struct.iter_unpack(">HI", got.payload):
                    if ident == INITIAL_WINDOW_SIZE:
                        initial = value
            elif got.kind == WINDOW_UPDATE:
                increment = int.from_bytes(got.payload, "big")
                if got.stream_id == 0:
                    connection += increment
                else:
                    windows[got.stream_id] = windows.get(got.stream_id, initial) + increment
        for stream_id in stream_ids:
            allowed = min(connection, windows.get(stream_id, initial))
            count = allowed // len(message)
            body = message * count
            connection -= len(body)
            windows[stream_id] = windows.get(stream_id, initial) - len(body)
            peer.send(
                *(
                    frame(DATA, 0, stream_id, body[i : i + 16_000])
                    for i in range(0, len(body), 16_000)
                )
            )
        await peer.writer.drain()
    return peer

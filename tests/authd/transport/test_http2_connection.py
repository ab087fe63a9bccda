"""The sans-I/O HTTP/2 core, driven with bytes and read back as frames and events."""

from __future__ import annotations

import struct

import hpack
import pytest

from authd.transport.http2 import events as ev
from authd.transport.http2.connection import (
    CONTROL_FRAME_BURST,
    MAX_EMPTY_FRAMES,
    RESET_BURST,
    H2Connection,
)
from authd.transport.limits import ListenerLimits
from tests.support.h2peer import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_SIZE,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Frame,
    frame,
    rst_stream,
    settings,
    window_update,
)

REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/svc/M"),
    (":authority", "authd"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


class FrozenClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frames_of(data: bytes) -> list[Frame]:
    out, pos = [], 0
    while pos < len(data):
        word, flags, stream_id = struct.unpack_from(">IBI", data, pos)
        length = word >> 8
        out.append(
            Frame(word & 0xFF, flags, stream_id & 0x7FFFFFFF, data[pos + 9 : pos + 9 + length])
        )
        pos += 9 + length
    assert pos == len(data)
    return out


class Client:
    """One connection to a fresh core, opened with the preface and ``opening`` settings."""

    def __init__(self, limits: ListenerLimits | None = None, *opening: tuple[int, int]) -> None:
        self.clock = FrozenClock()
        self.refusals: list[str] = []
        self.server = H2Connection(limits, clock=self.clock, on_refusal=self.refusals.append)
        self.server.initiate_connection()
        self.greeting = frames_of(self.server.data_to_send())
        self.encoder = hpack.Encoder()
        self.send(PREFACE + settings(*opening))
        self.take()  # the SETTINGS ACK

    def send(self, *data: bytes) -> list[ev.Event]:
        return self.server.receive_data(b"".join(data))

    def take(self) -> list[Frame]:
        return frames_of(self.server.data_to_send())

    def headers(
        self, stream_id: int, fields: list[tuple[str, str]] = REQUEST, flags: int = END_HEADERS
    ) -> bytes:
        return frame(HEADERS, flags, stream_id, bytes(self.encoder.encode(fields)))

    def goaway_code(self) -> int:
        (goaway,) = [f for f in self.take() if f.kind == GOAWAY]
        return int.from_bytes(goaway.payload[4:8], "big")


def setting_values(got: Frame) -> dict[int, int]:
    return dict(struct.iter_unpack(">HI", got.payload))


def test_settings_advertise_the_listener_limits() -> None:
    limits = ListenerLimits(max_concurrent_streams=7, max_header_list_size=4096)
    first = Client(limits).greeting[0]
    assert first.kind == SETTINGS
    values = setting_values(first)
    assert values[MAX_CONCURRENT_STREAMS] == 7
    assert values[MAX_HEADER_LIST_SIZE] == 4096


def test_a_request_is_an_event_with_its_head() -> None:
    client = Client()
    (received,) = client.send(client.headers(1, flags=END_HEADERS | END_STREAM))
    assert isinstance(received, ev.RequestReceived)
    assert (received.stream_id, received.end_stream) == (1, True)
    assert (received.head.method, received.head.path) == (b"POST", b"/svc/M")
    assert ("te", "trailers") in received.head.metadata


def test_data_goes_out_only_as_far_as_both_windows_admit() -> None:
    client = Client(None, (INITIAL_WINDOW_SIZE, 10))
    client.send(client.headers(1, flags=END_HEADERS | END_STREAM))
    client.server.send_data(1, b"x" * 25)
    assert [len(f.payload) for f in client.take() if f.kind == DATA] == [10]
    assert client.server.pending_bytes == 15
    client.send(window_update(1, 100))
    assert [len(f.payload) for f in client.take() if f.kind == DATA] == [15]
    assert client.server.pending_bytes == 0


def test_trailers_wait_for_the_data_before_them() -> None:
    client = Client(None, (INITIAL_WINDOW_SIZE, 0))
    client.send(client.headers(1, flags=END_HEADERS | END_STREAM))
    client.server.send_data(1, b"abc")
    client.server.end_stream(1, b"\x88")
    assert client.take() == []
    client.send(window_update(1, 3))
    assert [(f.kind, f.flags) for f in client.take()] == [
        (DATA, 0),
        (HEADERS, END_HEADERS | END_STREAM),
    ]
    assert client.server.streams == {}


def test_initial_window_size_above_2_31_minus_1_is_a_flow_control_error() -> None:
    client = Client()
    events = client.send(settings((INITIAL_WINDOW_SIZE, 2**31)))
    assert isinstance(events[-1], ev.ConnectionTerminated)
    assert client.goaway_code() == FLOW_CONTROL_ERROR


def test_initial_window_size_that_takes_an_open_stream_above_2_31_minus_1_is_an_error() -> None:
    client = Client()
    client.send(client.headers(1, flags=END_HEADERS | END_STREAM))
    client.send(window_update(1, 2**31 - 1 - 65_535))  # the stream's window is now 2^31-1
    client.take()
    client.send(settings((INITIAL_WINDOW_SIZE, 65_536)))
    assert client.goaway_code() == FLOW_CONTROL_ERROR


@pytest.mark.parametrize(
    "fields",
    [
        [*REQUEST, (":status", "200")],
        [("content-type", "application/grpc"), *REQUEST[:4]],
        [*REQUEST[:4], (":path", "/other")],
        [f for f in REQUEST if f[0] != ":method"],
        [f for f in REQUEST if f[0] != ":path"],
        [f for f in REQUEST if f[0] != ":scheme"],
        [*REQUEST, ("X-Upper", "1")],
        [*REQUEST, ("connection", "keep-alive")],
        [*REQUEST, ("transfer-encoding", "chunked")],
        [*REQUEST[:4], ("te", "gzip")],
        [*REQUEST, ("x-bad", "a\r\nb")],
    ],
    ids=[
        "unknown-pseudo",
        "pseudo-after-regular",
        "duplicate-pseudo",
        "no-method",
        "no-path",
        "no-scheme",
        "uppercase",
        "connection",
        "transfer-encoding",
        "te-not-trailers",
        "crlf-in-value",
    ],
)
def test_malformed_request_is_a_stream_protocol_error(fields: list[tuple[str, str]]) -> None:
    client = Client()
    events = client.send(client.headers(1, fields, END_HEADERS | END_STREAM))
    assert events == []
    (reset,) = client.take()
    assert (reset.kind, reset.stream_id, reset.payload) == (RST_STREAM, 1, bytes((0, 0, 0, 1)))
    assert client.refusals == ["malformed_request"]
    (next_one,) = client.send(client.headers(3, flags=END_HEADERS | END_STREAM))
    assert isinstance(next_one, ev.RequestReceived)  # the connection goes on


def test_a_flood_of_empty_continuation_frames_gets_enhance_your_calm() -> None:
    client = Client()
    block = client.headers(1)[9:]
    flood = frame(HEADERS, 0, 1, block) + frame(CONTINUATION, 0, 1) * (MAX_EMPTY_FRAMES + 1)
    client.send(flood)
    assert client.goaway_code() == ENHANCE_YOUR_CALM
    assert client.refusals == ["empty_frames"]


def test_more_continuation_frames_than_the_header_list_needs_get_enhance_your_calm() -> None:
    client = Client(ListenerLimits(max_header_list_size=4096))
    client.send(frame(HEADERS, 0, 1, b"\x83") + frame(CONTINUATION, 0, 1, b"\x86") * 9)
    assert client.goaway_code() == ENHANCE_YOUR_CALM
    assert client.refusals == ["continuation_flood"]


def test_a_flood_of_empty_data_frames_gets_enhance_your_calm() -> None:
    client = Client()
    client.send(client.headers(1))
    client.send(frame(DATA, 0, 1) * (MAX_EMPTY_FRAMES + 1))
    assert client.goaway_code() == ENHANCE_YOUR_CALM


def test_pings_beyond_the_budget_get_enhance_your_calm_and_the_clock_refills_it() -> None:
    client = Client()
    ping = frame(PING, 0, 0, b"12345678")
    client.send(ping * (CONTROL_FRAME_BURST - 1))  # the opening SETTINGS took one
    assert len(client.take()) == CONTROL_FRAME_BURST - 1
    client.clock.now += 1.0
    client.send(ping * 500)
    assert not client.server.closed
    client.send(ping * (CONTROL_FRAME_BURST + 1))
    assert client.server.closed
    assert client.goaway_code() == ENHANCE_YOUR_CALM
    assert client.refusals == ["control_frame_flood"]


def test_a_settings_flood_gets_enhance_your_calm() -> None:
    client = Client()
    client.send(settings() * (CONTROL_FRAME_BURST + 1))
    assert client.goaway_code() == ENHANCE_YOUR_CALM


def test_rapid_reset_beyond_the_budget_gets_enhance_your_calm() -> None:
    client = Client()
    for stream_id in range(1, 2 * (RESET_BURST + 1), 2):
        client.send(client.headers(stream_id), rst_stream(stream_id, 0x8))
        if client.server.closed:
            break
    assert client.server.closed
    assert client.goaway_code() == ENHANCE_YOUR_CALM
    assert client.refusals == ["rapid_reset"]


def test_a_header_list_larger_than_advertised_gets_enhance_your_calm() -> None:
    client = Client(ListenerLimits(max_header_list_size=1024))
    client.send(client.headers(1, [*REQUEST, ("x-big", "v" * 2000)]))
    assert client.goaway_code() == ENHANCE_YOUR_CALM
    assert client.refusals == ["header_list_size"]


def test_streams_beyond_max_concurrent_streams_are_refused() -> None:
    client = Client(ListenerLimits(max_concurrent_streams=2))
    client.send(client.headers(1), client.headers(3))
    events = client.send(client.headers(5))
    assert events == []
    (refused,) = client.take()
    assert (refused.kind, refused.stream_id) == (RST_STREAM, 5)
    assert int.from_bytes(refused.payload, "big") == REFUSED_STREAM
    assert client.refusals == ["max_concurrent_streams"]


def test_new_streams_are_refused_while_the_connection_buffer_is_full_until_the_peer_takes_it() -> (
    None
):
    limits = ListenerLimits(max_connection_buffer=64 * 1024)
    client = Client(limits, (INITIAL_WINDOW_SIZE, 0))
    client.send(client.headers(1, flags=END_HEADERS | END_STREAM))
    client.server.send_data(1, b"x" * (65 * 1024))
    client.take()
    assert client.server.buffered_bytes == 65 * 1024
    assert client.send(client.headers(3, flags=END_HEADERS | END_STREAM)) == []
    assert [f.kind for f in client.take()] == [RST_STREAM]
    assert client.refusals == ["max_connection_buffer"]
    client.send(window_update(1, 70 * 1024), window_update(0, 70 * 1024))
    assert client.server.buffered_bytes == 0
    (accepted,) = client.send(client.headers(5, flags=END_HEADERS | END_STREAM))
    assert isinstance(accepted, ev.RequestReceived)


def test_request_bytes_return_to_the_peers_windows_only_once_acknowledged() -> None:
    limits = ListenerLimits(max_connection_buffer=64 * 1024)
    client = Client(limits)
    client.send(client.headers(1))
    (data,) = client.send(frame(DATA, 0, 1, b"y" * 16_000))
    assert isinstance(data, ev.DataReceived)
    assert client.server.held_bytes == 16_000
    assert client.take() == []  # nothing given back yet
    client.server.acknowledge_received_data(1, data.flow_size)
    assert client.server.held_bytes == 0
    assert [(f.kind, f.stream_id) for f in client.take()] == [(WINDOW_UPDATE, 1)]


def test_data_beyond_the_connection_window_is_a_flow_control_error() -> None:
    limits = ListenerLimits(max_connection_buffer=64 * 1024)
    client = Client(limits)
    client.send(client.headers(1), client.headers(3))
    client.send(*(frame(DATA, 0, 1 + 2 * (n % 2), b"z" * 16_000) for n in range(5)))
    assert client.goaway_code() == FLOW_CONTROL_ERROR


def test_after_a_connection_error_nothing_more_is_read() -> None:
    client = Client()
    client.send(frame(PING, 0, 1, b"12345678"))
    assert client.goaway_code() == PROTOCOL_ERROR
    assert client.send(client.headers(1)) == []
    assert client.take() == []


def test_max_frames_reads_that_many_frames_and_keeps_the_rest_for_the_next_call() -> None:
    client = Client()
    ping = frame(PING, 0, 0, b"12345678")
    server = client.server
    server.receive_data(ping * 5 + ping[:4], max_frames=2)
    assert len(client.take()) == 2
    assert server.frame_waiting
    server.receive_data(b"", max_frames=2)
    assert len(client.take()) == 2 and server.frame_waiting
    server.receive_data(ping[4:], max_frames=2)  # new bytes join the frames still waiting
    assert len(client.take()) == 2 and not server.frame_waiting
    events = server.receive_data(client.headers(1, flags=END_HEADERS | END_STREAM), max_frames=1)
    assert [type(e) for e in events] == [ev.RequestReceived]
    assert not server.frame_waiting and not client.take()


def test_a_part_of_a_frame_is_not_a_frame_waiting() -> None:
    client = Client()
    client.server.receive_data(frame(PING, 0, 0, b"12345678")[:12], max_frames=1)
    assert not client.server.frame_waiting

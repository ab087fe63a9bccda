"""Properties of the sans-I/O HTTP/2 core over arbitrary frame sequences (hypothesis).

A CI run tries a few dozen sequences per property; set ``AUTHD_HYPOTHESIS_EXAMPLES`` (say
20000) for a long run.
"""

from __future__ import annotations

import os
import struct

import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authd.transport.http2 import events as ev
from authd.transport.http2.connection import H2Connection
from authd.transport.limits import ListenerLimits
from tests.support.h2peer import PREFACE, frame

EXAMPLES = int(os.environ.get("AUTHD_HYPOTHESIS_EXAMPLES", "40"))
PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
LIMITS = ListenerLimits(
    max_concurrent_streams=8, max_header_list_size=2048, max_connection_buffer=128 * 1024
)
SENT_KINDS = {0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9}  # what a server may send
FIELDS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/svc/M"),
    (b"content-type", b"application/grpc"),
]

stream_ids = st.sampled_from([0, 1, 2, 3, 5, 7, 9, 11, 2**31 - 1])
u32 = st.integers(0, 2**32 - 1)


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    fields = list(FIELDS)
    extra = draw(st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=40)), max_size=3))
    fields += extra
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    block = bytes(hpack.Encoder().encode(fields))
    if draw(st.integers(0, 4)) == 0:
        block = draw(st.binary(max_size=64))  # garbage HPACK
    return block


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 8, 8, 9, 0x2A]))
    flags = draw(st.sampled_from([0, 0x1, 0x4, 0x5, 0x8, 0x20, 0x25, 0xFF]))
    stream_id = draw(stream_ids)
    if kind in (0x1, 0x9):
        payload = draw(header_blocks())
    elif kind == 0x4:
        pairs = draw(st.lists(st.tuples(st.integers(0, 8), u32), max_size=4))
        payload = b"".join(struct.pack(">HI", k, v) for k, v in pairs)
    elif kind in (0x3, 0x8):
        payload = draw(u32).to_bytes(4, "big")
    elif kind == 0x6:
        payload = draw(st.binary(min_size=8, max_size=8))
    else:
        payload = draw(st.binary(max_size=3000))
    if draw(st.integers(0, 9)) == 0:
        payload = draw(st.binary(max_size=20))  # any size at all
    return frame(kind, flags, stream_id, payload)


def parse(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= 9, "a truncated frame header"
        word, flags, stream_id = struct.unpack_from(">IBI", data, pos)
        length = word >> 8
        assert len(data) - pos - 9 >= length, "a truncated frame"
        out.append((word & 0xFF, flags, stream_id, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return out


class Harness:
    """The core, a user that answers every request, and the checks on what goes out."""

    def __init__(self) -> None:
        self.now = 0.0
        self.server = H2Connection(LIMITS, clock=lambda: self.now)
        self.server.initiate_connection()
        self.sent_data = 0
        self.connection_grants = 65_535
        self.goaway_error = False
        self.check_output()

    def feed(self, data: bytes, answer_size: int, grants: int = 0) -> None:
        """Hand ``data`` over; ``grants``: the connection window its WINDOW_UPDATEs open."""
        self.connection_grants += grants
        for event in self.server.receive_data(data):
            if isinstance(event, ev.RequestReceived):
                self.server.send_headers(event.stream_id, b"\x88")
                self.server.send_data(event.stream_id, b"r" * answer_size)
                self.server.end_stream(event.stream_id, b"\x00\x0bgrpc-status\x010")
            elif isinstance(event, ev.DataReceived):
                self.server.acknowledge_received_data(event.stream_id, event.flow_size)
        self.now += 0.01
        self.check_output()

    def check_output(self) -> None:
        server = self.server
        for kind, flags, stream_id, payload in parse(server.data_to_send()):
            assert not self.goaway_error, "a frame after a GOAWAY with an error"
            assert kind in SENT_KINDS
            assert len(payload) <= 2**24 - 1
            if kind in (0x4, 0x6, 0x7):
                assert stream_id == 0
            elif kind in (0x0, 0x1, 0x3, 0x9):
                assert stream_id % 2 == 1
            if kind == 0x0:
                self.sent_data += len(payload)
            if kind == 0x7:
                self.goaway_error = int.from_bytes(payload[4:8], "big") != 0
            if kind == 0x8:
                assert 0 < int.from_bytes(payload, "big") <= 2**31 - 1
            if kind == 0x4 and not flags & 0x1:
                assert len(payload) % 6 == 0
        # DATA never beyond the connection window the peer granted.
        assert self.sent_data <= self.connection_grants
        assert len(server.streams) <= LIMITS.max_concurrent_streams
        assert server.held_bytes <= LIMITS.max_connection_buffer
        assert server.pending_bytes == sum(len(s.pending) for s in server.streams.values())
        assert server.held_bytes == sum(s.held for s in server.streams.values())
        # Past the bound no new stream is taken: one answer of each stream may wait beyond it.
        assert server.buffered_bytes <= LIMITS.max_connection_buffer + 8 * 4096 + 16 * 3000


def connection_grants(data: bytes) -> int:
    (kind, _, stream_id, payload), *_ = parse(data)
    if kind == 0x8 and stream_id == 0 and len(payload) == 4:
        return int.from_bytes(payload, "big") & 0x7FFFFFFF
    return 0


@PROPERTY
@given(st.lists(frames(), max_size=40), st.integers(0, 4096), st.integers(1, 8), st.data())
def test_any_frame_sequence_gives_valid_frames_and_bounded_buffers(
    sequence: list[bytes], answer_size: int, group: int, data: st.DataObject
) -> None:
    harness = Harness()
    harness.feed(PREFACE + frame(0x4, 0, 0), answer_size)
    for start in range(0, len(sequence), group):
        frames_in = sequence[start : start + group]
        grants = sum(connection_grants(one) for one in frames_in)
        joined = b"".join(frames_in)
        cut = data.draw(st.integers(0, len(joined)))  # any split of the byte stream
        harness.feed(joined[:cut], answer_size, grants)
        harness.feed(joined[cut:], answer_size)


@PROPERTY
@given(st.binary(max_size=2000))
def test_any_bytes_at_all_are_answered_without_an_exception(data: bytes) -> None:
    harness = Harness()
    harness.feed(data, 10)
    harness.feed(PREFACE + data, 10)


def read_in_turns(data: bytes, max_frames: int | None) -> tuple[list[ev.Event], bytes]:
    """Everything a fresh core says to ``data``, read at most ``max_frames`` frames a call."""
    server = H2Connection(LIMITS, clock=lambda: 0.0)
    server.initiate_connection()
    events = server.receive_data(data, max_frames)
    turns = 0
    while server.frame_waiting:
        turns += 1
        assert turns <= len(data) // 9, "frames waiting that never get read"
        events += server.receive_data(b"", max_frames)
    return events, server.data_to_send()


@PROPERTY
@given(st.lists(frames(), max_size=40), st.integers(1, 8))
def test_reading_a_few_frames_per_call_says_what_reading_all_at_once_says(
    sequence: list[bytes], max_frames: int
) -> None:
    data = PREFACE + frame(0x4, 0, 0) + b"".join(sequence)
    assert read_in_turns(data, max_frames) == read_in_turns(data, None)

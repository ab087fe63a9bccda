"""One connection's burst of frames does not keep another connection's Checks waiting.

The native gRPC server reads a bounded number of frames per turn of its loop; a read holding
thousands of requests is read on in later turns, so another client's Checks are answered
between its chunks. Measured by order (which Check the servicer saw when), never by time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from authd.transport.grpc.connection import FRAMES_PER_TURN
from authd.transport.grpc_server import NativeGrpcServer
from authd.transport.http2.connection import CONTROL_FRAME_BURST, RESET_BURST
from authd.transport.limits import ListenerLimits
from tests.support.h2peer import (
    CANCEL,
    END_HEADERS,
    ENHANCE_YOUR_CALM,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    PING,
    PREFACE,
    Peer,
    error_code,
    frame,
    grpc_message,
    rst_stream,
    settings,
    window_update,
)

AUTHORIZATION = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
BURST = 20_000  # requests in the hostile peer's one write: several full socket reads
BENIGN = 10  # the other client's Checks, one after the other
MAX_WINDOW = 2**31 - 1


class Recorder(external_auth_pb2_grpc.AuthorizationServicer):
    """Allows everything and writes down the path of each Check, in the order seen."""

    def __init__(self, expected: int) -> None:
        self.seen: list[str] = []
        self.expected = expected
        self.all_seen = asyncio.Event()

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        self.seen.append(request.attributes.request.http.path)
        if len(self.seen) == self.expected:
            self.all_seen.set()
        return external_auth_pb2.CheckResponse()


@asynccontextmanager
async def serving(expected: int) -> AsyncIterator[tuple[Recorder, int]]:
    server = NativeGrpcServer(ListenerLimits())
    recorder = Recorder(expected)
    server.add_servicer(AUTHORIZATION, recorder)
    port = await server.listen_tcp("127.0.0.1:0")
    try:
        yield recorder, port
    finally:
        await server.stop(0)


def check(path: str) -> bytes:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.path = path
    return grpc_message(request)


async def open_peer(port: int) -> Peer:
    """A peer whose windows never hold the server's answers back."""
    opening = PREFACE + settings((INITIAL_WINDOW_SIZE, MAX_WINDOW))
    peer = await Peer.connect(port, opening + window_update(0, MAX_WINDOW - 65_535))
    await peer.round_trip()
    return peer


async def drain(peer: Peer) -> None:
    while await peer.reader.read(1 << 16):
        pass


def hostile_runs(seen: list[str]) -> list[int]:
    """How many hostile Checks the servicer saw before each benign one, and after the last."""
    runs, count = [], 0
    for path in seen:
        if path == "/hostile":
            count += 1
        else:
            runs.append(count)
            count = 0
    return [*runs, count]


def interleaving() -> list[int]:
    """Benign Checks sent one after the other while a burst of Checks is read."""

    async def scenario() -> list[int]:
        async with serving(BURST + BENIGN) as (recorder, port):
            hostile, benign = await open_peer(port), await open_peer(port)
            draining = asyncio.create_task(drain(hostile))
            message = check("/hostile")
            hostile.send(*(hostile.request(1 + 2 * n, message) for n in range(BURST)))
            for n in range(BENIGN):
                stream_id = 1 + 2 * n
                benign.send(benign.request(stream_id, check(f"/benign/{n}")))
                assert (await benign.response(stream_id)).grpc_status == "0"
            await recorder.all_seen.wait()
            hostile.writer.close()
            await draining
            return hostile_runs(recorder.seen)

    return asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_burst_of_checks_on_one_connection_lets_another_clients_checks_through() -> None:
    runs = interleaving()
    assert sum(runs) == BURST
    # Each benign Check waited for a few turns' worth of the burst at most (a Check is two
    # frames), not for whole socket reads of it ...
    assert max(runs[:-1]) <= 8 * FRAMES_PER_TURN // 2
    # ... and all of them were answered while the burst was still being read.
    assert runs[-1] > 0


# Three times the burst: beyond what the budget's rate refills while the flood is read.
def ping_flood(peer: Peer) -> bytes:
    return frame(PING, 0, 0, b"12345678") * (3 * CONTROL_FRAME_BURST)


def settings_flood(peer: Peer) -> bytes:
    return settings() * (3 * CONTROL_FRAME_BURST)


def rapid_reset(peer: Peer) -> bytes:
    """Streams opened and reset at once, each a request the server has begun to handle."""
    return b"".join(
        frame(HEADERS, END_HEADERS, s, peer.header_block()) + rst_stream(s, CANCEL)
        for s in range(1, 4 * RESET_BURST, 2)
    )


@pytest.mark.parametrize("flood", [ping_flood, settings_flood, rapid_reset])
def test_a_control_frame_flood_gets_goaway_enhance_your_calm_and_others_are_served(
    flood: Callable[[Peer], bytes],
) -> None:
    async def scenario() -> tuple[int, str]:
        async with serving(1) as (_, port):
            attacker, other = await open_peer(port), await open_peer(port)
            attacker.send(flood(attacker))
            goaway = await attacker.goaway()
            other.send(other.request(1, check("/other")))
            return error_code(goaway), (await other.response(1)).grpc_status

    code, other_status = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert code == ENHANCE_YOUR_CALM
    assert other_status == "0"

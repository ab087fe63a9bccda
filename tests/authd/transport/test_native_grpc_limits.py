"""The native gRPC server within its ListenerLimits, against raw HTTP/2 peers on real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from authd.transport.grpc_server import STREAM_SEND_BUFFER, NativeGrpcServer
from authd.transport.limits import ListenerLimits
from tests.support.h2peer import (
    DATA,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    INITIAL_WINDOW_SIZE,
    NO_ERROR,
    PREFACE,
    Peer,
    error_code,
    grpc_message,
    reflection_flood,
    settings,
)

T = TypeVar("T")
TIMEOUT = 10.0
AUTHORIZATION = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]


class Authorization(external_auth_pb2_grpc.AuthorizationServicer):
    """Answers at once, or on ``release`` for path /wait."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        if request.attributes.request.http.path == "/wait":
            await self.release.wait()
        return external_auth_pb2.CheckResponse()


@asynccontextmanager
async def serving(limits: ListenerLimits) -> AsyncIterator[tuple[NativeGrpcServer, int]]:
    server = NativeGrpcServer(limits)
    authz = Authorization()
    server.add_servicer(AUTHORIZATION, authz)
    server.add_servicer(HEALTH, health_aio.HealthServicer())
    names = (AUTHORIZATION.full_name, HEALTH.full_name, reflection.SERVICE_NAME)
    server.add_servicer(REFLECTION, reflection_aio.ReflectionServicer(names))
    port = await server.listen_tcp("127.0.0.1:0")
    try:
        yield server, port
    finally:
        authz.release.set()
        await server.stop(0)


def run(limits: ListenerLimits, scenario: Callable[[NativeGrpcServer, int], Awaitable[T]]) -> T:
    async def main() -> T:
        async with serving(limits) as (server, port):
            return await scenario(server, port)

    return asyncio.run(asyncio.wait_for(main(), TIMEOUT))


async def check_answered(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        await stub.Check(external_auth_pb2.CheckRequest(), timeout=5)
    return True


def check_request(path: str = "/", body: str = "") -> bytes:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.path = path
    request.attributes.request.http.body = body
    return grpc_message(request)


def test_a_zero_window_streaming_peer_gets_bounded_buffers_and_others_are_still_served() -> None:
    limits = ListenerLimits(max_connection_buffer=256 * 1024)

    async def scenario(server: NativeGrpcServer, port: int) -> tuple[bool, int, int]:
        attacker = await Peer.connect(port, PREFACE + settings((INITIAL_WINDOW_SIZE, 0)))
        attacker.send(reflection_flood(attacker, 1, 10_000))
        await attacker.writer.drain()
        answered = await check_answered(port)
        attacker.send(reflection_flood(attacker, 3, 10_000))
        await attacker.writer.drain()
        answered = answered and await check_answered(port)
        (connection,) = [c for c in server.connections if c.calls]
        return answered, connection.h2.pending_bytes, connection.h2.held_bytes

    answered, pending, held = run(limits, scenario)
    assert answered
    # Two streams, each with at most its bound and one more answer waiting.
    assert pending <= 2 * (STREAM_SEND_BUFFER + 1024)
    assert (
        held <= limits.max_connection_buffer
    )  # requests not read are held, bounded by the windows


def test_connections_beyond_max_connections_get_goaway_enhance_your_calm() -> None:
    limits = ListenerLimits(max_connections=2)

    async def scenario(server: NativeGrpcServer, port: int) -> tuple[int, int, bool]:
        first, second = await Peer.connect(port), await Peer.connect(port)
        await first.round_trip()
        await second.round_trip()
        third = await Peer.connect(port)
        refused = await third.goaway()
        first.writer.close()
        await first.until_closed()
        fourth = await Peer.connect(port)
        await fourth.round_trip()  # a slot is free again
        return error_code(refused), server.refusals.counts["max_connections"], True

    code, counted, served_again = run(limits, scenario)
    assert code == ENHANCE_YOUR_CALM
    assert counted == 1
    assert served_again


def test_an_idle_connection_gets_goaway_no_error_and_is_closed_but_a_busy_one_stays() -> None:
    limits = ListenerLimits(idle_timeout=60.0)

    async def scenario(server: NativeGrpcServer, port: int) -> tuple[int, int, int]:
        idle, busy = await Peer.connect(port), await Peer.connect(port)
        await idle.round_trip()
        busy.send(busy.request(1, check_request("/wait")))
        await busy.round_trip()
        now = asyncio.get_running_loop().time()
        assert server.close_idle(now + 30) == 0  # not idle for long enough yet
        closed = server.close_idle(now + 61)
        goaway = await idle.goaway()
        return closed, error_code(goaway), len(server.connections)

    closed, code, left = run(limits, scenario)
    assert (closed, code, left) == (1, NO_ERROR, 1)


def test_a_message_over_max_request_bytes_is_resource_exhausted_and_counted() -> None:
    limits = ListenerLimits(max_request_bytes=1024)

    async def scenario(server: NativeGrpcServer, port: int) -> tuple[str, int]:
        peer = await Peer.connect(port)
        peer.send(peer.request(1, check_request("/", "x" * 2000)))
        response = await peer.response(1)
        return response.grpc_status, server.refusals.counts["max_request_bytes"]

    status, counted = run(limits, scenario)
    assert status == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    assert counted == 1


def test_stop_closes_a_connection_whose_peer_never_opens_its_window() -> None:
    async def scenario(server: NativeGrpcServer, port: int) -> list[int]:
        peer = await Peer.connect(port, PREFACE + settings((INITIAL_WINDOW_SIZE, 0)))
        peer.send(reflection_flood(peer, 1, 1000))
        await peer.round_trip()
        await asyncio.wait_for(server.stop(0.1), 2)
        return [f.kind for f in await peer.until_closed()]

    kinds = run(ListenerLimits(), scenario)
    assert GOAWAY in kinds  # told, then closed although its answers never went out
    assert DATA not in kinds

"""Attacks on a real ``authd run`` daemon's native gRPC listener, over real sockets.

Each attack must get a protocol-correct answer, leave another client's Check answered while
it goes on, keep the daemon's resident memory within 50 MB of where it started, and not keep
SIGTERM from stopping the daemon within 5 seconds.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from tests.support.envoy import Authd, authd_config, policy_yaml, short_tmpdir, start_authd
from tests.support.h2peer import (
    CONTINUATION,
    END_HEADERS,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    PREFACE,
    Peer,
    error_code,
    frame,
    reflection_flood,
    rss_bytes,
    settings,
    window_update,
    windowed_reflection_flood,
)

T = TypeVar("T")
MAX_CONNECTIONS = 16
LIMITS = f"""
[limits]
max_connections = {MAX_CONNECTIONS}
max_header_list_size = 8192
max_connection_buffer = 1048576
"""
RSS_GROWTH = 50 * 1024 * 1024
TIMEOUT = 30.0


def start(tmp: Path) -> Authd:
    config = authd_config() + LIMITS
    return start_authd(tmp, config, files={"policy.yaml": policy_yaml("orders")})


@pytest.fixture(scope="module")
def daemon() -> Iterator[Authd]:
    tmp = short_tmpdir()
    running = start(tmp / "d")
    try:
        yield running
    finally:
        running.stop()


async def check_answered(port: int) -> bool:
    """A Check from a client of its own, answered (allowed or denied, but answered)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        await stub.Check(external_auth_pb2.CheckRequest(), timeout=5)
    return True


def attack(daemon: Authd, scenario: Callable[[int], Awaitable[T]]) -> T:
    """Run ``scenario`` against the daemon's gRPC port; its RSS may not grow by 50 MB."""
    before = rss_bytes(daemon.process.pid)
    result = asyncio.run(asyncio.wait_for(scenario(daemon.grpc_port), TIMEOUT))
    grown = rss_bytes(daemon.process.pid) - before
    assert grown < RSS_GROWTH, f"RSS grew by {grown} bytes"
    assert daemon.process.poll() is None
    return result


def test_a_zero_window_streaming_client_does_not_take_the_daemon_down(daemon: Authd) -> None:
    async def scenario(port: int) -> bool:
        attacker = await windowed_reflection_flood(port, streams=3, rounds=30)
        answered = await check_answered(port)
        await attacker.round_trip()  # still served: its answers wait for its window
        answered = answered and await check_answered(port)
        attacker.writer.close()
        return answered

    assert attack(daemon, scenario)


def test_a_continuation_flood_gets_goaway_enhance_your_calm(daemon: Authd) -> None:
    async def scenario(port: int) -> tuple[int, bool]:
        attacker = await Peer.connect(port)
        attacker.send(frame(HEADERS, 0, 1, attacker.header_block()[:8]))
        for _ in range(100):
            attacker.send(frame(CONTINUATION, 0, 1) * 1000)
        answered = await check_answered(port)
        return error_code(await attacker.goaway()), answered

    assert attack(daemon, scenario) == (ENHANCE_YOUR_CALM, True)


def test_a_window_setting_above_2_31_minus_1_gets_goaway_flow_control_error(
    daemon: Authd,
) -> None:
    async def scenario(port: int) -> tuple[int, int, bool]:
        direct = await Peer.connect(port, PREFACE + settings((INITIAL_WINDOW_SIZE, 2**31)))
        by_overflow = await Peer.connect(port, PREFACE + settings((INITIAL_WINDOW_SIZE, 0)))
        by_overflow.send(reflection_flood(by_overflow, 1, 1))
        by_overflow.send(window_update(1, 2**31 - 1))
        by_overflow.send(settings((INITIAL_WINDOW_SIZE, 1 << 20)))  # whatever it sent since
        answered = await check_answered(port)
        return error_code(await direct.goaway()), error_code(await by_overflow.goaway()), answered

    assert attack(daemon, scenario) == (FLOW_CONTROL_ERROR, FLOW_CONTROL_ERROR, True)


def test_idle_connections_beyond_the_cap_are_refused_and_clients_already_in_are_served(
    daemon: Authd,
) -> None:
    async def scenario(port: int) -> tuple[list[int], bool]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            await stub.Check(external_auth_pb2.CheckRequest(), timeout=5)
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
            refused = []
            for reader, _ in idle[MAX_CONNECTIONS:]:
                sent = await reader.read()  # SETTINGS, GOAWAY, then the end of the stream
                goaways = [f for f in Peer.parse(sent) if f.kind == GOAWAY]
                refused += [error_code(f) for f in goaways]
            await stub.Check(external_auth_pb2.CheckRequest(), timeout=5)
            for _, writer in idle:
                writer.close()
            return refused, True

    refused, answered = attack(daemon, scenario)
    assert refused  # the ones beyond the cap (the cap counts the client's connection too)
    assert set(refused) == {ENHANCE_YOUR_CALM}
    assert answered


def test_a_header_list_larger_than_advertised_gets_goaway_enhance_your_calm(
    daemon: Authd,
) -> None:
    async def scenario(port: int) -> tuple[int, bool]:
        attacker = await Peer.connect(port)
        block = attacker.header_block(**{"x-huge": "h" * 100_000})
        frames = [frame(HEADERS, 0, 1, block[:16_000])]
        for start in range(16_000, len(block), 16_000):
            last = start + 16_000 >= len(block)
            chunk = block[start : start + 16_000]
            frames.append(frame(CONTINUATION, END_HEADERS if last else 0, 1, chunk))
        attacker.send(*frames)
        answered = await check_answered(port)
        return error_code(await attacker.goaway()), answered

    assert attack(daemon, scenario) == (ENHANCE_YOUR_CALM, True)


def test_sigterm_stops_the_daemon_within_5_seconds_during_an_attack() -> None:
    running = start(short_tmpdir() / "d")

    async def scenario(port: int) -> None:
        await windowed_reflection_flood(port, streams=3, rounds=5)
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
        running.process.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, running.process.wait, 5)
        for _, writer in idle:
            writer.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(running.grpc_port), TIMEOUT))
    except subprocess.TimeoutExpired:
        pytest.fail("authd did not stop within 5 s of SIGTERM")
    finally:
        running.stop()
    assert running.process.returncode == 0

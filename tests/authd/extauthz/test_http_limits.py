"""HTTP service mode within its limits: every excess is a 4xx and a close, counted, no crash."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from authd.authz.pipeline import Authorizer
from authd.check.model import Identities
from authd.extauthz.http_service import MAX_PIPELINED, HttpAuthzServer
from authd.transport.limits import ListenerLimits
from ca.spiffe_id import SpiffeId
from tests.support.authz import FixedIdentities, PathPolicy
from tests.support.http_mode import (
    GatedIdentities,
    closed_by_server,
    exchange,
    get,
    read_response,
)

WEB = SpiffeId.parse("spiffe://example.org/web")
LIMITS = ListenerLimits(
    max_connections=4,
    idle_timeout=0.5,
    max_header_list_size=1024,
    max_url_length=256,
    max_request_bytes=4096,
)


def serve(
    body: Callable[[HttpAuthzServer], Awaitable[Any]],
    *,
    limits: ListenerLimits = LIMITS,
    resolver: Any = None,
    refused: list[str] | None = None,
) -> Any:
    policy = PathPolicy()
    authz = Authorizer(
        resolver=resolver or FixedIdentities(Identities(peer=WEB)), policy=lambda: policy
    )

    async def run() -> Any:
        server = HttpAuthzServer(
            authz,
            host="127.0.0.1",
            port=0,
            limits=limits,
            on_refusal=None if refused is None else refused.append,
        )
        await server.start()
        try:
            return await body(server)
        finally:
            await server.close()

    return asyncio.run(run())


def refused_with(raw: bytes) -> tuple[int, bool, list[str]]:
    """Send ``raw``: the status, whether the server closed, and the refusals counted."""
    refused: list[str] = []

    async def body(server: HttpAuthzServer) -> tuple[int, bool]:
        response, closed = await exchange(server.port, raw)
        return response.status, closed

    status, closed = serve(body, refused=refused)
    return status, closed, refused


def test_header_block_over_the_limit_is_refused_431_and_closed() -> None:
    raw = get("/public", *(f"x-h{i}: {'v' * 60}" for i in range(20)))
    assert refused_with(raw) == (431, True, ["header_too_large"])


def test_unterminated_header_line_is_refused_431_before_it_ends() -> None:
    raw = b"GET /public HTTP/1.1\r\nhost: a\r\nx-long: " + b"v" * 8192
    assert refused_with(raw) == (431, True, ["header_too_large"])


def test_url_over_the_limit_is_refused_414_and_closed() -> None:
    assert refused_with(get("/public/" + "a" * 300)) == (414, True, ["url_too_long"])


def test_declared_body_over_the_limit_is_refused_413_before_it_is_read() -> None:
    raw = b"POST /public HTTP/1.1\r\nhost: a\r\ncontent-length: 1073741824\r\n\r\n"
    assert refused_with(raw) == (413, True, ["body_too_large"])


def test_chunked_body_over_the_limit_is_refused_413() -> None:
    chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
    raw = b"POST /public HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n" + chunk * 2
    assert refused_with(raw) == (413, True, ["body_too_large"])


def test_body_at_the_limit_reaches_the_policy_whole() -> None:
    fixed = FixedIdentities(Identities(peer=WEB))

    async def body(server: HttpAuthzServer) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(get("/public", body=b"b" * 4096))
        response = await read_response(reader)
        writer.close()
        return response.status

    assert serve(body, resolver=fixed) == 200
    (ctx,) = fixed.seen
    assert ctx.body == b"b" * 4096


def test_connect_is_refused_405_and_closed_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = b"CONNECT internal.example:443 HTTP/1.1\r\nhost: internal.example:443\r\n\r\n"
    with caplog.at_level(logging.WARNING):
        assert refused_with(raw) == (405, True, ["connect"])
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]


def test_upgrade_is_refused_400_and_closed_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = get("/public", "connection: upgrade", "upgrade: websocket") + b"\x81\x05hello"
    with caplog.at_level(logging.WARNING):
        assert refused_with(raw) == (400, True, ["upgrade"])
    assert not [r for r in caplog.records if r.exc_info]


def test_repeated_headers_reach_the_policy_joined_in_order() -> None:
    fixed = FixedIdentities(Identities(peer=WEB))
    raw = get("/public", "x-tag: a", "x-other: z", "x-tag: b", "x-tag: c")

    async def body(server: HttpAuthzServer) -> int:
        response, _ = await exchange(server.port, raw)
        return response.status

    assert serve(body, resolver=fixed) == 200
    assert fixed.seen[0].headers["x-tag"] == "a,b,c"
    assert fixed.seen[0].headers["x-other"] == "z"


def test_connections_beyond_the_cap_are_closed_and_the_others_answered() -> None:
    refused: list[str] = []

    async def body(server: HttpAuthzServer) -> list[int]:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
        while len(server.connections) < 4:
            await asyncio.sleep(0.01)
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await closed_by_server(extra_reader)
        extra_writer.close()
        statuses = []
        for reader, writer in held:
            writer.write(get("/public"))
            statuses.append((await read_response(reader)).status)
            writer.close()
        return statuses

    limits = ListenerLimits(max_connections=4, idle_timeout=30)
    assert serve(body, limits=limits, refused=refused) == [200, 200, 200, 200]
    assert refused == ["max_connections"]


def test_idle_connection_is_closed_after_idle_timeout_without_a_refusal() -> None:
    refused: list[str] = []

    async def body(server: HttpAuthzServer) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(get("/public"))
        assert (await read_response(reader)).status == 200
        closed = await closed_by_server(reader, timeout=5)
        writer.close()
        return closed

    assert serve(body, refused=refused)
    assert refused == []


def test_slowloris_request_is_cut_at_idle_timeout_and_counted() -> None:
    refused: list[str] = []

    async def body(server: HttpAuthzServer) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /public HTTP/1.1\r\nhost: a\r\n")
        try:
            for _ in range(100):  # one header byte every 0.1 s: far slower than the timeout
                writer.write(b"x")
                await writer.drain()
                if reader.at_eof():
                    break
                await asyncio.sleep(0.1)
                await asyncio.sleep(0)
        except ConnectionError:
            pass
        closed = await closed_by_server(reader, timeout=5)
        writer.close()
        return closed

    assert serve(body, refused=refused)
    assert refused == ["request_timeout"]


def test_reading_pauses_while_a_check_is_in_flight() -> None:
    resolver = GatedIdentities(Identities(peer=WEB))

    async def body(server: HttpAuthzServer) -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(get("/public/1"))
        await asyncio.wait_for(resolver.arrived.wait(), 5)
        (connection,) = server.connections
        assert not connection.reading
        resolver.gate.set()
        first = await read_response(reader)
        assert connection.reading
        writer.write(get("/public/2"))
        second = await read_response(reader)
        writer.close()
        return [first.status, second.status]

    assert serve(body, resolver=resolver, limits=ListenerLimits()) == [200, 200]


def test_requests_read_ahead_beyond_the_pipeline_depth_are_refused_after_the_answers() -> None:
    resolver = GatedIdentities(Identities(peer=WEB))
    refused: list[str] = []

    async def body(server: HttpAuthzServer) -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(get("/public") * (MAX_PIPELINED + 5))
        await asyncio.wait_for(resolver.arrived.wait(), 5)
        resolver.gate.set()
        statuses = []
        while not statuses or statuses[-1] == 200:
            statuses.append((await read_response(reader)).status)
        assert await closed_by_server(reader)
        writer.close()
        return statuses

    statuses = serve(body, resolver=resolver, refused=refused, limits=ListenerLimits())
    assert statuses == [200] * (MAX_PIPELINED + 1) + [429]
    assert refused == ["pipeline_depth"]


def test_close_ends_connections_that_are_still_open() -> None:
    async def body(server: HttpAuthzServer) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /public HTTP/1.1\r\nhost: a\r\n")  # never finished
        while not server.connections:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(server.close(), 5)
        closed = await closed_by_server(reader, timeout=5)
        writer.close()
        return closed

    assert serve(body, limits=ListenerLimits())

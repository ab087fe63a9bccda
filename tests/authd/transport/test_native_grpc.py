"""The native gRPC server: what real gRPC clients see, and HTTP/2 spoken to it frame by frame."""

from __future__ import annotations

import asyncio
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import hpack
import pytest
import uvloop
from envoy.service.accesslog.v3 import als_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from authd.transport.grpc_server import NativeGrpcServer, changes_dynamic_table, percent_encode
from tests.support.h2peer import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADER_TABLE_SIZE,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_FRAME_SIZE,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    Frame,
    Peer,
    Response,
    error_code,
    frame,
    goaway,
    grpc_message,
    padded,
    rst_stream,
    settings,
    window_update,
)

T = TypeVar("T")
TIMEOUT = 10.0  # the bound on every test, stop included; a working server needs far less

AUTHORIZATION = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
CHECK = "/envoy.service.auth.v3.Authorization/Check"
SECRET = "secret internals"

LOOPS = pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


class Authorization(external_auth_pb2_grpc.AuthorizationServicer):
    """Check steered by the request's path; its body is the argument of each behaviour."""

    def __init__(self) -> None:
        self.waiting = 0  # calls to /wait that have reached the handler
        self.cancelled = 0  # calls to /wait cancelled while they waited
        self.entered = asyncio.Event()  # set each time one does
        self.release = asyncio.Event()  # lets them all answer

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        path, body = http.path, http.body
        if path == "/yield":
            await asyncio.sleep(0)
        elif path == "/wait":
            self.waiting += 1
            self.entered.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        elif path == "/abort":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, body)
        elif path == "/raise":
            raise RuntimeError(f"{SECRET}: {body}")
        elif path == "/big":
            body = "x" * int(body)
        elif path == "/size":
            body = str(len(body))
        elif path == "/set-code":
            context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
            context.set_details(body)
        return reply(body)


def check(path: str, body: str = "") -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.path = path
    request.attributes.request.http.body = body
    return request


def reply(body: str) -> external_auth_pb2.CheckResponse:
    return external_auth_pb2.CheckResponse(
        denied_response=external_auth_pb2.DeniedHttpResponse(body=body)
    )


@dataclass
class Served:
    server: NativeGrpcServer
    port: int
    authz: Authorization
    health: health_aio.HealthServicer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def calls_waiting(self, count: int) -> None:
        """Return once ``count`` calls to /wait have reached the handler."""
        while self.authz.waiting < count:
            self.authz.entered.clear()
            await self.authz.entered.wait()


@asynccontextmanager
async def serving() -> AsyncIterator[Served]:
    authz, health = Authorization(), health_aio.HealthServicer()
    await health.set("authd", health_pb2.HealthCheckResponse.SERVING)
    server = NativeGrpcServer()
    server.add_servicer(AUTHORIZATION, authz)
    server.add_servicer(HEALTH, health)
    names = (AUTHORIZATION.full_name, HEALTH.full_name, reflection.SERVICE_NAME)
    server.add_servicer(REFLECTION, reflection_aio.ReflectionServicer(names))
    port = await server.listen_tcp("127.0.0.1:0")
    try:
        yield Served(server, port, authz, health)
    finally:
        authz.release.set()
        await server.stop(0)


def run(
    scenario: Callable[[Served], Awaitable[T]],
    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> T:
    async def main() -> T:
        async with serving() as served:
            return await scenario(served)

    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(asyncio.wait_for(main(), TIMEOUT))


def run_with_stub(
    scenario: Callable[[external_auth_pb2_grpc.AuthorizationStub, Served], Awaitable[T]],
    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> T:
    async def with_channel(served: Served) -> T:
        async with grpc.aio.insecure_channel(served.target) as channel:
            return await scenario(external_auth_pb2_grpc.AuthorizationStub(channel), served)

    return run(with_channel, new_loop)


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory whose paths fit in a Unix socket address (108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ngrpc") as path:
        yield Path(path)


# --- real gRPC clients: grpc.aio and the sync channel --------------------------------------


def test_unary_call_is_answered_with_its_response_and_ok() -> None:
    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, _: Served) -> Any:
        call = stub.Check(check("/echo", "hello"), timeout=5)
        return await call, await call.code()

    response, code = run_with_stub(scenario)
    assert response.denied_response.body == "hello"
    assert code == grpc.StatusCode.OK


def test_sync_client_gets_responses_and_status_codes() -> None:
    def calls(target: str) -> tuple[str, grpc.StatusCode, grpc.StatusCode]:
        with grpc.insecure_channel(target) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            body = stub.Check(check("/yield", "sync"), timeout=5).denied_response.body
            with pytest.raises(grpc.RpcError) as aborted:
                stub.Check(check("/abort", "no"), timeout=5)
            unknown = channel.unary_unary("/envoy.service.auth.v3.Authorization/Nope")
            with pytest.raises(grpc.RpcError) as unimplemented:
                unknown(b"", timeout=5)
        return body, aborted.value.code(), unimplemented.value.code()

    async def scenario(served: Served) -> tuple[str, grpc.StatusCode, grpc.StatusCode]:
        return await asyncio.to_thread(calls, served.target)

    body, aborted, unimplemented = run(scenario)
    assert body == "sync"
    assert aborted == grpc.StatusCode.PERMISSION_DENIED
    assert unimplemented == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    "details", ["plain refusal", "100% refusé, naïve ☃\ttab", "%41 is not A", "%"]
)
def test_abort_sends_its_code_and_details_percent_encoded(details: str) -> None:
    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, _: Served) -> Any:
        return await rpc_error(stub.Check(check("/abort", details), timeout=5))

    error = run_with_stub(scenario)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == details


def test_details_longer_than_1024_characters_are_cut_to_1024() -> None:
    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, _: Served) -> Any:
        return await rpc_error(stub.Check(check("/abort", "é" * 3000), timeout=5))

    assert run_with_stub(scenario).details() == "é" * 1024


def test_percent_encoding_keeps_printable_ascii_and_escapes_percent_and_the_rest() -> None:
    assert percent_encode("a b~") == b"a b~"
    assert percent_encode("100%") == b"100%25"
    assert percent_encode("é\n") == b"%C3%A9%0A"


def test_set_code_and_details_end_the_call_with_that_status() -> None:
    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, _: Served) -> Any:
        return await rpc_error(stub.Check(check("/set-code", "not yet"), timeout=5))

    error = run_with_stub(scenario)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "not yet"


def test_handler_exception_is_unknown_without_its_message(caplog: Any) -> None:
    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, _: Served) -> Any:
        return await rpc_error(stub.Check(check("/raise", "token=abc"), timeout=5))

    error = run_with_stub(scenario)
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert SECRET not in error.details()
    assert "token=abc" not in error.details()
    assert any(r.exc_info and SECRET in str(r.exc_info[1]) for r in caplog.records)


def test_unknown_method_and_unknown_service_are_unimplemented() -> None:
    async def scenario(_: external_auth_pb2_grpc.AuthorizationStub, served: Served) -> Any:
        codes = []
        async with grpc.aio.insecure_channel(served.target) as channel:
            for path in ("/envoy.service.auth.v3.Authorization/Nope", "/no.Such/Service"):
                call = channel.unary_unary(path)(b"", timeout=5)
                codes.append((await rpc_error(call)).code())
        return codes

    assert run_with_stub(scenario) == [grpc.StatusCode.UNIMPLEMENTED] * 2


def test_handlers_that_await_an_event_set_later_each_answer_their_own_call() -> None:
    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, served: Served) -> Any:
        held = [stub.Check(check("/wait", f"held-{i}"), timeout=5) for i in range(50)]
        await served.calls_waiting(50)
        # Another call answered meanwhile: the server's loop has turned with all 50 suspended.
        meanwhile = await stub.Check(check("/yield", "meanwhile"), timeout=5)
        answered_early = [call for call in held if call.done()]
        served.authz.release.set()
        answers = [r.denied_response.body for r in await asyncio.gather(*held)]
        return meanwhile.denied_response.body, answered_early, answers

    meanwhile, answered_early, answers = run_with_stub(scenario)
    assert meanwhile == "meanwhile"
    assert answered_early == []
    assert answers == [f"held-{i}" for i in range(50)]


@LOOPS
def test_many_concurrent_calls_on_one_channel_each_get_their_own_response(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, _: Served) -> Any:
        # Every other handler yields to the loop, so answers leave out of request order.
        paths = ("/echo", "/yield")
        calls = [stub.Check(check(paths[i % 2], f"call-{i}"), timeout=5) for i in range(200)]
        return [r.denied_response.body for r in await asyncio.gather(*calls)]

    assert run_with_stub(scenario, new_loop) == [f"call-{i}" for i in range(200)]


@LOOPS
def test_large_messages_cross_frames_and_flow_control_windows_both_ways(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    big_response, big_request = 1 << 20, 3 << 20

    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, _: Served) -> Any:
        downloads = [stub.Check(check("/big", str(big_response)), timeout=5) for _ in range(3)]
        received = [len(r.denied_response.body) for r in await asyncio.gather(*downloads)]
        # 18 MiB in all: more than the 16 MiB connection window the server first grants.
        uploads = [stub.Check(check("/size", "y" * big_request), timeout=5) for _ in range(6)]
        uploaded = [r.denied_response.body for r in await asyncio.gather(*uploads)]
        return received, uploaded

    received, uploaded = run_with_stub(scenario, new_loop)
    assert received == [big_response] * 3
    assert uploaded == [str(big_request)] * 6


def test_request_over_4_mib_is_resource_exhausted_and_the_channel_still_works() -> None:
    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, _: Served) -> Any:
        error = await rpc_error(stub.Check(check("/size", "z" * (4 << 20)), timeout=5))
        after = await stub.Check(check("/echo", "after"), timeout=5)
        return error.code(), after.denied_response.body

    assert run_with_stub(scenario) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "after")


def test_client_cancelling_a_call_leaves_the_connection_serving_others() -> None:
    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, served: Served) -> Any:
        slow = stub.Check(check("/wait", "cancelled"), timeout=5)
        await served.calls_waiting(1)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        after = await stub.Check(check("/echo", "after"), timeout=5)
        (connection,) = served.server.connections
        return await slow.code(), after.denied_response.body, dict(connection.calls)

    code, after, open_streams = run_with_stub(scenario)
    assert code == grpc.StatusCode.CANCELLED
    assert after == "after"
    assert open_streams == {}  # the reset stream is forgotten


def test_client_cancelling_a_waiting_call_cancels_its_handler() -> None:
    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, served: Served) -> int:
        slow = stub.Check(check("/wait", "cancelled"), timeout=5)
        await served.calls_waiting(1)
        slow.cancel()
        while served.authz.cancelled == 0:  # the RST_STREAM reaches the server, then the task
            await asyncio.sleep(0.001)
        return served.authz.cancelled

    assert run_with_stub(scenario) == 1


def test_health_check_knows_registered_services_only() -> None:
    async def scenario(served: Served) -> Any:
        async with grpc.aio.insecure_channel(served.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            serving = await stub.Check(health_pb2.HealthCheckRequest(service="authd"), timeout=5)
            unknown = await rpc_error(
                stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            )
            return serving.status, unknown.code()

    status, unknown = run(scenario)
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert unknown == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_a_status_change_and_ends_unavailable_when_the_server_stops() -> None:
    async def scenario(served: Served) -> Any:
        async with grpc.aio.insecure_channel(served.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="authd"), timeout=5
            )
            first = await watch.read()
            await served.health.set("authd", health_pb2.HealthCheckResponse.NOT_SERVING)
            second = await watch.read()
            await served.server.stop(1)
            return first.status, second.status, await rpc_error(watch.read())

    first, second, end = run(scenario)
    assert first == health_pb2.HealthCheckResponse.SERVING
    assert second == health_pb2.HealthCheckResponse.NOT_SERVING
    assert (end.code(), end.details()) == (grpc.StatusCode.UNAVAILABLE, "the server is stopping")


def test_reflection_lists_services_and_finds_the_file_of_a_symbol() -> None:
    async def scenario(served: Served) -> Any:
        async with grpc.aio.insecure_channel(served.target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(timeout=5)
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            listed = await call.read()
            symbol = AUTHORIZATION.full_name
            await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
            found = await call.read()
            await call.done_writing()
            return listed, found, await call.read(), await call.code()

    listed, found, end, code = run(scenario)
    names = {s.name for s in listed.list_services_response.service}
    assert names == {AUTHORIZATION.full_name, HEALTH.full_name, reflection.SERVICE_NAME}
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in found.file_descriptor_response.file_descriptor_proto
    ]
    assert "envoy/service/auth/v3/external_auth.proto" in files
    assert end is grpc.aio.EOF
    assert code == grpc.StatusCode.OK


def test_a_client_streaming_method_is_refused_when_added() -> None:
    service = als_pb2.DESCRIPTOR.services_by_name["AccessLogService"]

    class AccessLogs:
        async def StreamAccessLogs(self, requests: Any, context: Any) -> None:
            raise AssertionError("never served")

    with pytest.raises(ValueError, match="StreamAccessLogs"):
        NativeGrpcServer().add_servicer(service, AccessLogs())


def test_unix_socket_listener_serves_calls(short_tmp: Path) -> None:
    path = str(short_tmp / "authz.sock")

    async def scenario(served: Served) -> Any:
        await served.server.listen_unix(path)
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            return (await stub.Check(check("/echo", "over unix"), timeout=5)).denied_response.body

    assert run(scenario) == "over unix"


def test_stale_socket_file_is_replaced_but_a_live_one_or_a_plain_file_is_refused(
    short_tmp: Path,
) -> None:
    path = str(short_tmp / "authz.sock")
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(path)
    leftover.close()  # the file stays behind, as after a crash
    plain = short_tmp / "plain"
    plain.write_text("keep me")

    async def scenario(served: Served) -> Any:
        await served.server.listen_unix(path)
        other = NativeGrpcServer()
        try:
            with pytest.raises(OSError, match="in use"):
                await other.listen_unix(path)
            with pytest.raises(OSError, match="not a socket"):
                await other.listen_unix(str(plain))
        finally:
            await other.stop(0)
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            return (await stub.Check(check("/echo", "still mine"), timeout=5)).denied_response.body

    assert run(scenario) == "still mine"
    assert plain.read_text() == "keep me"


def test_tcp_port_in_use_is_an_os_error() -> None:
    async def scenario(served: Served) -> None:
        other = NativeGrpcServer()
        try:
            with pytest.raises(OSError):
                await other.listen_tcp(served.target)
        finally:
            await other.stop(0)

    run(scenario)


def test_stop_lets_a_call_in_flight_finish_and_refuses_new_calls() -> None:
    async def scenario(stub: external_auth_pb2_grpc.AuthorizationStub, served: Served) -> Any:
        slow = stub.Check(check("/wait", "in flight"), timeout=5)
        await served.calls_waiting(1)
        stopping = asyncio.ensure_future(served.server.stop(5))
        await asyncio.sleep(0)  # stop() closes the listeners and sends GOAWAY before it waits
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", served.port)
        async with grpc.aio.insecure_channel(served.target) as channel:
            fresh = external_auth_pb2_grpc.AuthorizationStub(channel)
            late = fresh.Check(check("/echo"), timeout=5)
            refused = (await rpc_error(late)).code()
        stopped_early = stopping.done()
        served.authz.release.set()
        body = (await slow).denied_response.body
        await stopping
        return body, refused, stopped_early, served.server.connections

    body, refused, stopped_early, connections = run_with_stub(scenario)
    assert body == "in flight"
    assert refused == grpc.StatusCode.UNAVAILABLE
    assert not stopped_early  # stop() waited for the call in flight
    assert connections == set()


# --- HTTP/2 frame by frame ----------------------------------------------------------------


@pytest.mark.parametrize(
    "opening", [b"GET / HTTP/1.1\r\nHost: authd\r\n\r\n", b"GET /"], ids=["long", "short"]
)
def test_bad_preface_gets_goaway_protocol_error_and_close(opening: bytes) -> None:
    async def scenario(served: Served) -> Frame:
        return await (await Peer.connect(served.port, opening)).goaway()

    assert error_code(run(scenario)) == PROTOCOL_ERROR


def test_first_frame_other_than_settings_gets_goaway() -> None:
    async def scenario(served: Served) -> Frame:
        peer = await Peer.connect(served.port, PREFACE + frame(PING, 0, 0, b"12345678"))
        return await peer.goaway()

    assert error_code(run(scenario)) == PROTOCOL_ERROR


def test_server_opens_with_its_settings_acknowledges_ours_and_answers_ping() -> None:
    async def scenario(served: Served) -> list[Frame | None]:
        peer = await Peer.connect(served.port)
        peer.send(frame(PING, 0, 0, b"pingpong"))
        return [await peer.read() for _ in range(4)]

    ours, window, ack, pong = run(scenario)
    assert ours is not None and (ours.kind, ours.flags) == (SETTINGS, 0)
    announced = dict(struct.iter_unpack(">HI", ours.payload))
    assert announced[INITIAL_WINDOW_SIZE] == 1 << 24
    assert window == Frame(WINDOW_UPDATE, 0, 0, ((1 << 24) - 65_535).to_bytes(4, "big"))
    assert ack == Frame(SETTINGS, ACK, 0, b"")
    assert pong == Frame(PING, ACK, 0, b"pingpong")


def test_frame_larger_than_16384_gets_goaway_frame_size_error() -> None:
    async def scenario(served: Served) -> Frame:
        peer = await Peer.connect(served.port)
        peer.send(frame(DATA, 0, 1, b"\0" * 16_385))
        return await peer.goaway()

    assert error_code(run(scenario)) == FRAME_SIZE_ERROR


def test_unknown_frame_types_are_ignored() -> None:
    async def scenario(served: Served) -> list[Frame]:
        peer = await Peer.connect(served.port)
        peer.send(frame(0xFA, 0xFF, 0, b"whatever"), frame(0xFB, 0, 3))
        return await peer.round_trip()

    assert [f.kind for f in run(scenario)] == [SETTINGS, WINDOW_UPDATE, SETTINGS]


def test_headers_split_across_continuation_frames_make_one_request() -> None:
    async def scenario(served: Served) -> Response:
        peer = await Peer.connect(served.port)
        block = peer.header_block()
        third = len(block) // 3
        peer.send(
            frame(HEADERS, 0, 1, block[:third]),
            frame(CONTINUATION, 0, 1, block[third : 2 * third]),
            frame(CONTINUATION, END_HEADERS, 1, block[2 * third :]),
            frame(DATA, END_STREAM, 1, grpc_message(check("/echo", "continued"))),
        )
        return await peer.response(1)

    response = run(scenario)
    assert response.status == "200"
    assert response.data == grpc_message(reply("continued"))
    assert response.grpc_status == "0"


def test_end_stream_on_headers_continued_in_continuation_ends_the_request() -> None:
    async def scenario(served: Served) -> list[Frame]:
        peer = await Peer.connect(served.port)
        block = peer.header_block(**{":method": "GET"})
        peer.send(
            frame(HEADERS, END_STREAM, 1, block[:4]),
            frame(CONTINUATION, END_HEADERS, 1, block[4:]),
        )
        return [f for f in await peer.round_trip() if f.stream_id == 1]

    (only,) = run(scenario)  # the 405 alone: no RST_STREAM asking for the rest of a request
    assert (only.kind, only.flags) == (HEADERS, END_HEADERS | END_STREAM)


def test_another_frame_inside_a_header_block_gets_goaway() -> None:
    async def scenario(served: Served) -> Frame:
        peer = await Peer.connect(served.port)
        peer.send(frame(HEADERS, 0, 1, peer.header_block()[:5]), frame(PING, 0, 0, b"12345678"))
        return await peer.goaway()

    assert error_code(run(scenario)) == PROTOCOL_ERROR


def test_padded_headers_with_priority_and_padded_data_are_read_without_padding() -> None:
    async def scenario(served: Served) -> Response:
        peer = await Peer.connect(served.port)
        priority = struct.pack(">IB", 0, 15)
        flags = END_HEADERS | PADDED | PRIORITY_FLAG
        peer.send(
            frame(HEADERS, flags, 1, padded(priority + peer.header_block(), 7)),
            frame(DATA, PADDED, 1, padded(grpc_message(check("/echo", "padded")), 200)),
            frame(DATA, END_STREAM | PADDED, 1, padded(b"", 3)),
        )
        return await peer.response(1)

    response = run(scenario)
    assert response.data == grpc_message(reply("padded"))
    assert response.grpc_status == "0"


def test_frames_delivered_one_byte_at_a_time_are_reassembled() -> None:
    async def scenario(served: Served) -> Response:
        peer = await Peer.connect(served.port, b"")
        wire = PREFACE + settings() + peer.request(1, grpc_message(check("/echo", "bytewise")))
        for i in range(len(wire)):
            peer.send(wire[i : i + 1])
            await peer.writer.drain()
        return await peer.response(1)

    assert run(scenario).data == grpc_message(reply("bytewise"))


@pytest.mark.parametrize("stream_id", [6, 3], ids=["even", "not-increasing"])
def test_headers_on_an_even_or_not_increasing_stream_id_get_goaway(stream_id: int) -> None:
    async def scenario(served: Served) -> Frame:
        peer = await Peer.connect(served.port)
        peer.send(peer.request(5, grpc_message(check("/echo"))))
        assert (await peer.response(5)).grpc_status == "0"
        peer.send(peer.request(stream_id, grpc_message(check("/echo"))))
        return await peer.goaway()

    got = run(scenario)
    assert error_code(got) == PROTOCOL_ERROR
    assert int.from_bytes(got.payload[:4], "big") == 5  # the last stream it processed


def test_a_method_other_than_post_is_http_405() -> None:
    async def scenario(served: Served) -> Response:
        peer = await Peer.connect(served.port)
        block = peer.header_block(**{":method": "GET"})
        peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
        return await peer.response(1)

    response = run(scenario)
    assert response.headers == [{":status": "405"}]
    assert response.frames[-1].flags & END_STREAM


def test_content_type_other_than_grpc_is_http_415() -> None:
    async def scenario(served: Served) -> Response:
        peer = await Peer.connect(served.port)
        message = grpc_message(check("/echo"))
        peer.send(peer.request(1, message, **{"content-type": "text/plain"}))
        return await peer.response(1)

    assert run(scenario).headers == [{":status": "415"}]


def test_compressed_message_is_unimplemented_in_a_trailers_only_response() -> None:
    async def scenario(served: Served) -> Response:
        peer = await Peer.connect(served.port)
        peer.send(peer.request(1, grpc_message(check("/echo"), compressed=True)))
        return await peer.response(1)

    response = run(scenario)
    (only,) = response.headers
    assert only[":status"] == "200"
    assert only["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert not response.data


@LOOPS
def test_response_waits_for_a_tiny_stream_window_and_trailers_follow_all_data(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    window, body = 10, "0123456789" * 6
    expected = grpc_message(reply(body))

    async def scenario(served: Served) -> tuple[list[int], Response]:
        peer = await Peer.connect(served.port, PREFACE + settings((INITIAL_WINDOW_SIZE, window)))
        peer.send(peer.request(1, grpc_message(check("/echo", body))))
        response, sent = Response(), []
        while not await peer.absorb_round_trip(response, 1):
            sent.append(len(response.data))
            peer.send(window_update(1, window))
        sent.append(len(response.data))
        return sent, response

    sent, response = run(scenario, new_loop)
    # Each grant of 10 bytes is used up exactly, never exceeded, until the message is out.
    assert sent == [min(n, len(expected)) for n in range(window, len(expected) + window, window)]
    assert response.data == expected
    data_frames = [f for f in response.frames if f.kind == DATA]
    assert all(len(f.payload) <= window for f in data_frames)
    assert [f.kind for f in response.frames] == [HEADERS] + [DATA] * len(data_frames) + [HEADERS]
    assert response.grpc_status == "0"


def test_response_waits_for_the_connection_window_too() -> None:
    size = 100_000
    expected = grpc_message(reply("x" * size))

    async def scenario(served: Served) -> tuple[list[int], Response]:
        opening = PREFACE + settings((INITIAL_WINDOW_SIZE, 1 << 20))
        peer = await Peer.connect(served.port, opening)
        peer.send(peer.request(1, grpc_message(check("/big", str(size)))))
        response, sent = Response(), []
        while not await peer.absorb_round_trip(response, 1):
            sent.append(len(response.data))
            peer.send(window_update(0, 65_535))
        sent.append(len(response.data))
        return sent, response

    sent, response = run(scenario)
    assert sent == [65_535, len(expected)]
    assert response.data == expected
    assert all(len(f.payload) <= 16_384 for f in response.frames if f.kind == DATA)


def test_data_frames_grow_to_the_peers_max_frame_size() -> None:
    async def scenario(served: Served) -> Response:
        opening = PREFACE + settings((INITIAL_WINDOW_SIZE, 1 << 20), (MAX_FRAME_SIZE, 40_000))
        peer = await Peer.connect(served.port, opening + window_update(0, 1 << 20))
        peer.send(peer.request(1, grpc_message(check("/big", "100000"))))
        return await peer.response(1)

    sizes = [len(f.payload) for f in run(scenario).frames if f.kind == DATA]
    assert max(sizes) == 40_000


def test_settings_that_shrink_the_window_hold_data_until_it_is_positive_again() -> None:
    async def scenario(served: Served) -> list[int]:
        peer = await Peer.connect(served.port, PREFACE + settings((INITIAL_WINDOW_SIZE, 10)))
        peer.send(peer.request(1, grpc_message(check("/echo", "a" * 40))))
        response, sent = Response(), []
        for change in (
            settings((INITIAL_WINDOW_SIZE, 5)),  # 10 sent, window -5
            settings((INITIAL_WINDOW_SIZE, 20)),  # window +10
            window_update(1, 1000),
        ):
            await peer.absorb_round_trip(response, 1)
            sent.append(len(response.data))
            peer.send(change)
        assert await peer.absorb_round_trip(response, 1)
        return [*sent, len(response.data)]

    assert run(scenario) == [10, 10, 20, len(grpc_message(reply("a" * 40)))]


def test_client_trailers_with_end_stream_end_the_request() -> None:
    async def scenario(served: Served) -> Response:
        peer = await Peer.connect(served.port)
        trailers = bytes(peer.encoder.encode([("x-trailer", "1")]))
        peer.send(
            frame(HEADERS, END_HEADERS, 1, peer.header_block()),
            frame(DATA, 0, 1, grpc_message(check("/echo", "trailed"))),
            frame(HEADERS, END_HEADERS | END_STREAM, 1, trailers),
        )
        return await peer.response(1)

    response = run(scenario)
    assert response.data == grpc_message(reply("trailed"))
    assert response.grpc_status == "0"


def test_client_trailers_without_end_stream_reset_the_stream() -> None:
    async def scenario(served: Served) -> list[Frame]:
        peer = await Peer.connect(served.port)
        trailers = bytes(peer.encoder.encode([("x-trailer", "1")]))
        peer.send(
            frame(HEADERS, END_HEADERS, 1, peer.header_block()),
            frame(HEADERS, END_HEADERS, 1, trailers),
        )
        return [f for f in await peer.round_trip() if f.stream_id == 1]

    (reset,) = run(scenario)
    assert (reset.kind, error_code(reset)) == (RST_STREAM, PROTOCOL_ERROR)


def test_data_after_end_stream_resets_the_stream_and_its_response_is_dropped() -> None:
    async def scenario(served: Served) -> tuple[list[Frame], list[Frame]]:
        # A window of 0 keeps the answered stream open, its response waiting for the window.
        peer = await Peer.connect(served.port, PREFACE + settings((INITIAL_WINDOW_SIZE, 0)))
        peer.send(peer.request(1, grpc_message(check("/echo", "dropped"))))
        peer.send(frame(DATA, 0, 1, b"late"))
        reset = [f for f in await peer.round_trip() if f.stream_id == 1]
        peer.send(window_update(1, 1000))
        return reset, [f for f in await peer.round_trip() if f.stream_id == 1]

    reset, after = run(scenario)
    assert [f.kind for f in reset] == [HEADERS, RST_STREAM]
    assert error_code(reset[-1]) == STREAM_CLOSED
    assert after == []


@pytest.mark.parametrize(
    "bad",
    [
        rst_stream(1, NO_ERROR),
        frame(DATA, 0, 1, b"x"),
        window_update(1, 1),
        window_update(0, 0),
        frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2"),
        frame(HEADERS, END_HEADERS, 0, b"\x82"),
        frame(SETTINGS, 0, 1),
        frame(PING, 0, 1, b"12345678"),
    ],
    ids=[
        "rst-idle",
        "data-idle",
        "window-update-idle",
        "window-update-0",
        "push-promise",
        "headers-stream-0",
        "settings-on-stream",
        "ping-on-stream",
    ],
)
def test_frames_the_rfc_forbids_get_goaway_protocol_error(bad: bytes) -> None:
    async def scenario(served: Served) -> Frame:
        peer = await Peer.connect(served.port)
        peer.send(bad)
        return await peer.goaway()

    assert error_code(run(scenario)) == PROTOCOL_ERROR


def test_connection_window_above_2_31_gets_goaway_flow_control_error() -> None:
    async def scenario(served: Served) -> Frame:
        peer = await Peer.connect(served.port)
        peer.send(window_update(0, 2**31 - 1))
        return await peer.goaway()

    assert error_code(run(scenario)) == FLOW_CONTROL_ERROR


def test_garbage_header_block_gets_goaway_compression_error() -> None:
    async def scenario(served: Served) -> Frame:
        peer = await Peer.connect(served.port)
        peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xbf\xff\xff\xff\x0f"))
        return await peer.goaway()

    assert error_code(run(scenario)) == COMPRESSION_ERROR


def test_after_the_peers_goaway_the_stream_in_flight_is_answered_then_closed() -> None:
    async def scenario(served: Served) -> tuple[Response, list[Frame]]:
        # A window of 0 keeps the stream in flight until the peer has sent its GOAWAY.
        peer = await Peer.connect(served.port, PREFACE + settings((INITIAL_WINDOW_SIZE, 0)))
        peer.send(peer.request(1, grpc_message(check("/echo", "in flight"))))
        response = Response()
        assert not await peer.absorb_round_trip(response, 1)
        peer.send(goaway(0, NO_ERROR))
        assert not await peer.absorb_round_trip(response, 1)
        peer.send(window_update(1, 1000))
        return await peer.response(1, response), await peer.until_closed()

    response, after = run(scenario)
    assert response.data == grpc_message(reply("in flight"))
    assert response.grpc_status == "0"
    assert after == []  # closed with nothing more to say


def test_stop_sends_goaway_refuses_new_streams_and_finishes_the_one_in_flight() -> None:
    async def scenario(served: Served) -> tuple[Frame, Frame, Response, list[Frame]]:
        peer = await Peer.connect(served.port, PREFACE + settings((INITIAL_WINDOW_SIZE, 0)))
        peer.send(peer.request(1, grpc_message(check("/echo", "in flight"))))
        response = Response()
        assert not await peer.absorb_round_trip(response, 1)
        stopping = asyncio.ensure_future(served.server.stop(5))
        announced = await peer.next(GOAWAY)
        peer.send(peer.request(3, grpc_message(check("/echo", "too late"))))
        refused = await peer.next(RST_STREAM)
        assert not stopping.done()
        peer.send(window_update(1, 1000))
        await peer.response(1, response)
        await stopping
        return announced, refused, response, await peer.until_closed()

    announced, refused, response, after = run(scenario)
    assert error_code(announced) == NO_ERROR
    assert int.from_bytes(announced.payload[:4], "big") == 1
    assert (refused.stream_id, error_code(refused)) == (3, REFUSED_STREAM)
    assert response.data == grpc_message(reply("in flight"))
    assert response.grpc_status == "0"
    assert after == []


def test_a_stream_the_peer_resets_gets_nothing_more_and_others_are_still_served() -> None:
    async def scenario(served: Served) -> tuple[list[Frame], Response]:
        # A window of 0 holds stream 1's message back; the peer resets it, then opens windows.
        peer = await Peer.connect(served.port, PREFACE + settings((INITIAL_WINDOW_SIZE, 0)))
        peer.send(peer.request(1, grpc_message(check("/echo", "reset"))))
        peer.send(rst_stream(1, CANCEL), window_update(1, 1000))
        peer.send(settings((INITIAL_WINDOW_SIZE, 65_535)))
        peer.send(peer.request(3, grpc_message(check("/echo", "next"))))
        reset, answered, ended = [], Response(), False
        while not ended:
            for got in await peer.round_trip():
                if got.stream_id == 1:
                    reset.append(got)
                elif got.stream_id == 3:
                    ended = peer.absorb(answered, got)
        return reset, answered

    reset, answered = run(scenario)
    assert [f.kind for f in reset] == [HEADERS]  # sent with the answer, before the reset
    assert answered.data == grpc_message(reply("next"))


def test_request_data_held_beyond_the_connection_window_gets_flow_control_error() -> None:
    """Unfinished requests are not given back to the window, so a connection holds < 16 MiB."""

    async def scenario(served: Served) -> Frame:
        peer = await Peer.connect(served.port)
        chunk = b"\0" * 16_384
        for stream_id in (1, 3, 5, 7):  # 4 x 4 MiB, none of them ended: the whole window
            peer.send(frame(HEADERS, END_HEADERS, stream_id, peer.header_block()))
            peer.send(*(frame(DATA, 0, stream_id, chunk) for _ in range(256)))
            await peer.writer.drain()
        # One byte more, sent last so that the server has read everything when it closes.
        peer.send(frame(HEADERS, END_HEADERS, 9, peer.header_block()), frame(DATA, 0, 9, b"\0"))
        return await peer.goaway()

    assert error_code(run(scenario)) == FLOW_CONTROL_ERROR


def test_answered_requests_give_their_bytes_back_to_the_connection_window() -> None:
    async def scenario(served: Served) -> tuple[int, list[str]]:
        peer = await Peer.connect(served.port)
        message = grpc_message(check("/size", "x" * 3_000_000))
        statuses, granted = [], 0
        for stream_id in range(1, 13, 2):  # 6 x 3 MiB: more than the 16 MiB window
            peer.send(frame(HEADERS, END_HEADERS, stream_id, peer.header_block()))
            for start in range(0, len(message), 16_384):
                end = min(start + 16_384, len(message))
                flags = END_STREAM if end == len(message) else 0
                peer.send(frame(DATA, flags, stream_id, message[start:end]))
            response = Response()
            for got in await peer.round_trip():
                if got.kind == WINDOW_UPDATE and got.stream_id == 0:
                    granted += int.from_bytes(got.payload, "big")
                elif got.stream_id == stream_id:
                    peer.absorb(response, got)
            statuses.append(response.grpc_status)
        return granted, statuses

    granted, statuses = run(scenario)
    assert statuses == ["0"] * 6
    assert granted >= 8 * 1024 * 1024  # besides the opening grant


def test_after_the_peer_changes_its_header_table_size_our_next_block_says_ours_is_0() -> None:
    async def scenario(served: Served) -> list[bytes]:
        peer = await Peer.connect(served.port, PREFACE + settings((HEADER_TABLE_SIZE, 0)))
        peer.decoder.max_allowed_table_size = 0
        peer.send(peer.request(1, grpc_message(check("/echo", "one"))))
        first = await peer.response(1)
        peer.send(peer.request(3, grpc_message(check("/echo", "two"))))
        second = await peer.response(3)
        assert first.grpc_status == second.grpc_status == "0"
        return [f.payload for f in first.frames + second.frames if f.kind == HEADERS]

    blocks = run(scenario)
    assert blocks[0][:1] == b"\x20"  # a dynamic table size update to 0
    assert all(block[:1] != b"\x20" for block in blocks[1:])


def indexed_literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal with incremental indexing (it enters the dynamic table at 62)."""
    return b"\x40" + bytes((len(name),)) + name + bytes((len(value),)) + value


def test_a_repeated_indexed_block_is_decoded_again_once_the_table_has_changed() -> None:
    """The same bytes of indexed fields mean other headers after an insertion."""
    grpc_type = indexed_literal(b"content-type", b"application/grpc")
    post_http = b"\x83\x86"  # static :method POST, :scheme http
    indexed = post_http + b"\xbf\xbe"  # dynamic entries 63 (:path) and 62 (content-type)

    async def scenario(served: Served) -> list[str]:
        peer = await Peer.connect(served.port)
        message = grpc_message(check("/echo", "x"))
        unknown = post_http + indexed_literal(b":path", b"/x.Y/Unknown") + grpc_type
        known = post_http + indexed_literal(b":path", CHECK.encode()) + grpc_type
        statuses = []
        for stream_id, block in ((1, unknown), (3, indexed), (5, known), (7, indexed)):
            peer.send(frame(HEADERS, END_HEADERS, stream_id, block))
            peer.send(frame(DATA, END_STREAM, stream_id, message))
            statuses.append((await peer.response(stream_id)).grpc_status)
        return statuses

    # 62/63 are the unknown path and content-type for stream 3, the Check path and
    # content-type for stream 7: a stale decoding would answer 12 (UNIMPLEMENTED) again.
    assert run(scenario) == ["12", "12", "0", "0"]


# Envoy 1.40's ext_authz header blocks, as captured: the first adds its headers to the table;
# the next ones are its never-indexed :path literal (Huffman) and indexed fields.
ENVOY_FIRST_BLOCK = bytes.fromhex(
    "83049f60b5773fa5d05b3b98855c76a675fbb2bc36a673d86f63498f5317a7293aff41841da99fdf86400274"
    "65864d833505b11f40899acac8b24d494f6a7f8408000a7f5f8b1d75d0620d263d4c4d6564408cf2b16aee7f"
    "4b1aa496ca8747834d9697408bf2b4a7b3c0ec90b22d29ec870be25c0b89717f4096f2b16aee7f4b17cd6522"
    "4b22d6765926a4a7b52b528f8308000f"
)
ENVOY_NEXT_BLOCK = bytes.fromhex(
    "83049f60b5773fa5d05b3b98855c76a675fbb2bc36a673d86f63498f5317a7293affc486c3c2c1c0bfbe"
)


def test_changes_dynamic_table_tells_blocks_that_add_or_resize_from_those_that_do_not() -> None:
    assert changes_dynamic_table(ENVOY_FIRST_BLOCK)
    assert not changes_dynamic_table(ENVOY_NEXT_BLOCK)
    encoder = hpack.Encoder()
    long_value = "v" * 300  # lengths past the 7-bit prefix
    never = hpack.NeverIndexedHeaderTuple("authorization", long_value)
    assert not changes_dynamic_table(bytes(encoder.encode([never, (":method", "POST")])))
    assert changes_dynamic_table(bytes(encoder.encode([(":path", "/x")], huffman=False)))
    assert changes_dynamic_table(bytes(encoder.encode([("x-new", long_value)])))
    again = bytes(encoder.encode([("x-new", long_value)]))  # now indexed (index 62)
    assert not changes_dynamic_table(again)
    encoder.header_table_size = 256  # the next block opens with a size update
    assert changes_dynamic_table(bytes(encoder.encode([(":method", "POST")])))
    decoder = hpack.Decoder()
    decoder.decode(ENVOY_FIRST_BLOCK)
    assert dict(decoder.decode(ENVOY_NEXT_BLOCK))[":path"] == CHECK


# --- how answers leave ------------------------------------------------------------------------


class RecordingTransport(asyncio.Transport):
    """Keeps each ``write`` apart, to see how the server groups its frames into writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def frames_of(data: bytes) -> list[Frame]:
    frames, position = [], 0
    while position < len(data):
        word, flags, stream_id = struct.unpack_from(">IBI", data, position)
        start = position + 9
        position = start + (word >> 8)
        frames.append(Frame(word & 0xFF, flags, stream_id, data[start:position]))
    return frames


def test_requests_read_together_are_answered_in_one_write_each() -> None:
    # Envoy sends the checks of several requests in one segment; answering them all in one
    # write at the end would leave Envoy idle while we work, then us idle while it works.
    async def scenario() -> list[list[tuple[int, int, int]]]:
        server = NativeGrpcServer()
        server.add_servicer(AUTHORIZATION, Authorization())
        connection = server.protocol()
        transport = RecordingTransport()
        connection.connection_made(transport)
        encoder = hpack.Encoder()
        block = bytes(encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", CHECK),
                                      (":authority", "authd"), ("content-type", "application/grpc"),
                                      ("te", "trailers")]))  # fmt: skip
        requests = [
            frame(HEADERS, END_HEADERS, stream_id, block)
            + frame(DATA, END_STREAM, stream_id, grpc_message(check("/", str(stream_id))))
            for stream_id in (1, 3, 5)
        ]
        transport.writes.clear()  # the greeting
        connection.data_received(PREFACE + settings() + b"".join(requests))
        return [[(f.kind, f.flags & END_STREAM, f.stream_id) for f in frames_of(w)]
                for w in transport.writes]  # fmt: skip

    writes = asyncio.run(scenario())
    # The SETTINGS ACK goes out with the first answer; then one answer per write, in order
    # (ACK is the same bit as END_STREAM):
    # HEADERS, DATA, trailers with END_STREAM.
    assert writes == [
        [(SETTINGS, ACK, 0), (HEADERS, 0, 1), (DATA, 0, 1), (HEADERS, END_STREAM, 1)],
        [(HEADERS, 0, 3), (DATA, 0, 3), (HEADERS, END_STREAM, 3)],
        [(HEADERS, 0, 5), (DATA, 0, 5), (HEADERS, END_STREAM, 5)],
    ]

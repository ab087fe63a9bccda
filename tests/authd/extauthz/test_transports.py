"""The two transports in front of one pipeline: gRPC Check and Envoy's HTTP service mode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

from authd.authz.metrics import AuthzMetrics
from authd.authz.pipeline import Authorizer
from authd.check.model import CheckContext, Identities
from authd.extauthz.grpc_servicer import ExtAuthzService
from authd.extauthz.http_service import HttpAuthzServer
from ca.spiffe_id import SpiffeId
from tests.support.authz import FixedIdentities, PathPolicy

WEB = SpiffeId.parse("spiffe://example.org/web")


def authorizer(identities: Identities = Identities(peer=WEB)) -> Authorizer:  # noqa: B008
    policy = PathPolicy()
    return Authorizer(resolver=FixedIdentities(identities), policy=lambda: policy)


# --- gRPC -------------------------------------------------------------------------------


def with_grpc(
    authz: Authorizer,
    body: Callable[[external_auth_pb2_grpc.AuthorizationStub], Awaitable[Any]],
    metrics: AuthzMetrics | None = None,
) -> Any:
    async def run() -> Any:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            ExtAuthzService(authz, metrics), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await body(external_auth_pb2_grpc.AuthorizationStub(channel))
        finally:
            await server.stop(None)

    return asyncio.run(run())


def request(path: str, **headers: str) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = "GET", path, "api.example.com"
    http.headers.update(headers)
    req.attributes.source.principal = str(WEB)
    return req


def headers_of(options: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


def test_grpc_allow_carries_headers_removals_query_mutations_and_metadata() -> None:
    async def body(stub: external_auth_pb2_grpc.AuthorizationStub) -> Any:
        return await stub.Check(request("/rego/x", authorization="Bearer t"))

    reply = with_grpc(authorizer(), body)
    assert reply.status.code == code_pb2.OK
    ok = reply.ok_response
    headers = headers_of(ok.headers)
    assert headers["x-authd-caller"] == str(WEB)
    assert headers["x-from-policy"] == "yes"
    assert all(
        o.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD for o in ok.headers
    )
    assert "authorization" in ok.headers_to_remove
    assert headers_of(ok.response_headers_to_add) == {"x-served-by": "authd"}
    assert [(q.key, q.value) for q in ok.query_parameters_to_set] == [("tenant", "acme")]
    metadata = dict(reply.dynamic_metadata)
    assert metadata["decision_id"] == headers["x-authd-decision-id"]
    assert metadata["rule"] == "rego"


def test_grpc_deny_gives_status_headers_and_json_body() -> None:
    async def body(stub: external_auth_pb2_grpc.AuthorizationStub) -> Any:
        return await stub.Check(request("/admin"))

    reply = with_grpc(authorizer(), body)
    assert reply.status.code == code_pb2.PERMISSION_DENIED
    denied = reply.denied_response
    assert denied.status.code == 403
    assert headers_of(denied.headers)["content-type"] == "application/json"
    assert json.loads(denied.body)["error"] == "no_matching_rule"


def test_grpc_401_uses_unauthenticated_status() -> None:
    async def body(stub: external_auth_pb2_grpc.AuthorizationStub) -> Any:
        return await stub.Check(request("/internal"))

    reply = with_grpc(authorizer(Identities()), body)
    assert reply.status.code == code_pb2.UNAUTHENTICATED
    assert reply.denied_response.status.code == 401
    assert "www-authenticate" in headers_of(reply.denied_response.headers)


class Exploding:
    async def resolve(self, ctx: CheckContext) -> Identities:
        raise RuntimeError("resolver bug")


def test_grpc_handler_error_is_a_grpc_error_not_a_deny(caplog: Any) -> None:
    metrics = AuthzMetrics()
    policy = PathPolicy()
    broken = Authorizer(resolver=Exploding(), policy=lambda: policy)

    async def body(stub: external_auth_pb2_grpc.AuthorizationStub) -> Any:
        try:
            await stub.Check(request("/public"))
        except grpc.aio.AioRpcError as exc:
            return exc
        raise AssertionError("expected a gRPC error")

    error = with_grpc(broken, body, metrics)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError" in error.details()
    assert metrics.errors["grpc"] == 1
    assert "resolver bug" in caplog.text  # logged with its traceback
    assert "Traceback" in caplog.text


# --- HTTP service mode ----------------------------------------------------------------


async def http_exchange(server: HttpAuthzServer, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw)
    await writer.drain()
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _expected_length(data):
        chunk = await asyncio.wait_for(reader.read(65536), timeout=5)
        if not chunk:
            break
        data += chunk
    writer.close()
    return data


def _expected_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return len(head) + 4


def with_http(authz: Authorizer, body: Callable[[HttpAuthzServer], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        server = HttpAuthzServer(authz, host="127.0.0.1", port=0, path_prefix="/authz")
        await server.start()
        try:
            return await body(server)
        finally:
            await server.close()

    return asyncio.run(run())


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_http_mode_allow_returns_200_with_upstream_headers() -> None:
    fixed = FixedIdentities(Identities(peer=WEB))
    policy = PathPolicy()
    authz = Authorizer(resolver=fixed, policy=lambda: policy)
    raw = (
        b"GET /authz/internal/x?y=1 HTTP/1.1\r\nhost: api.example.com\r\n"
        b"x-authd-peer-uri-san: spiffe://example.org/web\r\n"
        b"authorization: Bearer t\r\ncontent-length: 0\r\n\r\n"
    )
    status, headers, _ = parse(with_http(authz, lambda s: http_exchange(s, raw)))
    assert status == 200
    assert headers["x-authd-caller"] == str(WEB)
    assert "authorization" in headers["x-envoy-auth-headers-to-remove"]
    (ctx,) = fixed.seen
    assert ctx.path == "/internal/x?y=1"  # the prefix is stripped
    assert ctx.host == "api.example.com"
    assert ctx.source_principal == "spiffe://example.org/web"
    assert "x-authd-peer-uri-san" not in ctx.headers  # consumed, not passed to policies
    assert ctx.transport == "http"


def test_http_mode_deny_returns_status_headers_and_body() -> None:
    raw = b"GET /authz/internal HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"
    status, headers, body = parse(
        with_http(authorizer(Identities()), lambda s: http_exchange(s, raw))
    )
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="authd"'
    assert json.loads(body)["error"] == "missing_credentials"
    assert headers["x-authd-decision-id"] == json.loads(body)["decision_id"]


def test_http_mode_keeps_the_connection_and_answers_in_order() -> None:
    one = b"GET /authz/public/1 HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"
    two = b"GET /authz/admin HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"

    async def body(server: HttpAuthzServer) -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        statuses = []
        for raw in (one, two, one):
            writer.write(raw)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            status, headers, _ = parse(head)
            await reader.readexactly(int(headers["content-length"]))
            statuses.append(status)
        writer.close()
        return statuses

    assert with_http(authorizer(), body) == [200, 403, 200]


def test_http_mode_handler_error_is_a_5xx_not_a_deny() -> None:
    policy = PathPolicy()
    broken = Authorizer(resolver=Exploding(), policy=lambda: policy)
    raw = b"GET /authz/public HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"
    status, _, _ = parse(with_http(broken, lambda s: http_exchange(s, raw)))
    assert status == 500


def test_http_mode_garbage_gets_400() -> None:
    response = with_http(authorizer(), lambda s: http_exchange(s, b"NOT HTTP\r\n\r\n"))
    assert response.startswith(b"HTTP/1.1 400")


def test_http_mode_context_extensions_come_from_headers_envoy_sets() -> None:
    fixed = FixedIdentities(Identities(peer=WEB))
    policy = PathPolicy()
    authz = Authorizer(resolver=fixed, policy=lambda: policy)
    raw = (
        b"GET /authz/public HTTP/1.1\r\nhost: a\r\nx-authd-ctx-policy: gateway\r\n"
        b"x-authd-ctx-audience: orders\r\ncontent-length: 0\r\n\r\n"
    )
    status, _, _ = parse(with_http(authz, lambda s: http_exchange(s, raw)))
    assert status == 200
    (ctx,) = fixed.seen
    assert dict(ctx.context_extensions) == {"policy": "gateway", "audience": "orders"}
    assert not any(h.startswith("x-authd-ctx-") for h in ctx.headers)


def test_grpc_deny_carries_the_decision_id_header() -> None:
    async def body(stub: external_auth_pb2_grpc.AuthorizationStub) -> Any:
        return await stub.Check(request("/admin"))

    reply = with_grpc(authorizer(), body)
    headers = headers_of(reply.denied_response.headers)
    assert headers["x-authd-decision-id"] == json.loads(reply.denied_response.body)["decision_id"]

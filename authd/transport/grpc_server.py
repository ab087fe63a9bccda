"""gRPC over HTTP/2 served from the event loop: ext_authz Check at a fraction of grpc.aio's cost.

Why it exists: grpc.aio spends most of a call's CPU handing events between grpc core's
thread and the event loop; the same call answered by an asyncio protocol in the loop thread
costs a fraction of it (``bench/extauthz.py`` measures both). This is the default engine of
authd's ext_authz gRPC listener (``authz.grpc_engine = "native"``); the grpc.aio server stays
available as ``"grpcio"`` and serves the same servicers.

The HTTP/2 protocol is ``http2.connection`` (sans-I/O); ``grpc.connection`` is the thin
asyncio adapter that turns its events into calls of grpc-style servicers (``async def
Check(self, request, context)``, async generators for streams); this module listens and
stops. Served: unary, server-streaming and bidirectional methods,
length-prefixed messages up to ``max_request_bytes`` (RESOURCE_EXHAUSTED beyond), no
compression (UNIMPLEMENTED), status and percent-encoded message in trailers (one Trailers-Only
HEADERS frame when there is no message), UNIMPLEMENTED for an unknown method, HTTP 405/415 for
what is not a gRPC request.

Bounds (``ListenerLimits``): connections beyond ``max_connections`` get SETTINGS and GOAWAY
ENHANCE_YOUR_CALM and are closed; a connection with nothing in flight for ``idle_timeout``
gets GOAWAY NO_ERROR and is closed; a streaming call's ``write`` waits while the peer's windows
keep its answers queued (the call, and the requests it has not read, wait with it); reading
stops while the peer does not take what is written. Every refusal goes to a
``RefusalReporter``. Not: TLS, HTTP/1.1 upgrade, server push, deadlines (``grpc-timeout`` is
not enforced; Envoy enforces its own ext_authz timeout) and client-streaming methods.
"""

from __future__ import annotations

import asyncio
import contextlib

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from authd.transport.grpc.call import Method, ServicerContext
from authd.transport.grpc.connection import STREAM_SEND_BUFFER, GrpcConnection
from authd.transport.grpc.status import GrpcError, percent_encode, status_trailers
from authd.transport.http2.frames import changes_dynamic_table
from authd.transport.limits import ListenerLimits
from authd.transport.refusals import RefusalReporter
from authd.transport.sockets import parse_host_port, remove_stale_socket

__all__ = [
    "STREAM_SEND_BUFFER",
    "GrpcError",
    "NativeGrpcServer",
    "ServicerContext",
    "changes_dynamic_table",
    "percent_encode",
    "status_trailers",
]


class NativeGrpcServer:
    """Serves grpc-style servicers on TCP addresses and Unix sockets within ``limits``."""

    def __init__(
        self,
        limits: ListenerLimits | None = None,
        *,
        refusals: RefusalReporter | None = None,
    ) -> None:
        self.limits = limits or ListenerLimits()
        self.refusals = refusals or RefusalReporter("ext_authz_grpc")
        self.methods: dict[bytes, Method] = {}
        self.connections: set[GrpcConnection] = set()
        self._servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.Task[None] | None = None

    def add_servicer(self, service: ServiceDescriptor, servicer: object) -> None:
        """Serve every method of ``service`` that ``servicer`` implements."""
        for method in service.methods:
            handler = getattr(servicer, method.name, None)
            if handler is None:
                continue
            if method.client_streaming and not method.server_streaming:
                raise ValueError(f"{method.full_name}: client-streaming methods are not served")
            request_class = message_factory.GetMessageClass(method.input_type)
            path = f"/{service.full_name}/{method.name}".encode("ascii")
            self.methods[path] = Method(
                handler=handler,
                deserialize=request_class.FromString,
                request_streaming=method.client_streaming,
                response_streaming=method.server_streaming,
            )

    def protocol(self) -> asyncio.Protocol:
        """The protocol of one new connection (what the listeners make per accept)."""
        return GrpcConnection(self)

    async def listen_tcp(self, address: str) -> int:
        """Listen on ``host:port`` (port 0 picks one); returns the port. Raises OSError."""
        host, port = parse_host_port(address)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.protocol, host or None, port, reuse_port=False)
        self._started(server)
        sockets = server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def listen_unix(self, path: str) -> None:
        """Listen on a Unix socket, replacing a stale socket file but never a live one."""
        remove_stale_socket(path)
        loop = asyncio.get_running_loop()
        self._started(await loop.create_unix_server(self.protocol, path))

    def _started(self, server: asyncio.base_events.Server) -> None:
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        period = max(0.05, min(1.0, self.limits.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.close_idle(loop.time())

    def close_idle(self, now: float) -> int:
        """GOAWAY NO_ERROR and close each connection idle since ``idle_timeout`` before ``now``.

        Returns how many were closed. Called periodically; tests call it with a clock of
        their own instead of waiting.
        """
        closed = 0
        for connection in list(self.connections):
            if connection.busy():
                connection.last_busy = now
            elif now - connection.last_busy >= self.limits.idle_timeout:
                self.refusals("idle_timeout")
                connection.shut_down()
                closed += 1
        return closed

    async def stop(self, grace: float) -> None:
        """Stop accepting, let calls in flight finish for up to ``grace`` seconds, close."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.shut_down()
            for call in list(connection.calls.values()):
                if call.method.response_streaming and call.task is not None:
                    call.task.cancel()  # watches never end by themselves
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(c.busy() for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.busy():
                connection.abort()
            else:
                connection.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

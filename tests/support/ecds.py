"""authd's ECDS servicer in the test process, for pushing configs authd itself never would.

The real servicer (``authd.xds.ecds``), publisher and peer-credential gateway run on an event
loop in a background thread; a real Envoy connects to the gateway's socket. ``push`` installs
any compiled config, so a test can send one Envoy refuses.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
from envoy.service.extension.v3 import config_discovery_pb2_grpc

from authd.transport.peercred import PeerCredGateway
from authd.xds.ecds import ExtensionConfigDiscovery
from authd.xds.publisher import RbacPublisher
from authd.xds.rbac_compiler import CompiledRbac
from authd.xds.stream import XdsNodeStatus

T = TypeVar("T")


class InProcessEcds:
    def __init__(self, directory: Path, filter_name: str) -> None:
        self.socket_path = directory / "xds.sock"
        self._private = directory / "xds-private"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.publisher = RbacPublisher(
            filter_name=filter_name,
            policy=lambda: None,
            revoked=lambda: (frozenset(), frozenset()),
        )
        self._server: grpc.aio.Server | None = None
        self._run(self._start())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    async def _start(self) -> None:
        self._gateway = PeerCredGateway(self.socket_path, self._private, public_mode=0o666)
        await self._gateway.start()
        self.servicer = ExtensionConfigDiscovery(self.publisher, self._gateway)
        server = grpc.aio.server()
        config_discovery_pb2_grpc.add_ExtensionConfigDiscoveryServiceServicer_to_server(
            self.servicer, server
        )
        server.add_insecure_port(self._gateway.internal_address)
        await server.start()
        self._server = server

    def push(self, compiled: CompiledRbac) -> None:
        """Serve ``compiled`` from now on (no validation: the caller decides)."""

        async def install() -> None:
            self.publisher.install(compiled)

        self._run(install())

    def status(self) -> list[XdsNodeStatus]:
        async def read() -> list[XdsNodeStatus]:
            return self.servicer.status()

        return self._run(read())

    def close(self) -> None:
        async def stop() -> None:
            self.servicer.close()
            if self._server is not None:
                await self._server.stop(grace=1)
            await self._gateway.close()

        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

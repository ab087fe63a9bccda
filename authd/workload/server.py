"""The workload endpoint: SPIFFE Workload API and Envoy SDS on one Unix socket.

Both services attest the caller from its connection's kernel credentials (through the
peer-credential gateway) and hand out what its registration entries grant, as the
``IdentitySource`` they are given says; neither knows which CA signed it. SVIDs are
renewed by ``IdentitySource.rotate_due``, called here every ``rotation_check_interval``. Given
the daemon's ``Revoker``, SDS puts its CRLs into the trusted-CA validation contexts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from envoy.service.secret.v3 import sds_pb2_grpc
from grpc_health.v1 import health_pb2_grpc

from authd.api.spiffe.workload import workload_pb2_grpc
from authd.ports.identity_source import IdentitySource
from authd.transport.grpc_options import grpc_server_options
from authd.transport.limits import ListenerLimits
from authd.transport.peercred import PeerCredGateway
from authd.transport.refusals import RefusalCallback
from authd.workload.attestation import attest
from authd.workload.sds import SecretDiscoveryService
from authd.workload.sds_stream import SdsStreamStatus
from authd.workload.workload_api import WorkloadApiService
from ca.revoker import Revoker

log = logging.getLogger(__name__)

AddService = Callable[[grpc.aio.Server, PeerCredGateway], None]
"""Adds one more servicer to the workload socket's server (e.g. ECDS), given the gateway
that tells it who called."""


class WorkloadEndpoint:
    def __init__(
        self,
        *,
        identities: IdentitySource,
        socket_path: Path,
        private_dir: Path,
        health: health_pb2_grpc.HealthServicer,
        rotation_interval: float = 1.0,
        revocations: Revoker | None = None,
        limits: ListenerLimits | None = None,
        on_refusal: RefusalCallback | None = None,
        extra_services: Sequence[AddService] = (),
    ) -> None:
        self.identities = identities
        self._revocations = revocations
        self._limits = limits or ListenerLimits()
        self._gateway = PeerCredGateway(
            socket_path, private_dir, public_mode=0o666, limits=limits, on_refusal=on_refusal
        )
        self._health = health
        self._interval = rotation_interval
        self._server: grpc.aio.Server | None = None
        self._rotation: asyncio.Task[None] | None = None
        self._workload_api: WorkloadApiService | None = None
        self._sds: SecretDiscoveryService | None = None
        self._extra_services = tuple(extra_services)

    async def start(self) -> None:
        await self._gateway.start()
        server = grpc.aio.server(options=grpc_server_options(self._limits))
        self._workload_api = WorkloadApiService(
            identities=self.identities, gateway=self._gateway, attest=attest
        )
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self._workload_api, server)
        self._sds = SecretDiscoveryService(
            identities=self.identities,
            gateway=self._gateway,
            attest=attest,
            revocations=self._revocations,
        )
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self._sds, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for add_service in self._extra_services:
            add_service(server, self._gateway)
        server.add_insecure_port(self._gateway.internal_address)
        await server.start()
        self._server = server
        self._rotation = asyncio.create_task(self._rotate_forever())

    def sds_status(self) -> list[SdsStreamStatus]:
        """The Envoys connected over SDS now (none before ``start``)."""
        return self._sds.status() if self._sds is not None else []

    async def _rotate_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                rotated = self.identities.rotate_due()
            except Exception:
                log.exception("SVID rotation failed; will retry")
                continue
            if rotated:
                log.info("rotated %d workload SVIDs", rotated)

    async def close(self) -> None:
        if self._rotation is not None:
            self._rotation.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rotation
        if self._workload_api is not None:
            self._workload_api.close()  # ends open streams with UNAVAILABLE
        if self._sds is not None:
            self._sds.close()
        if self._server is not None:
            await self._server.stop(grace=1)
        await self._gateway.close()

"""The admin API: on the Unix socket behind the peer-credential gateway, and optionally over
mutual TLS on ``admin.mtls_address``. One servicer serves both; it tells a Unix-socket caller
from a TLS one. Both listeners obey the ``[limits]``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authd.admin.remote import ADMIN_TLS_NAME, AdminServerSvid
from authd.admin.servicer import AdminService
from authd.admin.store_ops import StoreOperations
from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.app.errors import StartupError
from authd.config.model import Config
from authd.nodes.agents import NodeAuthority
from authd.transport.grpc_options import grpc_server_options
from authd.transport.peercred import PeerCredGateway
from authd.transport.refusals import RefusalCallback
from authd.workload.registry import EntryRegistry
from authd.workload.sds_stream import SdsStreamStatus
from authd.xds.report import XdsReport
from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock
from ca.errors import InvalidRequest
from ca.revoker import Revoker
from ca.spiffe_id import SpiffeId

__all__ = ["AdminListeners"]

log = logging.getLogger("authd")


class AdminListeners:
    """The admin API's listeners, started by :meth:`start` and stopped by :meth:`close`."""

    def __init__(
        self,
        config: Config,
        *,
        ca: CertificateAuthority,
        clock: Clock,
        entries: EntryRegistry,
        revocations: Revoker,
        health: health_pb2_grpc.HealthServicer,
        refusals: Callable[[str], RefusalCallback],
        store: StoreOperations | None = None,
        sds_status: Callable[[], Sequence[SdsStreamStatus]] | None = None,
        federated_bundles: Callable[[], list[admin_pb2.FederatedBundle]] | None = None,
        xds_report: Callable[[], XdsReport] | None = None,
        nodes: NodeAuthority | None = None,
    ) -> None:
        self.config = config
        self._nodes = nodes
        self._federated_bundles = federated_bundles
        self._store = store
        self._sds_status = sds_status
        self._xds_report = xds_report
        self._ca = ca
        self._clock = clock
        self._entries = entries
        self._revocations = revocations
        self._health = health
        self._refusals = refusals
        self._gateway: PeerCredGateway | None = None
        self._admin_server: grpc.aio.Server | None = None
        self._remote_admin_server: grpc.aio.Server | None = None
        self._svid_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._start_admin(self.config.data_dir / "private")
        await self._start_remote_admin()

    async def _start_admin(self, private_dir: Path) -> None:
        limits = self.config.listener_limits()
        gateway = PeerCredGateway(
            self.config.admin_socket_path,
            private_dir,
            public_mode=0o666,
            limits=limits,
            on_refusal=self._refusals("admin"),
        )
        try:
            await gateway.start()
        except Exception as exc:
            raise StartupError(str(exc)) from None
        self._gateway = gateway
        server = grpc.aio.server(options=grpc_server_options(limits))
        # One servicer for both listeners: it tells a Unix-socket caller from a TLS one.
        self._admin_service = AdminService(
            self._ca,
            gateway,
            self.config.admin.allows_uid,
            self._entries,
            self._revocations,
            self._store,
            self._sds_status,
            self._federated_bundles,
            self._xds_report,
            nodes=self._nodes,
        )
        admin_pb2_grpc.add_AdminServicer_to_server(self._admin_service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        service_names = (
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(service_names, server)
        server.add_insecure_port(gateway.internal_address)
        await server.start()
        self._admin_server = server

    async def _start_remote_admin(self) -> None:
        """The admin API over mutual TLS on ``admin.mtls_address``, if set."""
        config = self.config
        address = config.admin.mtls_address
        if not address:
            return
        spiffe_id = SpiffeId.parse(config.admin.server_id(config.trust_domain))
        try:
            svid = AdminServerSvid(self._ca, self._clock, spiffe_id)
        except InvalidRequest as exc:
            raise StartupError(f"cannot issue the remote admin SVID {spiffe_id}: {exc}") from None
        server = grpc.aio.server(options=grpc_server_options(config.listener_limits(), direct=True))
        admin_pb2_grpc.add_AdminServicer_to_server(self._admin_service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            server.add_secure_port(address, svid.credentials())
        except RuntimeError as exc:
            raise StartupError(f"cannot serve the remote admin API on {address}: {exc}") from None
        await server.start()
        self._remote_admin_server = server
        self._svid_task = asyncio.create_task(svid.run())
        log.info("admin API over mTLS on %s as %s (DNS SAN %s)", address, spiffe_id, ADMIN_TLS_NAME)

    async def close(self) -> None:
        if self._svid_task is not None:
            self._svid_task.cancel()
        if self._remote_admin_server is not None:
            await self._remote_admin_server.stop(grace=2)
        if self._admin_server is not None:
            await self._admin_server.stop(grace=2)
        if self._gateway is not None:
            await self._gateway.close()

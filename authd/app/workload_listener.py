"""The SPIFFE Workload API and Envoy SDS on their Unix socket, if ``workload.enabled``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from grpc_health.v1 import health_pb2_grpc

from authd.app.errors import StartupError
from authd.config.model import Config
from authd.ports.bundle_view import ForeignBundles
from authd.transport.peercred import GatewayError
from authd.transport.refusals import RefusalCallback
from authd.workload.registry import EntryRegistry
from authd.workload.server import AddService, WorkloadEndpoint
from authd.workload.svids import SvidProvider
from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock
from ca.revoker import Revoker

__all__ = ["start_workload"]

log = logging.getLogger("authd")


async def start_workload(
    config: Config,
    *,
    ca: CertificateAuthority,
    clock: Clock,
    entries: EntryRegistry,
    revocations: Revoker,
    health: health_pb2_grpc.HealthServicer,
    on_refusal: RefusalCallback,
    federation: ForeignBundles | None = None,
    extra_services: Sequence[AddService] = (),
) -> WorkloadEndpoint:
    """Serve the workload endpoint; its SVIDs come from ``ca`` for ``entries``."""
    # With node agents, an entry parented to an agent (or its node alias) is that agent's to
    # serve: the server's own socket serves only the entries parented to the server.
    own = str(ca.trust_domain.spiffe_id("/authd")) if config.agent.attestation_address else None
    svids = SvidProvider(
        ca, entries, clock, revocations=revocations, federated=federation, parent_id=own
    )
    endpoint = WorkloadEndpoint(
        identities=svids,
        socket_path=config.workload_socket_path,
        private_dir=config.data_dir / "private-workload",
        health=health,
        rotation_interval=config.workload.rotation_check_interval,
        revocations=revocations,
        limits=config.listener_limits(),
        on_refusal=on_refusal,
        extra_services=extra_services,
    )
    try:
        await endpoint.start()
    except (GatewayError, OSError, ValueError) as exc:
        raise StartupError(f"cannot serve the Workload API: {exc}") from None
    log.info(
        "Workload API and SDS on %s (SPIFFE_ENDPOINT_SOCKET=unix://%s)",
        config.workload_socket_path,
        config.workload_socket_path,
    )
    return endpoint

"""The node API's two listeners, if ``agent.attestation_address`` is set (README "Agents").

Attestation (``Node.Attest``) is served with server TLS only: an agent has no SVID before it
attests. Everything else is served with mutual TLS: the handshake requires a client
certificate chaining to the bundle, and the servicer checks it is a current agent's SVID.
The server presents an X.509-SVID (``spiffe://<td>/authd/server``, DNS SAN
``authd-server``) its own CA keeps current; agents verify the DNS SAN, as the admin CLI does
for the remote admin API (grpc's Python client cannot check a URI SAN itself).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from cryptography import x509

from authd.admin.remote import AdminServerSvid
from authd.api.authd.agent.v1 import node_pb2_grpc
from authd.app.errors import StartupError
from authd.config.model import Config
from authd.nodeapi.servicer import NODE_API_TLS_NAME, NodeApiService
from authd.nodes.agents import NodeAuthority
from authd.ports.bundle_view import ForeignBundles
from authd.transport.grpc_options import grpc_server_options
from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock
from ca.revoker import Revoker
from ca.store import Store

__all__ = ["NodeListeners", "node_authority"]

log = logging.getLogger("authd")

SERVER_PATH = "/authd/server"
REQUESTER = "authd:node-api"


def node_authority(
    config: Config, *, ca: CertificateAuthority, store: Store, revocations: Revoker, clock: Clock
) -> NodeAuthority | None:
    """The service behind the node API and the admin agent RPCs; None without ``[agent]``."""
    if not config.agent.attestation_address:
        return None
    roots: list[x509.Certificate] = []
    if config.agent.x509pop_ca_path:
        path = config.resolve_path(config.agent.x509pop_ca_path)
        try:
            roots = x509.load_pem_x509_certificates(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise StartupError(f"agent.x509pop_ca_path {path}: {exc}") from None
    return NodeAuthority(
        ca,
        store,
        revocations,
        clock,
        agent_svid_ttl=config.agent.svid_ttl,
        join_token_ttl=config.agent.join_token_ttl,
        x509pop_roots=roots,
    )


class NodeListeners:
    def __init__(
        self,
        config: Config,
        *,
        ca: CertificateAuthority,
        clock: Clock,
        nodes: NodeAuthority,
        federated: ForeignBundles | None = None,
    ) -> None:
        self._federated = federated
        self._config = config
        self._ca = ca
        self._clock = clock
        self._nodes = nodes
        self._servers: list[grpc.aio.Server] = []
        self._svid_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self._config.agent
        svid = AdminServerSvid(
            self._ca,
            self._clock,
            self._ca.trust_domain.spiffe_id(SERVER_PATH),
            dns_name=NODE_API_TLS_NAME,
            requester=REQUESTER,
        )
        service = NodeApiService(self._nodes, lambda: self._ca.bundle, self._federated)
        limits = self._config.listener_limits()
        for address, mutual in (
            (config.attestation_address, False),
            (config.node_api_address, True),
        ):
            if not address:
                raise StartupError("agent.node_api_address is required with attestation_address")
            server = grpc.aio.server(options=grpc_server_options(limits, direct=True))
            node_pb2_grpc.add_NodeServicer_to_server(service, server)
            try:
                server.add_secure_port(address, svid.credentials(require_client=mutual))
            except RuntimeError as exc:
                raise StartupError(f"cannot serve the node API on {address}: {exc}") from None
            await server.start()
            self._servers.append(server)
        self._svid_task = asyncio.create_task(svid.run())
        log.info(
            "node API: attestation on %s, agents on %s (mTLS)",
            config.attestation_address,
            config.node_api_address,
        )

    async def close(self) -> None:
        if self._svid_task is not None:
            self._svid_task.cancel()
        for server in self._servers:
            await server.stop(grace=1)

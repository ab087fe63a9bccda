"""``authd agent run``: the agent process (README "Agents").

Start-up: data directory → the saved agent identity, or node attestation (join token or
x509pop) → first sync with the server (entries, bundle, SVIDs; if the server is away the
agent starts empty and keeps trying) → Workload API and SDS on the workload socket, with
kernel attestation exactly as the server's → metrics → the sync loop until SIGTERM/SIGINT.
The agent has no store: only its SVID, key and bundle under ``<data_dir>/agent/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry, start_http_server

from authd.agent.cache import AgentCache
from authd.agent.client import (
    AgentRefused,
    NodeClient,
    ServerUnavailable,
    bootstrap_roots,
    make_csr,
)
from authd.agent.identity import AgentIdentity
from authd.agent.metrics import AgentMetrics
from authd.agent.sync import AgentSync
from authd.config.model import Config
from authd.transport.sockets import parse_host_port
from authd.workload.server import WorkloadEndpoint
from ca.bundle import TrustBundle
from ca.clock import Clock, SystemClock
from ca.keys import KeyType
from ca.spiffe_id import SpiffeId, TrustDomain

__all__ = ["AgentError", "AgentProcess", "serve_agent"]

log = logging.getLogger("authd.agent")


class AgentError(Exception):
    """The agent cannot start; the message says why (the CLI prints it, exit 1)."""


class AgentProcess:
    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self._stopping = asyncio.Event()
        self._endpoint: WorkloadEndpoint | None = None
        self._metrics_server: object | None = None
        self.sync: AgentSync | None = None

    @property
    def state_dir(self) -> Path:
        return self.config.data_dir / "agent"

    async def start(self) -> None:
        config = self.config
        if not (config.agent.attestation_address and config.agent.node_api_address):
            raise AgentError("agent.attestation_address and agent.node_api_address are required")
        try:
            config.data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        except OSError as exc:
            raise AgentError(f"cannot use data directory {config.data_dir}: {exc}") from None
        trust_domain = TrustDomain.parse(config.trust_domain)
        client = NodeClient(config.agent.attestation_address, config.agent.node_api_address)
        identity = AgentIdentity.load(self.state_dir, self.clock.now())
        if identity is None:
            identity = await asyncio.to_thread(self._attest, client)
            await asyncio.to_thread(identity.save, self.state_dir)
            log.info("attested as %s", identity.spiffe_id)
        else:
            log.info("resuming as %s (saved agent SVID)", identity.spiffe_id)
        bundle = TrustBundle.parse(identity.bundle_json, trust_domain)
        cache = AgentCache(bundle, self.clock)
        state_dir = self.state_dir
        sync = self.sync = AgentSync(
            client,
            cache,
            identity,
            self.clock,
            trust_domain=trust_domain,
            save_identity=lambda i: i.save(state_dir),
            reattest=(
                (lambda: self._attest(client))
                if config.agent.x509pop_cert_path and not config.agent.join_token
                else None
            ),
        )
        await sync.sync_once()
        health = health_aio.HealthServicer()
        endpoint = WorkloadEndpoint(
            identities=cache,
            socket_path=config.workload_socket_path,
            private_dir=config.data_dir / "private-workload",
            health=health,
            rotation_interval=config.workload.rotation_check_interval,
            limits=config.listener_limits(),
        )
        try:
            await endpoint.start()
        except (OSError, ValueError, RuntimeError) as exc:
            raise AgentError(f"cannot serve the Workload API: {exc}") from None
        self._endpoint = endpoint
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        if config.agent.metrics_address:
            registry = CollectorRegistry()
            registry.register(AgentMetrics(cache, lambda: sync.identity.expires_at, self.clock))
            host, port = parse_host_port(config.agent.metrics_address)
            try:
                self._metrics_server, _ = start_http_server(port, addr=host, registry=registry)
            except OSError as exc:
                raise AgentError(f"cannot serve metrics on {host}:{port}: {exc}") from None
        log.info(
            "authd agent %s serving the Workload API and SDS on %s",
            identity.spiffe_id,
            config.workload_socket_path,
        )

    def _attest(self, client: NodeClient) -> AgentIdentity:
        agent = self.config.agent
        roots = self._roots()
        key = KeyType.EC_P256.generate()
        csr = make_csr(key)
        try:
            if agent.join_token:
                issued = client.attest(roots, csr, join_token=agent.join_token)
            elif agent.x509pop_cert_path and agent.x509pop_key_path:
                chain_pem = self.config.resolve_path(agent.x509pop_cert_path).read_bytes()
                key_pem = self.config.resolve_path(agent.x509pop_key_path).read_bytes()
                chain = [
                    c.public_bytes(serialization.Encoding.DER)
                    for c in x509.load_pem_x509_certificates(chain_pem)
                ]
                node_key = serialization.load_pem_private_key(key_pem, password=None)
                issued = client.attest(roots, csr, x509pop_chain=chain, x509pop_key=node_key)
            else:
                raise AgentError(
                    "no way to attest: set agent.join_token, or agent.x509pop_cert_path and "
                    "agent.x509pop_key_path"
                )
        except (AgentRefused, ServerUnavailable) as exc:
            raise AgentError(f"node attestation failed: {exc}") from None
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot read the x509pop certificate or key: {exc}") from None
        return AgentIdentity(
            SpiffeId.parse(issued.spiffe_id),
            issued.chain,
            key,
            issued.bundle_json,
            self.clock.now(),
        )

    def _roots(self) -> bytes:
        agent = self.config.agent
        if agent.trust_bundle_path:
            path = self.config.resolve_path(agent.trust_bundle_path)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise AgentError(f"agent.trust_bundle_path {path}: {exc.strerror}") from None
            if data.lstrip().startswith(b"{"):  # a SPIFFE bundle (JWKS)
                bundle = TrustBundle.parse(data, TrustDomain.parse(self.config.trust_domain))
                return bundle.to_pem()
            return data
        if agent.insecure_bootstrap:
            log.warning("agent.insecure_bootstrap: trusting the server's first certificate")
            try:
                return bootstrap_roots(agent.attestation_address)
            except ServerUnavailable as exc:
                raise AgentError(str(exc)) from None
        raise AgentError("set agent.trust_bundle_path (or agent.insecure_bootstrap for tests)")

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        assert self.sync is not None
        await self.sync.run(float(self.config.agent.sync_interval), self._stopping)

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        if self._endpoint is not None:
            await self._endpoint.close()
        server = self._metrics_server
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
        log.info("authd agent stopped")


async def serve_agent(config: Config) -> None:
    agent = AgentProcess(config)
    try:
        await agent.start()
        await agent.run_until_stopped()
    finally:
        await agent.close()

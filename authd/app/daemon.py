"""``authd run``: the one process that hosts the CA and its APIs.

Start-up order: data directory (0711) → store → key store → CA (authorities created on first
start) → admin API behind the peer-credential gateway → policy → ext_authz listeners (gRPC,
HTTP service mode) and metrics → rotation and policy-reload loops. Shutdown reverses it and
writes out the issuance and decision logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry, start_http_server

from authd.admin.remote import ADMIN_TLS_NAME, AdminServerSvid
from authd.admin.servicer import AdminService
from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.authz import assembly as authz_service
from authd.authz.decision_log import DecisionLog
from authd.authz.metrics import AuthzMetrics
from authd.config.settings import Config
from authd.extauthz.grpc_servicer import ExtAuthzService
from authd.extauthz.http_service import HttpAuthzServer
from authd.federation.bundle_endpoint import BundleEndpoint
from authd.policy.base import PolicyError
from authd.policy.reload import PolicyHolder
from authd.transport.grpc_server import NativeGrpcServer
from authd.transport.peercred import GatewayError, PeerCredGateway
from authd.workload.registry import EntryRegistry
from authd.workload.server import WorkloadEndpoint
from authd.workload.svids import SvidProvider
from ca.certificate_authority import CASettings, CertificateAuthority, UpstreamAuthority
from ca.clock import Clock, SystemClock
from ca.errors import InvalidRequest
from ca.keys import KeyStore, KeyType
from ca.replication import ReplicaFollower
from ca.revoker import RevocationList
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import RedisStore, Store, open_store

log = logging.getLogger("authd")

ADMIN_SERVICE = "authd.admin.v1.Admin"
EXT_AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"


class StartupError(Exception):
    """The daemon cannot start; the message says why in one line."""


def ca_settings(config: Config) -> CASettings:
    ca = config.ca
    return CASettings(
        key_type=KeyType.parse(ca.key_type),
        jwt_key_type=KeyType.parse(ca.jwt_key_type),
        ca_ttl=ca.ca_ttl,
        x509_svid_ttl=ca.x509_svid_ttl,
        jwt_svid_ttl=ca.jwt_svid_ttl,
        subject=ca.subject_name,
        refresh_hint=ca.bundle_refresh_hint,
    )


def load_upstream(config: Config) -> UpstreamAuthority | None:
    """The upstream CA from ``ca.upstream_cert``/``upstream_key``/``upstream_bundle``, if set."""
    cert_path, key_path = config.upstream_cert_path, config.upstream_key_path
    if cert_path is None or key_path is None:
        return None
    bundle_path = config.upstream_bundle_path or cert_path
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        roots = tuple(x509.load_pem_x509_certificates(bundle_path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot load the upstream CA: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise StartupError("ca.upstream_key must be an EC or RSA private key")
    if key.public_key() != certificate.public_key():
        raise StartupError("ca.upstream_key does not match ca.upstream_cert")
    return UpstreamAuthority(certificate, key, roots)


class Daemon:
    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self._stopping = asyncio.Event()
        self._store: Store | None = None
        self._ca: CertificateAuthority | None = None
        self._gateway: PeerCredGateway | None = None
        self._admin_server: grpc.aio.Server | None = None
        self._remote_admin_server: grpc.aio.Server | None = None
        self._authz_server: NativeGrpcServer | grpc.aio.Server | None = None
        self._http_server: HttpAuthzServer | None = None
        self._metrics_server: WSGIServer | None = None
        self._decision_log: DecisionLog | None = None
        self._policy: PolicyHolder | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._workload: WorkloadEndpoint | None = None
        self.follower: ReplicaFollower | None = None
        self._bundle_endpoint: BundleEndpoint | None = None
        self.metrics = AuthzMetrics()
        self.registry = CollectorRegistry()
        self.registry.register(self.metrics)
        self._health = health_aio.HealthServicer()

    @property
    def ca(self) -> CertificateAuthority:
        assert self._ca is not None
        return self._ca

    async def start(self) -> None:
        config = self.config
        data_dir = config.data_dir
        try:
            # 0711: others may reach the admin socket by name (the API checks their uid) but
            # not list the directory; keys/ and private/ are 0700, the store files 0600.
            data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
            os.chmod(data_dir, 0o711)  # noqa: S103 - deliberate, see above
        except OSError as exc:
            raise StartupError(f"cannot use data directory {data_dir}: {exc}") from None
        upstream = load_upstream(config)
        self._store = open_store(config.store_url, data_dir=data_dir)
        # With a shared store, note where its change feed stands before loading anything, so
        # the follower replays whatever changes while we load.
        start_from = self._store.latest_change_id() if isinstance(self._store, RedisStore) else None
        self._ca = CertificateAuthority(
            trust_domain=TrustDomain.parse(config.trust_domain),
            store=self._store,
            keystore=KeyStore(data_dir / "keys"),
            clock=self.clock,
            settings=ca_settings(config),
            upstream=upstream,
            rotates=config.ca.rotates,
        )
        self.entry_registry = EntryRegistry(self._store, self.clock)
        loop = asyncio.get_running_loop()
        self.revocations = RevocationList(
            self.ca,
            self._store,
            self.clock,
            crl_refresh=config.ca.crl_refresh,
            notify=loop.call_soon_threadsafe,
        )
        if isinstance(self._store, RedisStore):
            self.follower = ReplicaFollower(
                self._store,
                self.revocations,
                self.clock,
                on_entries=lambda: loop.call_soon_threadsafe(self.entry_registry.reload),
                on_entry=lambda entry_id: loop.call_soon_threadsafe(
                    self.entry_registry.refresh, entry_id
                ),
                on_authorities=lambda: loop.call_soon_threadsafe(self.ca.reload),
                start_from=start_from,
            )
            self.follower.start()
        await self._start_admin(data_dir / "private")
        await self._start_remote_admin()
        await self._start_authz()
        await self._start_workload()
        if config.ca.http_address:
            host, _, port = config.ca.http_address.rpartition(":")
            endpoint = BundleEndpoint(
                self.ca, self.revocations, host=host.strip("[]"), port=int(port)
            )
            try:
                await endpoint.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot serve the bundle endpoint on {config.ca.http_address}: {exc.strerror}"
                ) from None
            self._bundle_endpoint = endpoint
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(ADMIN_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(EXT_AUTHZ_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "authd serving trust domain %s; admin API on %s; data in %s",
            self.ca.trust_domain,
            config.admin_socket_path,
            data_dir,
        )

    async def _start_admin(self, private_dir: Path) -> None:
        gateway = PeerCredGateway(self.config.admin_socket_path, private_dir, public_mode=0o666)
        try:
            await gateway.start()
        except Exception as exc:
            raise StartupError(str(exc)) from None
        self._gateway = gateway
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        # One servicer for both listeners: it tells a Unix-socket caller from a TLS one.
        self._admin_service = AdminService(
            self.ca,
            gateway,
            self.config.admin.allows_uid,
            self.entry_registry,
            self.revocations,
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
            svid = AdminServerSvid(self.ca, self.clock, spiffe_id)
        except InvalidRequest as exc:
            raise StartupError(f"cannot issue the remote admin SVID {spiffe_id}: {exc}") from None
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        admin_pb2_grpc.add_AdminServicer_to_server(self._admin_service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            server.add_secure_port(address, svid.credentials())
        except RuntimeError as exc:
            raise StartupError(f"cannot serve the remote admin API on {address}: {exc}") from None
        await server.start()
        self._remote_admin_server = server
        self._tasks.append(asyncio.create_task(svid.run()))
        log.info("admin API over mTLS on %s as %s (DNS SAN %s)", address, spiffe_id, ADMIN_TLS_NAME)

    async def _serve_ext_authz_grpc(
        self, ext_authz: ExtAuthzService
    ) -> NativeGrpcServer | grpc.aio.Server:
        """Check, health and reflection on the ext_authz gRPC listeners, by the chosen engine."""
        authz = self.config.authz
        authorization = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
        reflection_names = (
            authorization.full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        if authz.grpc_engine == "native":
            native = NativeGrpcServer()
            native.add_servicer(authorization, ext_authz)
            native.add_servicer(health_pb2.DESCRIPTOR.services_by_name["Health"], self._health)
            native.add_servicer(
                reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
                reflection_aio.ReflectionServicer(reflection_names),
            )
            for address, listen in (
                (authz.grpc_address, native.listen_tcp),
                (authz.grpc_socket, native.listen_unix),
            ):
                if not address:
                    continue
                try:
                    await listen(address)
                except OSError as exc:
                    await native.stop(grace=0)
                    reason = exc.strerror or str(exc)
                    raise StartupError(
                        f"cannot listen for ext_authz on {address}: {reason}"
                    ) from None
            return native
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(ext_authz, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(reflection_names, server)
        for address in (authz.grpc_address, authz.grpc_socket):
            if not address:
                continue
            target = address if address == authz.grpc_address else f"unix:{address}"
            try:
                server.add_insecure_port(target)
            except RuntimeError as exc:
                raise StartupError(f"cannot listen for ext_authz on {address}: {exc}") from None
        await server.start()
        return server

    async def _start_authz(self) -> None:
        config = self.config
        authz = config.authz
        source = authz_service.policy_source(config)
        try:
            self._policy = PolicyHolder(source.load, source.files)
            resolver = authz_service.build_resolver(
                config,
                bundle=lambda: self.ca.bundle,
                clock=self.clock,
                is_revoked=self.revocations.view.is_revoked,
            )
        except (PolicyError, ValueError) as exc:
            raise StartupError(f"cannot load the policy: {exc}") from None
        self.metrics.add_source(
            "authd_identity_cache",
            "identity cache lookups by outcome",
            lambda: {
                "peer_hit": resolver.peer_cache.hits,
                "peer_miss": resolver.peer_cache.misses,
                "token_hit": resolver.token_cache.hits,
                "token_miss": resolver.token_cache.misses,
            },
        )
        if authz.policy_engine == "rego":
            policy = self._policy
            self.metrics.add_source(
                "authd_rego_decision_cache",
                "Rego decision cache lookups by outcome (restart at a policy reload)",
                lambda: {
                    "hit": getattr(policy.current, "cache_hits", 0),
                    "miss": getattr(policy.current, "cache_misses", 0),
                },
            )
        if authz.decision_log:
            target = authz.decision_log
            if target != "-":
                target = str(config.resolve_path(target))
            self._decision_log = DecisionLog.open(target)
        holder = self._policy
        authorizer = authz_service.build_authorizer(
            config,
            resolver=resolver,
            policy=lambda: holder.current,
            metrics=self.metrics,
            decision_log=self._decision_log,
            fresh=self.fresh,
        )
        self.metrics.add_gauge_source(
            "authd_revocation_staleness_seconds",
            "seconds since this replica's revocation view last matched the store",
            lambda: 0.0 if self.follower is None else min(self.follower.staleness(), 1e9),
        )
        self.metrics.add_gauge_source(
            "authd_revocations",
            "revoked serials, SPIFFE IDs, entries and token ids in the in-memory view",
            lambda: float(self.revocations.view.count()),
        )
        if authz.grpc_address or authz.grpc_socket:
            self._authz_server = await self._serve_ext_authz_grpc(
                ExtAuthzService(authorizer, self.metrics)
            )
        if authz.http_address:
            host, _, port = authz.http_address.rpartition(":")
            http_server = HttpAuthzServer(
                authorizer,
                host=host.strip("[]"),
                port=int(port),
                path_prefix=authz.http_path_prefix,
                peer_uri_header=authz.peer_uri_header,
                peer_cert_header=authz.peer_cert_header,
                context_header_prefix=authz.context_header_prefix,
                metrics=self.metrics,
                limits=config.listener_limits(),
            )
            try:
                await http_server.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot listen for ext_authz HTTP on {authz.http_address}: {exc.strerror}"
                ) from None
            self._http_server = http_server
        if authz.metrics_address:
            host, _, port = authz.metrics_address.rpartition(":")
            try:
                self._metrics_server, _ = start_http_server(
                    int(port), addr=host.strip("[]"), registry=self.registry
                )
            except OSError as exc:
                raise StartupError(
                    f"cannot serve metrics on {authz.metrics_address}: {exc.strerror}"
                ) from None
        self._tasks.append(asyncio.create_task(holder.run()))
        if self._decision_log is not None:
            self._tasks.append(asyncio.create_task(self._flush_decision_log()))
        log.info(
            "ext_authz: gRPC on %s (%s engine), HTTP service mode on %s, metrics on %s, "
            "policy %s%s",
            authz.grpc_address or authz.grpc_socket or "-",
            authz.grpc_engine,
            authz.http_address or "-",
            authz.metrics_address or "-",
            holder.current.name,
            " (dry run)" if authz.dry_run else "",
        )

    async def _start_workload(self) -> None:
        config = self.config
        if not config.workload.enabled:
            return
        self.svids = SvidProvider(
            self.ca, self.entry_registry, self.clock, revocations=self.revocations
        )
        endpoint = WorkloadEndpoint(
            ca=self.ca,
            provider=self.svids,
            socket_path=config.workload_socket_path,
            private_dir=config.data_dir / "private-workload",
            health=self._health,
            rotation_interval=config.workload.rotation_check_interval,
            revocations=self.revocations,
        )
        try:
            await endpoint.start()
        except (GatewayError, OSError, ValueError) as exc:
            raise StartupError(f"cannot serve the Workload API: {exc}") from None
        self._workload = endpoint
        log.info(
            "Workload API and SDS on %s (SPIFFE_ENDPOINT_SOCKET=unix://%s)",
            config.workload_socket_path,
            config.workload_socket_path,
        )

    async def _flush_decision_log(self) -> None:
        while True:
            await asyncio.sleep(1)
            assert self._decision_log is not None
            self._decision_log.flush()

    async def run_until_stopped(self) -> None:
        """Rotate authorities on schedule until ``stop()`` or SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        if self._policy is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self._policy.reload_now)
        interval = self.config.ca.rotation_check_interval
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)
            if not self._stopping.is_set():
                await self.rotate()

    async def rotate(self) -> None:
        if not self.ca.rotates:
            return
        try:
            # In a thread: a store that does not answer must not stall ext_authz on this loop.
            if await asyncio.to_thread(self.ca.rotate):
                log.info("authorities rotated; bundle sequence %d", self.ca.bundle.sequence)
        except Exception:
            log.exception("authority rotation failed; will retry")

    def stop(self) -> None:
        self._stopping.set()

    def fresh(self) -> bool:
        """False once a replica has been cut off from the shared store for too long."""
        follower = self.follower
        return follower is None or follower.staleness() <= self.config.store.max_staleness

    async def close(self) -> None:
        await self._health.enter_graceful_shutdown()
        if self.follower is not None:
            self.follower.stop()
        if self._workload is not None:
            await self._workload.close()
        if self._bundle_endpoint is not None:
            await self._bundle_endpoint.close()
        for task in self._tasks:
            task.cancel()
        if self._http_server is not None:
            await self._http_server.close()
        if self._authz_server is not None:
            await self._authz_server.stop(grace=2)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._decision_log is not None:
            self._decision_log.close()
        if self._remote_admin_server is not None:
            await self._remote_admin_server.stop(grace=2)
        if self._admin_server is not None:
            await self._admin_server.stop(grace=2)
        if self._gateway is not None:
            await self._gateway.close()
        if self._ca is not None:
            self._ca.close()
        if self._store is not None:
            self._store.close()
        log.info("authd stopped")


async def serve(config: Config) -> None:
    daemon = Daemon(config)
    try:
        await daemon.start()
        await daemon.run_until_stopped()
    finally:
        await daemon.close()

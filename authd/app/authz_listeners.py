"""The ext_authz decision point's listeners: gRPC (native or grpcio engine), Envoy's HTTP
service mode, and the Prometheus metrics endpoint; with the policy, its reload loop and the
decision log they share.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry, start_http_server

from authd.app.errors import StartupError
from authd.authz import assembly as authz_service
from authd.authz.decision_log import DecisionLog, DecisionSink
from authd.authz.metrics import AuthzMetrics
from authd.authz.opa_log_sink import FanOut, OpaDecisionLog, build_opa_decision_log
from authd.check.model import Reason
from authd.config.model import Config
from authd.extauthz.grpc_servicer import ExtAuthzService
from authd.extauthz.http_service import HttpAuthzServer
from authd.policy.base import PolicyError
from authd.policy.bundle_policy import DownloadedBundle
from authd.policy.reload import PolicyHolder
from authd.ports.bundle_view import BundleView
from authd.transport.grpc_options import grpc_server_options
from authd.transport.grpc_server import NativeGrpcServer
from authd.transport.refusals import RefusalCallback, RefusalReporter
from authd.transport.sockets import parse_host_port
from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock
from ca.revoker import Revoker

__all__ = ["AuthzListeners"]

log = logging.getLogger("authd")


class AuthzListeners:
    """The ext_authz listeners and the metrics endpoint; :meth:`start`, then :meth:`close`."""

    def __init__(
        self,
        config: Config,
        *,
        ca: CertificateAuthority,
        clock: Clock,
        revocations: Revoker,
        metrics: AuthzMetrics,
        registry: CollectorRegistry,
        health: health_aio.HealthServicer,
        staleness: Callable[[], float],
        fresh: Callable[[], bool],
        refusals: Callable[[str], RefusalCallback],
        stale_reason: Callable[[], Reason] = lambda: Reason.STALE,
        bundles: BundleView | None = None,
    ) -> None:
        self.config = config
        self._ca = ca
        self._bundles: BundleView = bundles if bundles is not None else ca
        self.clock = clock
        self._revocations = revocations
        self.metrics = metrics
        self._registry = registry
        self._health = health
        self._staleness = staleness
        self._fresh = fresh
        self._stale_reason = stale_reason
        # Each listener's refusal callback, by listener name ("ext_authz_grpc", ...).
        self._refusals = refusals
        self._policy: PolicyHolder | None = None
        self._decision_log: DecisionLog | None = None
        self._opa_decision_log: OpaDecisionLog | None = None
        self._authz_server: NativeGrpcServer | grpc.aio.Server | None = None
        self._http_server: HttpAuthzServer | None = None
        self._metrics_server: WSGIServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def policy(self) -> PolicyHolder | None:
        """The policy in force (None before :meth:`start`)."""
        return self._policy

    async def start(self) -> None:
        await self._start_authz()

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
            native = NativeGrpcServer(
                self.config.listener_limits(),
                refusals=RefusalReporter("ext_authz_grpc", self._refusals("ext_authz_grpc")),
            )
            native.add_servicer(authorization, ext_authz)
            native.add_servicer(health_pb2.DESCRIPTOR.services_by_name["Health"], self._health)
            if authz.grpc_reflection:
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
        server = grpc.aio.server(
            options=grpc_server_options(self.config.listener_limits(), direct=True)
        )
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(ext_authz, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if authz.grpc_reflection:
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
                bundles=self._bundles,
                clock=self.clock,
                revocations=self._revocations.view,
                txn_tokens=authz_service.build_txn_tokens(
                    config, clock=self.clock, signer=self._ca
                ),
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
        downloaded = self._policy.current
        if isinstance(downloaded, DownloadedBundle):  # a bundle from a bundle server
            self.metrics.add_source(
                "authd_bundle_polls",
                "bundle server polls by outcome (activated, refused, failed)",
                lambda: {
                    "activated": downloaded.activations,
                    "refused": downloaded.refusals,
                    "failed": downloaded.fetch_failures,
                },
            )
        if authz.decision_log:
            target = authz.decision_log
            if target != "-":
                target = str(config.resolve_path(target))
            self._decision_log = DecisionLog.open(target)
        sink: DecisionSink | None = self._decision_log
        try:
            self._opa_decision_log = build_opa_decision_log(config)
        except (OSError, PolicyError) as exc:
            raise StartupError(f"decision_logs: {exc}") from None
        if self._opa_decision_log is not None:
            opa_log = self._opa_decision_log
            opa_log.start()
            sink = opa_log if sink is None else FanOut(sink, opa_log)
            self.metrics.add_source(
                "authd_decision_logs",
                "OPA-format decision events by what became of them",
                opa_log.counters.snapshot,
            )
        holder = self._policy
        authorizer = authz_service.build_authorizer(
            config,
            resolver=resolver,
            policy=lambda: holder.current,
            metrics=self.metrics,
            decision_log=sink,
            fresh=self._fresh,
            stale_reason=self._stale_reason,
        )
        self.metrics.add_gauge_source(
            "authd_revocation_staleness_seconds",
            "seconds since this replica's revocation view last matched the store",
            lambda: min(self._staleness(), 1e9),
        )
        self.metrics.add_gauge_source(
            "authd_revocations",
            "revoked serials, SPIFFE IDs, entries and token ids in the in-memory view",
            lambda: float(self._revocations.view.count()),
        )
        if authz.grpc_address or authz.grpc_socket:
            self._authz_server = await self._serve_ext_authz_grpc(
                ExtAuthzService(authorizer, self.metrics)
            )
        if authz.http_address:
            host, port = parse_host_port(authz.http_address)
            http_server = HttpAuthzServer(
                authorizer,
                host=host,
                port=port,
                path_prefix=authz.http_path_prefix,
                peer_uri_header=authz.peer_uri_header,
                peer_cert_header=authz.peer_cert_header,
                context_header_prefix=authz.context_header_prefix,
                metrics=self.metrics,
                limits=config.listener_limits(),
                on_refusal=self._refusals("ext_authz_http"),
            )
            try:
                await http_server.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot listen for ext_authz HTTP on {authz.http_address}: {exc.strerror}"
                ) from None
            self._http_server = http_server
        if authz.metrics_address:
            host, port = parse_host_port(authz.metrics_address)
            try:
                self._metrics_server, _ = start_http_server(
                    port, addr=host, registry=self._registry
                )
            except OSError as exc:
                raise StartupError(
                    f"cannot serve metrics on {authz.metrics_address}: {exc.strerror}"
                ) from None
        self._tasks.append(asyncio.create_task(holder.run()))
        if source.background is not None:
            self._tasks.append(asyncio.create_task(source.background()))
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

    async def _flush_decision_log(self) -> None:
        while True:
            await asyncio.sleep(1)
            assert self._decision_log is not None
            self._decision_log.flush()

    async def close(self) -> None:
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
        if self._opa_decision_log is not None:
            await asyncio.to_thread(self._opa_decision_log.close)

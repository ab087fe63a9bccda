"""``authd run``: the one process that hosts the CA and its APIs.

Start-up order: data directory (0711) → store → its trust (``store_trust``: a store that
went backwards since this replica last saw it is never adopted) → CA (authorities created
on first start, never over a regressed store; a store made for another trust domain is
refused) → replica follower (shared store) → admin API behind the peer-credential gateway →
policy → ext_authz listeners (gRPC, HTTP service mode) and metrics → Workload API and SDS →
bundle endpoint → rotation and policy-reload loops. Shutdown reverses it and writes out the
issuance and decision logs.

The wiring lives beside this module, one concern each: ``authority`` (data directory, CA),
``replicas`` (following a shared store), ``store_trust`` (regression detection, the store's
mirror), ``admin_listeners``, ``authz_listeners``, ``workload_listener``, ``refusals`` (the
refusal counter), ``loop_dispatch`` (callbacks from other threads reach the loop's state
through the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from authd.admin.errors import AdminError
from authd.admin.store_ops import StoreOperations
from authd.app.admin_listeners import AdminListeners
from authd.app.authority import load_upstream, open_authority, prepare_data_dir
from authd.app.authz_listeners import AuthzListeners
from authd.app.errors import StartupError
from authd.app.federation import Federation
from authd.app.high_availability import HighAvailability, open_high_availability
from authd.app.loop_dispatch import on_loop
from authd.app.node_listeners import NodeListeners, node_authority
from authd.app.refusals import ListenerRefusals
from authd.app.replicas import change_feed_position, follow_store
from authd.app.store_durability import check_store_durability
from authd.app.store_trust import MIRRORED_SEQUENCES, StoreTrust
from authd.app.workload_listener import start_workload
from authd.app.xds_listener import NativeFastPath, explain_without_xds
from authd.authz.metrics import AuthzMetrics
from authd.check.model import Reason
from authd.config.model import Config
from authd.federation.bundle_endpoint import BundleEndpoint
from authd.transport.sockets import parse_host_port
from authd.workload.registry import EntryRegistry
from authd.workload.sds_stream import SdsStreamStatus
from authd.workload.server import WorkloadEndpoint
from authd.xds.report import XdsReport
from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock, SystemClock
from ca.replication import ReplicaFollower
from ca.revocation_view import RevocationView
from ca.revoker import Revoker
from ca.store import Fenced, Store, open_store

__all__ = ["ADMIN_SERVICE", "EXT_AUTHZ_SERVICE", "Daemon", "StartupError", "serve"]

log = logging.getLogger("authd")

ADMIN_SERVICE = "authd.admin.v1.Admin"
EXT_AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"


class Daemon:
    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self._stopping = asyncio.Event()
        self._store: Store | None = None
        self._ca: CertificateAuthority | None = None
        self._admin: AdminListeners | None = None
        self._authz: AuthzListeners | None = None
        self._workload: WorkloadEndpoint | None = None
        self.fast_path: NativeFastPath | None = None
        self.follower: ReplicaFollower | None = None
        self._bundle_endpoint: BundleEndpoint | None = None
        self._node_listeners: NodeListeners | None = None
        self.federation: Federation | None = None
        self.trust: StoreTrust | None = None
        self.ha: HighAvailability | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._reseed_refusal = ""
        self.metrics = AuthzMetrics()
        self.registry = CollectorRegistry()
        self.registry.register(self.metrics)
        self.refusals = ListenerRefusals(self.registry)
        self._health = health_aio.HealthServicer()

    @property
    def ca(self) -> CertificateAuthority:
        assert self._ca is not None
        return self._ca

    async def start(self) -> None:
        config = self.config
        data_dir = config.data_dir
        prepare_data_dir(data_dir)
        upstream = load_upstream(config)
        check_store_durability(config)
        self._store = open_store(
            config.store_url, data_dir=data_dir, durability=config.store.write_durability
        )
        # The position first: a change made meanwhile is replayed, into the mirror as well.
        start_from = change_feed_position(self._store)
        trust = self.trust = StoreTrust(self._store, data_dir, self.metrics)
        if not trust.view_trusted:
            start_from = None  # the follower starts with a guarded resync instead
        loop = asyncio.get_running_loop()
        ha = self.ha = open_high_availability(
            config, self._store, self.clock, replica=trust.replica, metrics=self.metrics
        )
        # A scheduled rotation runs on a worker thread; the CA's listeners run on the loop.
        self._ca = open_authority(
            config,
            self._store,
            self.clock,
            upstream,
            notify=on_loop(loop),
            store_trusted=trust.store_trusted,
            keystore=ha.keystore,
            fence=ha.fence,
        )
        self.entry_registry = EntryRegistry(self._store, self.clock)
        self.revocations = Revoker(
            self.ca,
            self._store,
            self.clock,
            crl_refresh=config.ca.crl_refresh,
            notify=loop.call_soon_threadsafe,
            view=RevocationView(self.clock) if self._store.change_feed() is not None else None,
        )
        self.federation = Federation(config, ca=self.ca, store=self._store, clock=self.clock)
        await self.federation.start(self.revocations)
        self.follower = follow_store(
            self._store,
            ca=self.ca,
            entries=self.entry_registry,
            revocations=self.revocations,
            clock=self.clock,
            start_from=start_from,
            guard=trust.guard,
            on_in_step=trust.view_in_step,
        )
        if self.follower is None:
            # This process is the store's only writer: remember each change it makes at once
            # (a store file replaced later by an older copy is then found behind).
            self.revocations.add_listener(trust.remember_now)
            self.ca.add_listener(trust.remember_now)
        self.store_ops = StoreOperations(
            self._store,
            trust.guard,
            trust.mirror,
            self.clock,
            replica=trust.replica,
            scratch=data_dir,
            sequences=MIRRORED_SEQUENCES,
            on_adopted=lambda: self._reload_view(loop),
        )
        self.nodes = node_authority(
            config, ca=self.ca, store=self._store, revocations=self.revocations, clock=self.clock
        )
        self._admin = AdminListeners(
            config,
            ca=self.ca,
            clock=self.clock,
            entries=self.entry_registry,
            revocations=self.revocations,
            health=self._health,
            refusals=self.refusals.callback,
            store=self.store_ops,
            sds_status=self._sds_status if config.workload.enabled else None,
            federated_bundles=self.federation.listing,
            xds_report=self._xds_report,
            nodes=self.nodes,
        )
        await self._admin.start()
        self._authz = AuthzListeners(
            config,
            ca=self.ca,
            clock=self.clock,
            revocations=self.revocations,
            metrics=self.metrics,
            registry=self.registry,
            health=self._health,
            staleness=self.staleness,
            fresh=self.fresh,
            refusals=self.refusals.callback,
            stale_reason=self.stale_reason,
            bundles=self.federation.view,
        )
        await self._authz.start()
        if config.xds.enabled:
            if not config.workload.enabled:
                raise StartupError("[xds] enabled needs [workload] enabled (ECDS is served there)")
            holder = self._authz.policy
            self.fast_path = NativeFastPath(
                config,
                policy=lambda: holder.current if holder is not None else None,
                revocations=self.revocations,
                entries=self.entry_registry,
                registry=self.registry,
            )
            await self.fast_path.start()
        if config.workload.enabled:
            self._workload = await start_workload(
                config,
                ca=self.ca,
                clock=self.clock,
                entries=self.entry_registry,
                revocations=self.revocations,
                health=self._health,
                on_refusal=self.refusals.callback("workload"),
                federation=self.federation.bundles,
                extra_services=[self.fast_path.add_service] if self.fast_path else [],
            )
        if config.ca.http_address:
            host, port = parse_host_port(config.ca.http_address)
            endpoint = BundleEndpoint(self.ca, self.revocations, host=host, port=port)
            try:
                await endpoint.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot serve the bundle endpoint on {config.ca.http_address}: {exc.strerror}"
                ) from None
            self._bundle_endpoint = endpoint
        if self.nodes is not None:
            self._node_listeners = NodeListeners(
                config,
                ca=self.ca,
                clock=self.clock,
                nodes=self.nodes,
                federated=self.federation.bundles,
            )
            await self._node_listeners.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(ADMIN_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(EXT_AUTHZ_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "authd serving trust domain %s; admin API on %s; data in %s",
            self.ca.trust_domain,
            config.admin_socket_path,
            data_dir,
        )

    def _xds_report(self) -> XdsReport:
        if self.fast_path is not None:
            return self.fast_path.report()
        holder = self._authz.policy if self._authz is not None else None
        return explain_without_xds(self.config, holder.current if holder else None)

    def _sds_status(self) -> list[SdsStreamStatus]:
        return self._workload.sds_status() if self._workload is not None else []

    def _reload_view(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read everything again from a store this replica was told to adopt as it is (after
        a restore, or `authd store accept`): revocations now, entries and authorities on the
        loop that owns them."""
        self.revocations.sync()
        if self.trust is not None:
            self.trust.view_trusted = True
        loop.call_soon_threadsafe(self.entry_registry.reload)
        loop.call_soon_threadsafe(self.ca.reload)

    async def run_until_stopped(self) -> None:
        """Rotate authorities on schedule until ``stop()`` or SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        policy = self._authz.policy if self._authz is not None else None
        if policy is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, policy.reload_now)
        if self.ha is not None and self.ha.leadership is not None:
            self._lease_task = asyncio.create_task(self.ha.keep_lease(self._stopping, self.rotate))
        interval = self.config.ca.rotation_check_interval
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)
            if not self._stopping.is_set():
                await self.auto_reseed()
                await self.rotate()

    async def rotate(self) -> None:
        if not self.ca.rotates:
            return
        try:
            # In a thread: a store that does not answer must not stall ext_authz on this loop.
            if await asyncio.to_thread(self.ca.rotate):
                log.info("authorities rotated; bundle sequence %d", self.ca.bundle.sequence)
        except Fenced as exc:  # the lease moved on mid-step: nothing was written
            log.warning("%s", exc)
        except Exception:
            log.exception("authority rotation failed; will retry")

    async def auto_reseed(self) -> None:
        """With ``store.auto_reseed``, the rotating replica repairs a regressed store itself."""
        trust = self.trust
        if not (self.config.store.auto_reseed and self.ca.rotates and trust is not None):
            return
        if not trust.guard.regressed or trust.mirror is None:
            return
        if self.ha is not None and self.ha.leadership is not None and not self.ha.leadership.leads:
            return  # with several rotating replicas, the rotation leader repairs
        try:
            await asyncio.to_thread(self.store_ops.reseed, "authd")
            self._reseed_refusal = ""
        except AdminError as exc:
            if str(exc) != self._reseed_refusal:  # once per reason, not every interval
                log.warning("store.auto_reseed: %s", exc)
            self._reseed_refusal = str(exc)

    def stop(self) -> None:
        self._stopping.set()

    def staleness(self) -> float:
        """Seconds since this replica's revocation view last matched the shared store."""
        return 0.0 if self.follower is None else self.follower.staleness()

    def stale_reason(self) -> Reason:
        """Why a replica that is not fresh fails closed: its store went backwards, or it was
        cut off from the store."""
        regressed = self.trust is not None and self.trust.guard.regressed
        return Reason.STORE_REGRESSED if regressed else Reason.STALE

    def fresh(self) -> bool:
        """False once a replica has been cut off from the shared store for too long, or
        while it started on a regressed store (it then has no view of its own)."""
        if self.trust is not None and not self.trust.view_trusted:
            return False
        return self.staleness() <= self.config.store.max_staleness

    async def close(self, *, announce: bool = True) -> None:
        await self._health.enter_graceful_shutdown()
        if self._lease_task is not None:
            self._stopping.set()
            with contextlib.suppress(Exception):
                await self._lease_task  # releases the rotation lease
        elif self.ha is not None and self.ha.leadership is not None:
            await asyncio.to_thread(self.ha.leadership.release)
        if self.follower is not None:
            self.follower.stop()
        if self.fast_path is not None:
            await self.fast_path.close()
        if self._workload is not None:
            await self._workload.close()
        if self._bundle_endpoint is not None:
            await self._bundle_endpoint.close()
        if self._node_listeners is not None:
            await self._node_listeners.close()
        if self.federation is not None:
            await self.federation.close()
        if self._authz is not None:
            await self._authz.close()
        if self._admin is not None:
            await self._admin.close()
        if self._ca is not None:
            self._ca.close()
        if self.trust is not None:
            self.trust.remember_now()
            self.trust.close()
        if self._store is not None:
            self._store.close()
        if announce:
            log.info("authd stopped")


async def serve(config: Config) -> None:
    daemon = Daemon(config)
    try:
        await daemon.start()
    except BaseException:
        # The caller reports why; a daemon that never started does not say it stopped.
        await daemon.close(announce=False)
        raise
    try:
        await daemon.run_until_stopped()
    finally:
        await daemon.close()

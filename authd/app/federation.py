"""Federation in ``authd run``: the foreign bundles, their poller, and our bundle endpoint.

Started right after the CA, before anything that verifies or hands out bundles, so the
decision point and the workload servers see the foreign bundles stored before from their
first request. See ``authd.federation`` for the pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from authd.api.authd.admin.v1 import admin_pb2
from authd.app.errors import StartupError
from authd.config.model import Config
from authd.federation.bundle_endpoint import BundleEndpoint
from authd.federation.endpoint_tls import EndpointSvid, web_server_context
from authd.federation.federated_bundles import FederatedBundles, TrustedBundles
from authd.federation.poller import FederationPoller
from authd.transport.sockets import parse_host_port
from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock
from ca.revoker import Revoker
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import Store

__all__ = ["Federation"]

log = logging.getLogger("authd")


class Federation:
    """The federated bundles (``view`` is the BundleView to verify with) and their upkeep."""

    def __init__(self, config: Config, *, ca: CertificateAuthority, store: Store, clock: Clock):
        self._config = config
        self._ca = ca
        self._clock = clock
        self.bundles = FederatedBundles()
        self.view = TrustedBundles(ca, self.bundles)
        self.poller = FederationPoller(
            config.federation.trust_domains,
            bundles=self.bundles,
            own=self.view,
            store=store,
            clock=clock,
            min_refresh=config.federation.min_refresh,
            max_refresh=config.federation.max_refresh,
        )
        self._store = store
        self._endpoint: BundleEndpoint | None = None
        self._svid: EndpointSvid | None = None
        self._svid_task: asyncio.Task[None] | None = None

    async def start(self, revocations: Revoker) -> None:
        try:
            await asyncio.to_thread(self.bundles.load, self._store)
            self.poller.bootstrap(lambda path: self._config.resolve_path(path).read_bytes())
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.poller.start()
        address = self._config.federation.bundle_endpoint_address
        if address:
            await self._serve_endpoint(address, revocations)

    async def _serve_endpoint(self, address: str, revocations: Revoker) -> None:
        federation = self._config.federation
        tls: ssl.SSLContext
        try:
            if federation.bundle_endpoint_profile == "https_web":
                tls = web_server_context(
                    self._config.resolve_path(federation.bundle_endpoint_cert),
                    self._config.resolve_path(federation.bundle_endpoint_key),
                )
            else:
                self._svid = EndpointSvid(
                    self._ca,
                    self._clock,
                    SpiffeId.parse(federation.endpoint_id(self._config.trust_domain)),
                    self._config.data_dir / "private-federation",
                )
                tls = self._svid.context
                self._svid_task = asyncio.create_task(self._svid.run())
        except Exception as exc:
            raise StartupError(f"cannot serve the SPIFFE bundle endpoint: {exc}") from None
        host, port = parse_host_port(address)
        endpoint = BundleEndpoint(self._ca, revocations, host=host, port=port, tls=tls)
        try:
            await endpoint.start()
        except OSError as exc:
            raise StartupError(
                f"cannot serve the SPIFFE bundle endpoint on {address}: {exc.strerror}"
            ) from None
        self._endpoint = endpoint
        log.info(
            "SPIFFE bundle endpoint (%s) on https://%s:%d/",
            federation.bundle_endpoint_profile,
            host,
            endpoint.port,
        )

    def listing(self) -> list[admin_pb2.FederatedBundle]:
        """Every configured foreign trust domain, and any other whose bundle is stored."""
        found = []
        statuses = {status.trust_domain: status for status in self.poller.status()}
        names = sorted({*statuses, *(td.name for td in self.bundles.all())})
        for name in names:
            td = TrustDomain(name)
            bundle, text = self.bundles.get(td), self.bundles.json_of(td)
            message = admin_pb2.FederatedBundle(trust_domain=name)
            if bundle is not None:
                message.has_bundle = True
                message.sequence = max(bundle.sequence, 0)
                message.spiffe_jwks = text or bundle.to_json()
                message.pem = bundle.to_pem().decode()
            status = statuses.get(name)
            if status is not None:
                message.endpoint_url = status.endpoint_url
                message.profile = status.profile
                message.refreshed_at = status.refreshed_at or 0.0
                message.last_attempt = status.last_attempt or 0.0
                message.next_refresh = status.next_refresh or 0.0
                message.last_error = status.last_error
            found.append(message)
        return found

    async def close(self) -> None:
        await self.poller.close()
        if self._svid_task is not None:
            self._svid_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._svid_task
        if self._endpoint is not None:
            await self._endpoint.close()

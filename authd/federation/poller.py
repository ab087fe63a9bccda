"""Polling foreign SPIFFE bundle endpoints (``[[federation.trust_domains]]``).

One task per foreign trust domain fetches its bundle (in a worker thread, see
``authd.federation.fetch``), checks it (``authd.federation.foreign_bundle``), and, when it
differs from the one trusted now, stores it and trusts it. The next poll comes after the
bundle's ``spiffe_refresh_hint``, bounded to ``[min_refresh, max_refresh]``; after a failure,
after ``min_refresh``. A refused bundle or endpoint is one warning line naming the trust
domain, the endpoint and the reason; the bundle trusted before is kept.

For ``https_spiffe`` the endpoint's SVID is checked against the bundle we hold for the
endpoint's own trust domain: ours if the endpoint is in our trust domain, else the last good
(or the bootstrap) bundle of that foreign trust domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from authd.config.model import ForeignTrustDomain
from authd.federation.federated_bundles import DomainStatus, FederatedBundles
from authd.federation.fetch import EndpointTarget, fetch_bundle, spiffe_context, web_context
from authd.federation.foreign_bundle import (
    ForeignBundleError,
    parse_bootstrap,
    parse_foreign_bundle,
)
from authd.ports.bundle_view import BundleView
from ca.clock import Clock
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import Store

__all__ = ["FederationPoller"]

log = logging.getLogger("authd.federation")


class FederationPoller:
    """Keeps every configured foreign bundle fresh; ``status()`` says how each one fares."""

    def __init__(
        self,
        domains: tuple[ForeignTrustDomain, ...],
        *,
        bundles: FederatedBundles,
        own: BundleView,
        store: Store,
        clock: Clock,
        min_refresh: float,
        max_refresh: float,
        fetch_timeout: float = 10.0,
    ) -> None:
        self._domains = {TrustDomain.parse(d.trust_domain): d for d in domains}
        self._bundles = bundles
        self._own = own
        self._store = store
        self._clock = clock
        self._min = min_refresh
        self._max = max_refresh
        self._timeout = fetch_timeout
        self._status = {
            td: DomainStatus(td.name, d.bundle_endpoint_url, d.profile)
            for td, d in self._domains.items()
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: dict[TrustDomain, asyncio.Event] = {}

    def bootstrap(self, read: Callable[[str], bytes]) -> None:
        """Trust each bootstrap bundle whose trust domain has none stored yet."""
        for td, domain in self._domains.items():
            if self._bundles.get(td) is not None or not domain.bootstrap_bundle:
                continue
            try:
                data = read(domain.bootstrap_bundle)
                bundle = parse_bootstrap(data, td)
            except (OSError, ForeignBundleError) as exc:
                raise ValueError(
                    f"federation: bootstrap bundle of {td} ({domain.bootstrap_bundle}): {exc}"
                ) from None
            text = bundle.to_json(indent=None)
            self._store.save_federated_bundle(
                FederatedBundles.record(bundle, text, "bootstrap", self._clock.now())
            )
            self._bundles.replace(bundle, text)
        for td, status in self._status.items():
            known = self._bundles.get(td)
            status.sequence = known.sequence if known is not None else None

    def status(self) -> list[DomainStatus]:
        return [self._status[td] for td in sorted(self._status, key=lambda t: t.name)]

    def start(self) -> None:
        for td in self._domains:
            self._wake[td] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._poll_forever(td)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def refresh_soon(self, trust_domain: TrustDomain) -> bool:
        """Poll ``trust_domain`` now rather than at its next time; False if not configured."""
        wake = self._wake.get(trust_domain)
        if wake is None:
            return False
        wake.set()
        return True

    async def _poll_forever(self, td: TrustDomain) -> None:
        wake = self._wake[td]
        while True:
            delay = await self.refresh(td)
            self._status[td].next_refresh = self._clock.now() + delay
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=delay)

    async def refresh(self, td: TrustDomain) -> float:
        """Fetch, check and (if new) trust the bundle of ``td``; seconds to the next poll."""
        domain, status = self._domains[td], self._status[td]
        status.last_attempt = self._clock.now()
        try:
            target = self._target(domain)
            body = await asyncio.to_thread(fetch_bundle, target, timeout=self._timeout)
            bundle = parse_foreign_bundle(body, td)
            text = body.decode("utf-8")
            if not self._bundles.same(bundle, text):
                record = FederatedBundles.record(
                    bundle, text, domain.bundle_endpoint_url, self._clock.now()
                )
                await asyncio.to_thread(self._store.save_federated_bundle, record)
                previous = self._bundles.get(td)
                self._bundles.replace(bundle, text)
                log.info(
                    "federation: trusting the bundle of %s from %s, sequence %d (was %s)",
                    td,
                    domain.bundle_endpoint_url,
                    bundle.sequence,
                    "none" if previous is None else previous.sequence,
                )
        except (ForeignBundleError, UnicodeDecodeError) as exc:
            return self._refused(td, domain, str(exc))
        except Exception as exc:  # the store, or something unforeseen: keep polling
            log.exception("federation: refreshing the bundle of %s failed", td)
            return self._refused(td, domain, f"{type(exc).__name__}: {exc}", logged=True)
        status.sequence = bundle.sequence
        status.refreshed_at = self._clock.now()
        status.last_error = ""
        hint = bundle.refresh_hint or self._min
        return float(min(max(hint, self._min), self._max))

    def _refused(
        self, td: TrustDomain, domain: ForeignTrustDomain, why: str, *, logged: bool = False
    ) -> float:
        kept = self._bundles.get(td)
        keeping = f"keeping sequence {kept.sequence}" if kept is not None else "no bundle yet"
        if not logged:
            log.warning(
                "federation: refused the bundle of %s from %s: %s (%s)",
                td,
                domain.bundle_endpoint_url,
                why,
                keeping,
            )
        self._status[td].last_error = why
        return float(self._min)

    def _target(self, domain: ForeignTrustDomain) -> EndpointTarget:
        if domain.profile == "https_web":
            return EndpointTarget(domain.bundle_endpoint_url, web_context(domain.ca_file or None))
        endpoint_td = SpiffeId.parse(domain.endpoint_spiffe_id).trust_domain
        roots = self._own.bundle_for(endpoint_td)
        if roots is None or not roots.x509_authorities:
            raise ForeignBundleError(
                f"no bundle of {endpoint_td} to verify the endpoint's SVID with; "
                "set bootstrap_bundle"
            )
        return EndpointTarget(
            domain.bundle_endpoint_url, spiffe_context(roots.to_pem()), domain.endpoint_spiffe_id
        )

"""The foreign bundles we trust, in memory and in the store, and a BundleView over them.

:class:`FederatedBundles` holds the last good bundle of each foreign trust domain. It is
loaded from the store at start (so a restart trusts what it trusted before, even while a
foreign endpoint is away), replaced only by a bundle that passed every check, and tells its
listeners (the Workload API and SDS streams) of every change. :class:`TrustedBundles` is the
``BundleView`` the decision point and the workload servers are given: our own trust domain's
bundle from the CA, every other one from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from authd.federation.foreign_bundle import ForeignBundleError, parse_foreign_bundle
from ca.bundle import TrustBundle
from ca.certificate_authority import CertificateAuthority
from ca.spiffe_id import TrustDomain
from ca.store import FederatedBundleRecord, Store

__all__ = ["DomainStatus", "FederatedBundles", "TrustedBundles"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DomainStatus:
    """What the poller knows of one foreign trust domain (``authd federation status``)."""

    trust_domain: str
    endpoint_url: str
    profile: str
    sequence: int | None = None  # of the bundle trusted now; None: none yet
    refreshed_at: float | None = None  # when that bundle was fetched
    last_attempt: float | None = None
    last_error: str = ""
    next_refresh: float | None = None


class FederatedBundles:
    """The foreign bundles trusted now, by trust domain."""

    def __init__(self) -> None:
        self._bundles: dict[TrustDomain, TrustBundle] = {}
        self._json: dict[TrustDomain, str] = {}
        self._listeners: list[Callable[[], None]] = []
        self.version = 0

    def load(self, store: Store) -> None:
        """Trust what the store holds (a record that no longer parses is skipped, loudly)."""
        for record in store.list_federated_bundles():
            try:
                trust_domain = TrustDomain.parse(record.trust_domain)
                bundle = parse_foreign_bundle(record.bundle_json.encode(), trust_domain)
            except (ForeignBundleError, ValueError) as exc:
                log.error(
                    "stored bundle of %s is unreadable, ignored: %s", record.trust_domain, exc
                )
                continue
            self._bundles[trust_domain] = bundle
            self._json[trust_domain] = record.bundle_json
        self._changed()

    def get(self, trust_domain: TrustDomain) -> TrustBundle | None:
        return self._bundles.get(trust_domain)

    def json_of(self, trust_domain: TrustDomain) -> str | None:
        """The bundle exactly as its endpoint served it."""
        return self._json.get(trust_domain)

    def all(self) -> dict[TrustDomain, TrustBundle]:
        return dict(self._bundles)

    def same(self, bundle: TrustBundle, text: str) -> bool:
        """Whether ``text`` is what we trust for ``bundle``'s trust domain already."""
        return self._json.get(bundle.trust_domain) == text

    def replace(self, bundle: TrustBundle, text: str) -> None:
        """Trust ``bundle`` (served as ``text``) for its trust domain from now on."""
        self._bundles[bundle.trust_domain] = bundle
        self._json[bundle.trust_domain] = text
        self._changed()

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        self.version += 1
        for listener in self._listeners:
            listener()

    @staticmethod
    def record(bundle: TrustBundle, text: str, url: str, now: float) -> FederatedBundleRecord:
        return FederatedBundleRecord(
            trust_domain=bundle.trust_domain.name,
            bundle_json=text,
            sequence=bundle.sequence,
            refreshed_at=int(now),
            endpoint_url=url,
        )


class TrustedBundles:
    """A ``BundleView``: our trust domain's bundle from the CA, foreign ones from federation."""

    def __init__(self, ca: CertificateAuthority, federated: FederatedBundles) -> None:
        self._ca = ca
        self._federated = federated

    @property
    def trust_domain(self) -> TrustDomain:
        return self._ca.trust_domain

    @property
    def bundle(self) -> TrustBundle:
        return self._ca.bundle

    def bundle_for(self, trust_domain: TrustDomain) -> TrustBundle | None:
        if trust_domain == self._ca.trust_domain:
            return self._ca.bundle
        return self._federated.get(trust_domain)

"""The trust bundles the decision point verifies against, by trust domain.

Today the CA (``ca.certificate_authority.CertificateAuthority``) answers it with its own
trust domain's bundle. A federated bundle cache, or an agent holding bundles a remote server
sent, satisfies the same port, so verifying code never learns where a bundle came from.
Each bundle carries its ``sequence``, which grows on every change: caches of verified
credentials key on it, so a rotation or a revoked authority takes effect at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ca.bundle import TrustBundle
from ca.spiffe_id import TrustDomain

__all__ = ["BundleView", "ForeignBundles", "StaticBundles", "TrustBundle"]


class BundleView(Protocol):
    """The current bundle of our own trust domain, and of any other one we know."""

    @property
    def trust_domain(self) -> TrustDomain:
        """The trust domain this decision point belongs to."""
        ...

    @property
    def bundle(self) -> TrustBundle:
        """Our own trust domain's current bundle: one immutable snapshot, with its sequence."""
        ...

    def bundle_for(self, trust_domain: TrustDomain) -> TrustBundle | None:
        """The current bundle of ``trust_domain``; None for a trust domain we do not trust."""
        ...


class ForeignBundles(Protocol):
    """The foreign trust domains' bundles federation keeps, and a call on every change."""

    def get(self, trust_domain: TrustDomain) -> TrustBundle | None:
        """The bundle trusted now for ``trust_domain``; None if there is none."""
        ...

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the serving loop) whenever any foreign bundle changes."""
        ...


class StaticBundles:
    """Bundles given up front (the offline policy check, tests); ``bundle`` may be replaced."""

    def __init__(self, bundle: TrustBundle, *others: TrustBundle) -> None:
        self.bundle = bundle
        self._others = {b.trust_domain: b for b in others}

    @property
    def trust_domain(self) -> TrustDomain:
        return self.bundle.trust_domain

    def bundle_for(self, trust_domain: TrustDomain) -> TrustBundle | None:
        if trust_domain == self.bundle.trust_domain:
            return self.bundle
        return self._others.get(trust_domain)

"""The certificate authority of one trust domain: one object over the timeline and the signer.

A thin facade for the daemon's callers: ``ca.timeline.AuthorityTimeline`` holds and moves the
rotation state (persisted in the store), ``ca.signer.Signer`` issues SVIDs with the active
authority, ``ca.rotation`` decides when to rotate, ``ca.templates`` says what a certificate
contains. Time always comes from the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography import x509

from ca.authorities import JwtAuthority, X509Authority
from ca.bundle import TrustBundle
from ca.clock import Clock
from ca.errors import InvalidRequest
from ca.issuance_log import IssuanceLog
from ca.jwtsvid import JwtSvid, verify_jwt_svid
from ca.keys import KeyStore, PublicKey
from ca.settings import DEFAULT_SUBJECT, CASettings, UpstreamAuthority
from ca.signer import Signer
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import AuthorityRecord, Store
from ca.timeline import BUNDLE_SEQUENCE, AuthorityTimeline
from ca.x509svid import X509Svid, verify_x509_svid

__all__ = [
    "BUNDLE_SEQUENCE",
    "DEFAULT_SUBJECT",
    "CASettings",
    "CertificateAuthority",
    "UpstreamAuthority",
]


class CertificateAuthority:
    """One trust domain's CA: its timeline, its signer, and verification against its bundle."""

    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        store: Store,
        keystore: KeyStore,
        clock: Clock,
        settings: CASettings | None = None,
        upstream: UpstreamAuthority | None = None,
        rotates: bool = True,
        notify: Callable[[Callable[[], None]], object] | None = None,
        store_trusted: Callable[[], bool] = lambda: True,
        fence: Callable[[], int | None] | None = None,
    ) -> None:
        settings = settings or CASettings()
        if len(settings.subject) == 0:
            raise InvalidRequest("the CA subject must not be empty (RFC 5280 issuer name)")
        self.trust_domain = trust_domain
        self.store = store
        self.keystore = keystore
        self.clock = clock
        self.settings = settings
        self.upstream = upstream
        # With several replicas on one store, exactly one rotates; the others follow.
        self.rotates = rotates
        self.timeline = AuthorityTimeline(
            trust_domain=trust_domain,
            store=store,
            keystore=keystore,
            clock=clock,
            settings=settings,
            upstream=upstream,
            rotates=rotates,
            notify=notify,
            store_trusted=store_trusted,
            fence=fence,
        )
        self.issuance_log = IssuanceLog(store)
        timeline = self.timeline
        self.signer = Signer(
            trust_domain=trust_domain,
            settings=settings,
            clock=clock,
            authorities=lambda: timeline.signing,
            issuance_log=self.issuance_log,
        )

    def close(self) -> None:
        """Write out the issuance log; the store stays open (it belongs to the caller)."""
        self.issuance_log.close()

    # --- the timeline (ca.timeline) -------------------------------------------------------

    def rotate(self) -> bool:
        """Bring both timelines up to date with the clock; True if anything changed."""
        return self.timeline.rotate()

    def reload(self) -> None:
        """Re-read the authorities from the store (another replica changed them)."""
        self.timeline.reload()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the authorities or the bundle."""
        self.timeline.add_listener(listener)

    def prepare_authority(self, kind: str, *, actor: str = "authd") -> AuthorityRecord:
        """Prepare the next authority of ``kind`` now (it enters the bundle at once)."""
        return self.timeline.prepare_authority(kind, actor=actor)

    def activate_authority(self, kind: str, *, actor: str = "authd") -> AuthorityRecord:
        """Make the prepared authority of ``kind`` sign now; the active one is retired."""
        return self.timeline.activate_authority(kind, actor=actor)

    def taint_authority(self, authority_id: str, *, actor: str = "authd") -> AuthorityRecord:
        """Mark a retired authority tainted: everything it signed is re-issued at once."""
        return self.timeline.taint_authority(authority_id, actor=actor)

    def revoke_authority(self, authority_id: str, *, actor: str = "authd") -> AuthorityRecord:
        """Remove a tainted authority from the bundle: what it signed is no longer trusted."""
        return self.timeline.revoke_authority(authority_id, actor=actor)

    def authorities(self) -> list[AuthorityRecord]:
        return self.timeline.authorities()

    # --- what the CA serves ---------------------------------------------------------------

    @property
    def bundle(self) -> TrustBundle:
        """This trust domain's current bundle (one immutable snapshot)."""
        return self.timeline.bundle

    def bundle_for(self, trust_domain: TrustDomain) -> TrustBundle | None:
        """The bundle of ``trust_domain`` if it is ours; a CA knows no other trust domain's."""
        return self.timeline.bundle if trust_domain == self.trust_domain else None

    def live_x509_authorities(self) -> tuple[X509Authority, ...]:
        """Every X.509 authority still in the bundle whose key this replica holds."""
        return self.timeline.signing.x509_live

    @property
    def x509_authority(self) -> X509Authority:
        return self.timeline.signing.x509

    @property
    def jwt_authority(self) -> JwtAuthority:
        return self.timeline.signing.jwt

    # --- issuing (ca.signer) --------------------------------------------------------------

    def sign_jwt(self, claims: Mapping[str, Any], *, typ: str) -> str:
        """``claims`` signed by the active JWT authority (kid in the bundle), header ``typ``."""
        return self.signer.sign_jwt(claims, typ=typ)

    def issue_x509_svid(
        self,
        csr: bytes,
        *,
        spiffe_id: SpiffeId,
        dns_names: Sequence[str] = (),
        ttl: float | None = None,
        requester: str,
    ) -> X509Svid:
        """Issue an X.509-SVID for the key in ``csr`` (after proof of possession)."""
        return self.signer.issue_x509_svid(
            csr, spiffe_id=spiffe_id, dns_names=dns_names, ttl=ttl, requester=requester
        )

    def sign_x509_svid(
        self,
        public_key: PublicKey,
        *,
        spiffe_id: SpiffeId,
        dns_names: Sequence[str] = (),
        ttl: float | None = None,
        requester: str,
    ) -> X509Svid:
        """Issue an X.509-SVID for ``public_key`` whose possession is established otherwise."""
        return self.signer.sign_x509_svid(
            public_key, spiffe_id=spiffe_id, dns_names=dns_names, ttl=ttl, requester=requester
        )

    def mint_jwt_svid(
        self,
        *,
        spiffe_id: SpiffeId,
        audience: Sequence[str],
        ttl: float | None = None,
    ) -> JwtSvid:
        """Mint a JWT-SVID for ``spiffe_id`` with the active JWT authority."""
        return self.signer.mint_jwt_svid(spiffe_id=spiffe_id, audience=audience, ttl=ttl)

    # --- verifying against our own bundle -------------------------------------------------

    def verify_x509_svid(self, chain: Sequence[x509.Certificate]) -> SpiffeId:
        """Verify a peer's chain against this CA's own bundle."""
        return verify_x509_svid(
            chain,
            trust_domain=self.trust_domain,
            roots=self.bundle.x509_authorities,
            now=self.clock.now(),
        )

    def verify_jwt_svid(self, token: str, audience: Sequence[str]) -> JwtSvid:
        """Verify a JWT-SVID against this CA's own bundle."""
        return verify_jwt_svid(
            token,
            trust_domain=self.trust_domain,
            keys=self.bundle.jwt_authorities,
            audience=audience,
            now=self.clock.now(),
        )

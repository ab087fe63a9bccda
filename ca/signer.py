"""Issuing SVIDs with the active authority: X.509-SVIDs (recorded in the issuance log) and
JWT-SVIDs.

The signer checks what a request may ask for (an ID of this trust domain, a TTL within the
CA's limit) and signs with whichever authority the timeline has made active; it never moves
the timeline itself. What a certificate contains is ``ca.templates``' business.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ca.authorities import SigningAuthorities
from ca.clock import Clock
from ca.errors import InvalidRequest
from ca.issuance_log import IssuanceLog
from ca.jwtsvid import JwtSvid, mint_jwt_svid, sign_jws
from ca.keys import PublicKey
from ca.settings import CASettings
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import IssuanceRecord
from ca.x509svid import X509Svid, check_dns_names, public_key_of_csr, sign_x509_svid


class Signer:
    """Issues X.509-SVIDs and JWT-SVIDs with the authorities ``authorities()`` returns."""

    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        settings: CASettings,
        clock: Clock,
        authorities: Callable[[], SigningAuthorities],
        issuance_log: IssuanceLog,
    ) -> None:
        self.trust_domain = trust_domain
        self.settings = settings
        self.clock = clock
        self._authorities = authorities
        self.issuance_log = issuance_log

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
        return self.sign_x509_svid(
            public_key_of_csr(csr),
            spiffe_id=spiffe_id,
            dns_names=dns_names,
            ttl=ttl,
            requester=requester,
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
        """Issue an X.509-SVID for ``public_key`` and record it in the issuance log.

        Only for keys whose possession is established otherwise: a verified CSR, or a key
        authd generated itself for a workload it attested.
        """
        self._check_identity(spiffe_id)
        authority = self._authorities().x509
        now = self.clock.now()
        svid = sign_x509_svid(
            authority,
            public_key=public_key,
            spiffe_id=spiffe_id,
            dns_names=check_dns_names(dns_names),
            now=now,
            ttl=self.ttl(ttl, self.settings.x509_svid_ttl),
        )
        self.issuance_log.append(
            IssuanceRecord(
                serial=svid.serial,
                kind="x509",
                spiffe_id=str(spiffe_id),
                authority_id=authority.authority_id,
                not_before=int(svid.leaf.not_valid_before_utc.timestamp()),
                not_after=svid.expires_at,
                requester=requester,
                issued_at=int(now),
            )
        )
        return svid

    def mint_jwt_svid(
        self,
        *,
        spiffe_id: SpiffeId,
        audience: Sequence[str],
        ttl: float | None = None,
    ) -> JwtSvid:
        """Mint a JWT-SVID for ``spiffe_id`` with the active JWT authority."""
        self._check_identity(spiffe_id)
        return mint_jwt_svid(
            self._authorities().jwt,
            spiffe_id=spiffe_id,
            audience=audience,
            now=self.clock.now(),
            ttl=self.ttl(ttl, self.settings.jwt_svid_ttl),
        )

    def sign_jwt(self, claims: Mapping[str, Any], *, typ: str) -> str:
        """Sign ``claims`` (a transaction token, say) with the active JWT authority."""
        return sign_jws(self._authorities().jwt, claims, typ=typ)

    def ttl(self, requested: float | None, default: int) -> float:
        """The lifetime to issue for: ``default`` for none or 0, else ``requested`` if allowed."""
        if requested is None or requested == 0:
            return default
        if requested < 0:
            raise InvalidRequest(f"TTL must be positive, got {requested}")
        if requested > self.settings.max_svid_ttl:
            raise InvalidRequest(
                f"TTL {int(requested)}s exceeds the CA's limit of {self.settings.max_svid_ttl}s"
            )
        return requested

    def _check_identity(self, spiffe_id: SpiffeId) -> None:
        if not spiffe_id.member_of(self.trust_domain):
            raise InvalidRequest(
                f"{spiffe_id} is not in this CA's trust domain {self.trust_domain}"
            )

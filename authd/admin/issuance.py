"""SVIDs and the bundle as admin operations: mint an X.509-SVID or a JWT-SVID for an
operator, read the bundle, and list what an authority signed (from the issuance log), each
with the revocation that covers it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from authd.admin.callers import AdminCaller
from authd.admin.errors import FailedPrecondition, InvalidArgument, store_refusal
from ca.bundle import TrustBundle
from ca.certificate_authority import CertificateAuthority
from ca.errors import InvalidRequest, InvalidSpiffeId
from ca.jwtsvid import JwtSvid
from ca.revoker import Revoker
from ca.spiffe_id import SpiffeId
from ca.store import IssuanceRecord, Revocation, StoreError
from ca.x509svid import X509Svid

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IssuedSvid:
    """An issuance log record and the revocation that covers it, if any."""

    issuance: IssuanceRecord
    revocation: Revocation | None


def covering_revocation(
    issuance: IssuanceRecord, revocations: Mapping[tuple[str, str], Revocation]
) -> Revocation | None:
    """The revocation that covers an issued SVID: of its serial, its SPIFFE ID or its entry."""
    keys = [("serial", issuance.serial), ("spiffe_id", issuance.spiffe_id)]
    if issuance.requester.startswith("entry:"):
        keys.append(("entry", issuance.requester.removeprefix("entry:")))
    return next((revocations[key] for key in keys if key in revocations), None)


def spiffe_id_filter(value: str) -> str | None:
    """A SPIFFE ID given as a filter, canonical; None when none was given."""
    if not value:
        return None
    try:
        return str(SpiffeId.parse(value))
    except InvalidSpiffeId as exc:
        raise InvalidArgument(f"filter 'spiffe_id': {exc}") from None


class IssuanceOperations:
    def __init__(self, ca: CertificateAuthority, revocations: Revoker) -> None:
        self._ca = ca
        self._revocations = revocations

    def mint_x509_svid(
        self,
        caller: AdminCaller,
        *,
        csr: bytes,
        spiffe_id: str,
        dns_names: Sequence[str],
        ttl: int,
    ) -> X509Svid:
        """Issues an X.509-SVID for the CSR's key; returned only once it is in the log."""
        self._refuse_revoked(spiffe_id)
        try:
            svid = self._ca.issue_x509_svid(
                csr,
                spiffe_id=SpiffeId.parse(spiffe_id),
                dns_names=list(dns_names),
                ttl=ttl or None,
                requester=caller.actor,
            )
            # Acknowledged means logged: a serial the caller holds can always be revoked.
            self._ca.issuance_log.flush()
        except (InvalidRequest, InvalidSpiffeId) as exc:
            raise InvalidArgument(str(exc)) from None
        except StoreError as exc:
            raise store_refusal(exc) from None
        log.info("minted X.509-SVID %s serial %s for %s", svid.spiffe_id, svid.serial, caller)
        return svid

    def mint_jwt_svid(
        self, caller: AdminCaller, *, spiffe_id: str, audience: Sequence[str], ttl: int
    ) -> JwtSvid:
        self._refuse_revoked(spiffe_id)
        try:
            svid = self._ca.mint_jwt_svid(
                spiffe_id=SpiffeId.parse(spiffe_id), audience=list(audience), ttl=ttl or None
            )
        except (InvalidRequest, InvalidSpiffeId) as exc:
            raise InvalidArgument(str(exc)) from None
        log.info("minted JWT-SVID %s for %s", svid.spiffe_id, caller)
        return svid

    def bundle(self) -> TrustBundle:
        return self._ca.bundle

    def list_svids(self, *, authority_id: str, spiffe_id: str = "") -> list[IssuedSvid]:
        """What ``authority_id`` signed (of ``spiffe_id``, if given), oldest first."""
        if not authority_id:
            raise InvalidArgument("authority_id is required")
        wanted = spiffe_id_filter(spiffe_id)
        store = self._ca.store
        try:
            self._ca.issuance_log.flush()  # what was just issued is listed too
            issuances = store.list_issuances(authority_id=authority_id, spiffe_id=wanted)
            revocations = {(r.target_kind, r.target): r for r in store.list_revocations()}
        except StoreError as exc:
            raise store_refusal(exc) from None
        return [IssuedSvid(i, covering_revocation(i, revocations)) for i in issuances]

    def _refuse_revoked(self, spiffe_id: str) -> None:
        """A revoked SPIFFE ID gets no new SVID until the revocation is lifted."""
        if self._revocations.blocks_issuance(spiffe_id):
            raise FailedPrecondition(
                f"{spiffe_id} is revoked: no new SVIDs until `authd unrevoke spiffe-id`"
            )

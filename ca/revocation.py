"""What is revoked, as an in-memory view for O(1) checks, and as CRLs for TLS verifiers.

The store holds the durable revocations (and, with Redis, shares them between replicas).
``RevocationView`` is what the hot path asks: sets of serials, SPIFFE IDs, entries and JWT
ids, rebuilt from the store on (re)connect and updated from changes in between. Revoking a
SPIFFE ID or an entry revokes every SVID it currently holds and blocks new issuance; the
CRLs list the serials of all of them, one CRL per live X.509 authority (the issuer of the
serials it lists), each with a nextUpdate that matches how often it is refreshed.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.errors import InvalidRequest
from ca.signers import X509Authority
from ca.store import IssuanceRecord, Revocation


class RevocationReason(enum.IntEnum):
    """RFC 5280 CRLReason (5.3.1); 7 is unused."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10

    @classmethod
    def parse(cls, text: str | int) -> RevocationReason:
        """Accept ``key-compromise``, ``keyCompromise``, ``KEY_COMPROMISE`` or ``1``."""
        if isinstance(text, int) or text.isdigit():
            try:
                return cls(int(text))
            except ValueError:
                pass
        else:
            wanted = text.replace("-", "").replace("_", "").lower()
            for reason in cls:
                if reason.name.replace("_", "").lower() == wanted:
                    return reason
        names = ", ".join(r.label for r in cls if r is not cls.REMOVE_FROM_CRL)
        raise InvalidRequest(f"unknown revocation reason {text!r}; use one of {names}")

    @property
    def crl_flag(self) -> x509.ReasonFlags:
        return _REASON_FLAGS[self]

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


_REASON_FLAGS = {
    RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    RevocationReason.REMOVE_FROM_CRL: x509.ReasonFlags.remove_from_crl,
    RevocationReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
    RevocationReason.AA_COMPROMISE: x509.ReasonFlags.aa_compromise,
}


@dataclass(frozen=True, slots=True)
class RevocationQuery:
    """What a revocation check is asked about one verified credential."""

    serial: str | None = None  # an X.509-SVID's serial, lowercase hex
    spiffe_id: str | None = None
    jti: str | None = None  # a JWT-SVID's token id


class RevocationView:
    """The revoked serials, SPIFFE IDs, entries and JWT ids, for O(1) lookups.

    Swapped whole on resynchronisation and edited in place for single changes; a lookup
    reads a few set memberships and takes no lock (membership tests and single adds or
    discards are atomic; nothing iterates the sets while they may change).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[str, set[str]] = {}
        self.synced_at: float | None = None
        self.load(())

    def load(self, revocations: Iterable[Revocation], *, at: float | None = None) -> None:
        sets: dict[str, set[str]] = {"serial": set(), "spiffe_id": set(), "entry": set()}
        sets["authority"] = set()
        sets["jti"] = set()
        for revocation in revocations:
            sets.setdefault(revocation.target_kind, set()).add(revocation.target)
        with self._lock:
            self._sets = sets
            if at is not None:
                self.synced_at = at

    def apply(self, kind: str, target: str, *, revoked: bool) -> None:
        # In place: set.add and set.discard are atomic, and copying a set of 100,000 serials
        # per change would make a burst of revocations crawl.
        with self._lock:
            values = self._sets.setdefault(kind, set())
            if revoked:
                values.add(target)
            else:
                values.discard(target)

    def is_revoked(self, query: RevocationQuery) -> bool:
        sets = self._sets
        return bool(
            (query.serial is not None and query.serial in sets["serial"])
            or (query.spiffe_id is not None and query.spiffe_id in sets["spiffe_id"])
            or (query.jti is not None and query.jti in sets["jti"])
        )

    def contains(self, kind: str, target: str) -> bool:
        return target in self._sets.get(kind, ())

    def count(self) -> int:
        return sum(len(values) for values in self._sets.values())


def build_crl(
    authority: X509Authority,
    revoked: Sequence[tuple[IssuanceRecord, Revocation]],
    *,
    now: float,
    next_update: float,
    number: int,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``authority`` listing the serials it issued that are revoked."""
    when = dt.datetime.fromtimestamp(int(now), tz=dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.certificate.subject)
        .last_update(when)
        .next_update(dt.datetime.fromtimestamp(int(next_update), tz=dt.UTC))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                authority.certificate.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
    )
    for issuance, revocation in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(issuance.serial, 16))
            .revocation_date(dt.datetime.fromtimestamp(revocation.revoked_at, tz=dt.UTC))
        )
        reason = RevocationReason(revocation.reason)
        if reason is not RevocationReason.UNSPECIFIED:
            entry = entry.add_extension(x509.CRLReason(reason.crl_flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(authority.key, authority.hash_algorithm)


def crl_pem(crls: Iterable[x509.CertificateRevocationList]) -> bytes:
    return b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)

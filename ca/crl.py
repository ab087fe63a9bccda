"""CRLs for TLS verifiers: one per live X.509 authority, listing the revoked serials it issued.

Each CRL is signed by the authority that issued the serials it lists, and carries a
nextUpdate that matches how often the revoker refreshes it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.authorities import X509Authority
from ca.revocation_view import RevocationReason
from ca.store import IssuanceRecord, Revocation


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

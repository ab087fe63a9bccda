"""Making a new authority: a fresh key in the key store and, for X.509, its signing certificate.

The certificate is self-signed, or signed by the upstream CA (then capped at the upstream's
own notAfter). The result is an ``AuthorityRecord`` for the timeline to persist; which state
it starts in is the caller's decision.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.keys import KeyStore, PrivateKey, key_type_of, signature_hash
from ca.settings import CASettings, UpstreamAuthority
from ca.spiffe_id import TrustDomain
from ca.store import AuthorityRecord
from ca.templates import authority_key_id_of, signing_certificate
from ca.x509svid import random_serial


def make_authority(
    kind: str,
    state: str,
    now: float,
    *,
    trust_domain: TrustDomain,
    settings: CASettings,
    keystore: KeyStore,
    upstream: UpstreamAuthority | None,
) -> AuthorityRecord:
    """A new ``kind`` (x509 or jwt) authority in ``state``, valid from ``now`` for ``ca_ttl``."""
    key_type = settings.key_type if kind == "x509" else settings.jwt_key_type
    key_ref, key = keystore.create(key_type, prefix=kind)
    public_key = key.public_key()
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    not_before = int(now)
    not_after = not_before + settings.ca_ttl
    certificate_der = b""
    chain: tuple[bytes, ...] = ()
    if kind == "x509":
        certificate = authority_certificate(
            key,
            not_before,
            not_after,
            trust_domain=trust_domain,
            subject=settings.subject,
            upstream=upstream,
        )
        not_after = int(certificate.not_valid_after_utc.timestamp())
        certificate_der = certificate.public_bytes(serialization.Encoding.DER)
        if upstream is not None:
            chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in upstream.chain)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()
    return AuthorityRecord(
        authority_id=ski,
        kind=kind,
        state=state,
        key_type=key_type_of(key),
        key_ref=key_ref,
        public_key_der=spki,
        certificate_der=certificate_der,
        upstream_chain_der=chain,
        not_before=not_before,
        not_after=not_after,
        created_at=not_before,
    )


def authority_certificate(
    key: PrivateKey,
    not_before: int,
    not_after: int,
    *,
    trust_domain: TrustDomain,
    subject: x509.Name,
    upstream: UpstreamAuthority | None,
) -> x509.Certificate:
    """The signing certificate of ``key``: self-signed, or issued by ``upstream``."""
    if upstream is not None:
        not_after = min(not_after, int(upstream.certificate.not_valid_after_utc.timestamp()))
    builder = signing_certificate(
        trust_domain=trust_domain,
        subject=subject,
        public_key=key.public_key(),
        issuer=None if upstream is None else upstream.certificate.subject,
        issuer_key_id=None if upstream is None else authority_key_id_of(upstream.certificate),
        serial=random_serial(),
        not_before=not_before,
        not_after=not_after,
    )
    signer = key if upstream is None else upstream.key
    return builder.sign(signer, signature_hash(signer))

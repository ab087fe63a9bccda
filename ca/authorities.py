"""Authorities in memory, ready to sign: a CA key with its certificate (X.509) or key id (JWT).

Built from a persisted ``AuthorityRecord`` plus the key from the key store. The state of an
authority on its timeline (prepared / active / retired) lives in the record; which one signs
is decided by ``ca.rotation``, never here. ``SigningAuthorities`` is one consistent snapshot
of them, swapped whole when the timeline changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ca.errors import InvalidRequest
from ca.keys import KeyStore, PrivateKey, PublicKey, signature_hash
from ca.rotation import ACTIVE
from ca.store.records import AuthorityRecord
from ca.templates import authority_key_id_extension, authority_key_id_of, signature_algorithm


@dataclass(frozen=True, slots=True)
class X509Authority:
    """An X.509 signing authority: signs leaf SVIDs with ``key`` as ``certificate``."""

    record: AuthorityRecord
    key: PrivateKey
    certificate: x509.Certificate
    # Intermediates between this authority and a root in the bundle (upstream CAs only).
    upstream_chain: tuple[x509.Certificate, ...] = ()
    # Encoded once, used by every leaf this authority signs.
    issuer_der: bytes = field(init=False)
    leaf_key_id: bytes = field(init=False)  # the encoded AKI extension of its leaves
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 = field(init=False)
    signature_algorithm: bytes = field(init=False)

    def __post_init__(self) -> None:
        key_id = authority_key_id_of(self.certificate).key_identifier
        assert key_id is not None
        digest = signature_hash(self.key)
        object.__setattr__(self, "issuer_der", self.certificate.subject.public_bytes())
        object.__setattr__(self, "leaf_key_id", authority_key_id_extension(key_id))
        object.__setattr__(self, "hash_algorithm", digest)
        object.__setattr__(self, "signature_algorithm", signature_algorithm(self.key, digest))

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` with this authority's key (ECDSA, or RSA PKCS#1 v1.5)."""
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(data, ec.ECDSA(self.hash_algorithm))
        return self.key.sign(data, padding.PKCS1v15(), self.hash_algorithm)

    @property
    def authority_id(self) -> str:
        return self.record.authority_id

    @property
    def not_after(self) -> int:
        return self.record.not_after

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """What follows a leaf in an SVID: the intermediates up to (not including) a root.

        A self-signed authority is itself a root in the bundle, so its leaves travel alone.
        """
        if self.is_self_signed:
            return ()
        return (self.certificate, *self.upstream_chain)

    @property
    def is_self_signed(self) -> bool:
        return not self.upstream_chain and self.certificate.issuer == self.certificate.subject


@dataclass(frozen=True, slots=True)
class JwtAuthority:
    """A JWT signing authority: signs JWT-SVIDs with ``key`` under key id ``kid``."""

    record: AuthorityRecord
    key: PrivateKey

    @property
    def kid(self) -> str:
        return self.record.authority_id

    @property
    def public_key(self) -> PublicKey:
        return self.key.public_key()

    @property
    def not_after(self) -> int:
        return self.record.not_after


_NOT_HERE = (
    "no active {kind} authority with its key here (authorities are made and held by the "
    "replica with ca.rotates = true; issue there, or give every replica the same "
    "ca.key_encryption_key so that all of them sign)"
)


@dataclass(frozen=True, slots=True)
class SigningAuthorities:
    """The authorities this replica can sign with: those whose keys its key store holds."""

    x509_active: X509Authority | None = None
    jwt_active: JwtAuthority | None = None
    x509_live: tuple[X509Authority, ...] = ()  # every unrevoked X.509 one, in record order

    @classmethod
    def load(
        cls,
        x509_records: Sequence[AuthorityRecord],
        jwt_records: Sequence[AuthorityRecord],
        keystore: KeyStore,
    ) -> SigningAuthorities:
        """The unrevoked authorities of ``x509_records`` and ``jwt_records`` with a key here.

        A replica without the keys (a decision point sharing the store with the CA replica)
        gets an empty set: it serves the bundle and verifies, but does not sign.
        """
        live: list[X509Authority] = []
        x509_active: X509Authority | None = None
        for record in x509_records:
            if record.revoked:
                continue
            key = keystore.load_if_present(record.key_ref)
            if key is None:
                continue
            authority = X509Authority(
                record,
                key,
                x509.load_der_x509_certificate(record.certificate_der),
                tuple(x509.load_der_x509_certificate(d) for d in record.upstream_chain_der),
            )
            live.append(authority)
            if record.state == ACTIVE:
                x509_active = authority
        jwt_active: JwtAuthority | None = None
        for record in jwt_records:
            if record.revoked or record.state != ACTIVE:
                continue
            key = keystore.load_if_present(record.key_ref)
            if key is not None:
                jwt_active = JwtAuthority(record, key)
        return cls(x509_active, jwt_active, tuple(live))

    @property
    def x509(self) -> X509Authority:
        """The active X.509 authority; InvalidRequest if this replica cannot sign with it."""
        if self.x509_active is None:
            raise InvalidRequest(_NOT_HERE.format(kind="X.509"))
        return self.x509_active

    @property
    def jwt(self) -> JwtAuthority:
        """The active JWT authority; InvalidRequest if this replica cannot sign with it."""
        if self.jwt_active is None:
            raise InvalidRequest(_NOT_HERE.format(kind="JWT"))
        return self.jwt_active

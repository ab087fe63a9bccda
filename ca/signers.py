"""Signing authorities in memory: a CA key with its certificate (X.509) or key id (JWT).

Built from a persisted ``AuthorityRecord`` plus the key from the key store. The state of an
authority on its timeline (prepared / active / retired) lives in the record; which one signs
is decided by ``ca.rotation``, never here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ca.keys import PrivateKey, PublicKey, signature_hash
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

"""Certificate templates as plain functions: what a leaf SVID and a signing certificate get.

Leaves are encoded straight to DER (``ca.der``), since they are issued thousands of times a
second; signing certificates are rare and use pyca's builder.

Nothing here signs, stores or reads a clock; callers pass times and keys in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca import der
from ca.keys import PrivateKey, PublicKey
from ca.spiffe_id import SpiffeId, TrustDomain

MAX_COMMON_NAME = 64  # RFC 5280 ub-common-name; longer DNS names stay in the SAN only

# Backdate notBefore so a peer whose clock runs a little behind still accepts a fresh SVID.
BACKDATE_SECONDS = 10

_CA_CONSTRAINTS = x509.BasicConstraints(ca=True, path_length=None)
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(timestamp), tz=dt.UTC)


_OID_BASIC_CONSTRAINTS = der.oid("2.5.29.19")
_OID_KEY_USAGE = der.oid("2.5.29.15")
_OID_EXT_KEY_USAGE = der.oid("2.5.29.37")
_OID_SAN = der.oid("2.5.29.17")
_OID_SKI = der.oid("2.5.29.14")
_OID_AKI = der.oid("2.5.29.35")
_SERVER_AUTH = der.oid("1.3.6.1.5.5.7.3.1")
_CLIENT_AUTH = der.oid("1.3.6.1.5.5.7.3.2")

# keyUsage bits (RFC 5280 4.2.1.3), DER named bit strings with trailing zeros dropped:
# EC leaves: digitalSignature + keyAgreement (bits 0, 4); RSA: digitalSignature + keyEncipherment
# (bits 0, 2). Never keyCertSign or cRLSign.
_EC_LEAF_KEY_USAGE = der.bit_string(b"\x88", unused_bits=3)
_RSA_LEAF_KEY_USAGE = der.bit_string(b"\xa0", unused_bits=5)
_LEAF_BASIC_CONSTRAINTS = der.extension(_OID_BASIC_CONSTRAINTS, der.sequence(), critical=True)
_LEAF_EKU = der.extension(
    _OID_EXT_KEY_USAGE, der.sequence(_SERVER_AUTH, _CLIENT_AUTH), critical=False
)
_EC_LEAF_FIXED_EXTENSIONS = (
    _LEAF_BASIC_CONSTRAINTS
    + der.extension(_OID_KEY_USAGE, _EC_LEAF_KEY_USAGE, critical=True)
    + _LEAF_EKU
)
_RSA_LEAF_FIXED_EXTENSIONS = (
    _LEAF_BASIC_CONSTRAINTS
    + der.extension(_OID_KEY_USAGE, _RSA_LEAF_KEY_USAGE, critical=True)
    + _LEAF_EKU
)
_EMPTY_NAME = der.sequence()
_SIGNATURE_ALGORITHMS = {
    ("ec", "sha256"): der.sequence(der.oid("1.2.840.10045.4.3.2")),
    ("ec", "sha384"): der.sequence(der.oid("1.2.840.10045.4.3.3")),
    ("ec", "sha512"): der.sequence(der.oid("1.2.840.10045.4.3.4")),
    ("rsa", "sha256"): der.sequence(der.oid("1.2.840.113549.1.1.11"), b"\x05\x00"),
    ("rsa", "sha384"): der.sequence(der.oid("1.2.840.113549.1.1.12"), b"\x05\x00"),
    ("rsa", "sha512"): der.sequence(der.oid("1.2.840.113549.1.1.13"), b"\x05\x00"),
}
_VERSION_3 = der.explicit(0, der.integer(2))


def signature_algorithm(key: PrivateKey, digest: hashes.HashAlgorithm) -> bytes:
    """The DER AlgorithmIdentifier of a signature made by ``key`` over ``digest``."""
    family = "ec" if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa"
    return _SIGNATURE_ALGORITHMS[(family, digest.name)]


def leaf_svid_tbs(
    *,
    spiffe_id: SpiffeId,
    dns_names: Sequence[str],
    public_key: PublicKey,
    issuer: x509.Name,
    issuer_der: bytes,
    authority_key_id: bytes,
    signature_algorithm: bytes,
    serial: int,
    not_before: float,
    not_after: float,
) -> bytes:
    """The TBSCertificate of an X.509-SVID leaf, DER-encoded.

    One URI SAN (the SPIFFE ID) then the DNS names; basicConstraints cA=false (critical);
    keyUsage digitalSignature plus what the key type needs (critical); EKU serverAuth and
    clientAuth; SKI and AKI (``authority_key_id``: the encoded extension, see
    ``authority_key_id_extension``). The subject is the issuer's with the first DNS name, if
    any, as CN.
    """
    subject_der = issuer_der
    if dns_names and len(dns_names[0]) <= MAX_COMMON_NAME:
        cn = x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])
        subject_der = x509.Name([*issuer, cn]).public_bytes()
    names = der.implicit(6, str(spiffe_id).encode("ascii")) + b"".join(
        der.implicit(2, name.encode("ascii")) for name in dns_names
    )
    is_ec = isinstance(public_key, ec.EllipticCurvePublicKey)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key).digest
    extensions = der.sequence(
        _EC_LEAF_FIXED_EXTENSIONS if is_ec else _RSA_LEAF_FIXED_EXTENSIONS,
        # SPIFFE: if the subject is empty the SAN extension must be critical.
        der.extension(_OID_SAN, der.sequence(names), critical=subject_der == _EMPTY_NAME),
        der.extension(_OID_SKI, der.octet_string(ski), critical=False),
        authority_key_id,
    )
    return der.sequence(
        _VERSION_3,
        der.integer(serial),
        signature_algorithm,
        issuer_der,
        der.sequence(der.time(utc(not_before - BACKDATE_SECONDS)), der.time(utc(not_after))),
        subject_der,
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        der.explicit(3, extensions),
    )


def authority_key_id_extension(key_identifier: bytes) -> bytes:
    """The encoded AKI extension of certificates signed by the key with ``key_identifier``."""
    return der.extension(_OID_AKI, der.sequence(der.implicit(0, key_identifier)), critical=False)


def certificate(tbs: bytes, signature_algorithm: bytes, signature: bytes) -> bytes:
    """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }."""
    return der.sequence(tbs, signature_algorithm, der.bit_string(signature))


def signing_certificate(
    *,
    trust_domain: TrustDomain,
    subject: x509.Name,
    public_key: PublicKey,
    issuer: x509.Name | None,
    issuer_key_id: x509.AuthorityKeyIdentifier | None,
    serial: int,
    not_before: float,
    not_after: float,
) -> x509.CertificateBuilder:
    """A signing (CA) certificate: cA=true, keyCertSign+cRLSign, SAN = the trust domain ID.

    ``issuer`` None makes it self-signed (a root); otherwise it is an intermediate under an
    upstream CA, identified by ``issuer_key_id``.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(utc(not_before - BACKDATE_SECONDS))
        .not_valid_after(utc(not_after))
        .add_extension(_CA_CONSTRAINTS, critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(trust_domain.id))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer_key_id is None:
        issuer_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return builder.add_extension(issuer_key_id, critical=False)


def authority_key_id_of(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI a certificate signed by ``issuer`` carries: the issuer's own SKI when it has one."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = issuer.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

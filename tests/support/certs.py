"""Certificates as a PKI other than authd would make them: upstream and foreign roots."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

# What a CA certificate may do: sign certificates and CRLs, nothing else (RFC 5280 4.2.1.3).
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def make_root(
    private_key: Any,
    *,
    common_name: str | x509.Name,
    not_before: float,
    not_after: float,
    issuer: tuple[x509.Certificate, Any] | None = None,
) -> x509.Certificate:
    """A CA certificate as an upstream PKI would make it (self-signed unless ``issuer``)."""
    subject = (
        common_name
        if isinstance(common_name, x509.Name)
        else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    public_key = private_key.public_key()
    if issuer is None:
        issuer_name, signer = subject, private_key
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    else:
        issuer_cert, signer = issuer
        issuer_name = issuer_cert.subject
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(not_before, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(not_after, tz=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
        .sign(signer, hashes.SHA256())
    )

"""x509pop node attestation: proof of possession of a certificate chained to a configured CA.

As SPIRE's ``x509pop``: the agent presents its node certificate (and intermediates), the
server checks the chain to one of the configured roots, sends a random nonce, and the agent
signs it with the certificate's key. The agent's ID is derived from the certificate's
SHA-1 fingerprint (``spiffe://<td>/authd/agent/x509pop/<hex>``), as SPIRE does. Pure
functions: no sockets, no store.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

__all__ = [
    "METHOD",
    "X509PopError",
    "agent_path",
    "challenge_message",
    "new_nonce",
    "sign_challenge",
    "verify_chain",
    "verify_response",
]

METHOD = "x509pop"
NONCE_BYTES = 32
MAX_CHAIN = 8
_PREFIX = b"authd-x509pop-v1:"


class X509PopError(Exception):
    """The node certificate or its proof is refused; the message says why."""


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def challenge_message(nonce: bytes) -> bytes:
    return _PREFIX + nonce


def agent_path(leaf: x509.Certificate) -> str:
    """The ``<id>`` of the agent's SPIFFE ID: the certificate's SHA-1 fingerprint, hex."""
    return leaf.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - an identifier, as SPIRE's


def verify_chain(
    chain_der: Sequence[bytes], roots: Sequence[x509.Certificate], now: float
) -> x509.Certificate:
    """The node certificate (first of ``chain_der``) once it chains to one of ``roots``."""
    if not chain_der:
        raise X509PopError("no node certificate")
    if len(chain_der) > MAX_CHAIN:
        raise X509PopError(f"at most {MAX_CHAIN} certificates in the chain")
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as exc:
        raise X509PopError(f"unreadable certificate: {exc}") from None
    moment = datetime.fromtimestamp(now, UTC)
    for cert in chain:
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            raise X509PopError("a certificate of the chain is not valid now")
    leaf = chain[0]
    _check_leaf_usage(leaf)
    current = leaf
    candidates = chain[1:]
    for _ in range(MAX_CHAIN + 1):
        for root in roots:
            if _issued_by(current, root):
                return leaf
        issuer = next((c for c in candidates if _issued_by(current, c) and _is_ca(c)), None)
        if issuer is None:
            raise X509PopError("the node certificate does not chain to the x509pop CA")
        candidates = [c for c in candidates if c is not issuer]
        current = issuer
    raise X509PopError("the node certificate does not chain to the x509pop CA")


def verify_response(leaf: x509.Certificate, nonce: bytes, signature: bytes) -> None:
    """Raise unless ``signature`` is the leaf key's signature of the challenge for ``nonce``."""
    key = leaf.public_key()
    message = challenge_message(nonce)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(
                signature,
                message,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                hashes.SHA256(),
            )
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            raise X509PopError("unsupported node key type")
    except InvalidSignature:
        raise X509PopError("the challenge signature does not verify") from None


def sign_challenge(key: object, nonce: bytes) -> bytes:
    """The agent's answer: ``key`` (the node certificate's private key) signs the challenge."""
    message = challenge_message(nonce)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(
            message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
        )
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    raise X509PopError("unsupported node key type")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_leaf_usage(leaf: x509.Certificate) -> None:
    if _is_ca(leaf):
        raise X509PopError("the node certificate is a CA certificate")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.digital_signature:
        raise X509PopError("the node certificate's key usage lacks digitalSignature")

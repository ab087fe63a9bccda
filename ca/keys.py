"""Key types the CA accepts, key generation, and the on-disk key store (files 0600)."""

from __future__ import annotations

import enum
import os
import re
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from ca.errors import InvalidRequest

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

MIN_RSA_BITS = 2048
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
    "secp521r1": ec.SECP521R1,
}


class KeyType(enum.Enum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_4096 = "rsa-4096"

    @classmethod
    def parse(cls, text: str) -> KeyType:
        try:
            return cls(text)
        except ValueError:
            allowed = ", ".join(k.value for k in cls)
            raise InvalidRequest(f"unknown key type {text!r}; use one of {allowed}") from None

    def generate(self) -> PrivateKey:
        if self is KeyType.EC_P256:
            return ec.generate_private_key(ec.SECP256R1())
        if self is KeyType.EC_P384:
            return ec.generate_private_key(ec.SECP384R1())
        bits = 2048 if self is KeyType.RSA_2048 else 4096
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_type_of(key: PrivateKey | PublicKey) -> str:
    """A short label such as ``ec-p256`` or ``rsa-3072`` for display and records."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return {"secp256r1": "ec-p256", "secp384r1": "ec-p384", "secp521r1": "ec-p521"}.get(
            key.curve.name, f"ec-{key.curve.name}"
        )
    return f"rsa-{key.key_size}"


def check_public_key(key: CertificatePublicKeyTypes) -> PublicKey:
    """Refuse keys we will not certify: RSA below 2048 bits, curves other than P-256/384/521."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidRequest(
                f"RSA key of {key.key_size} bits is too weak; at least {MIN_RSA_BITS} required"
            )
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise InvalidRequest(
                f"elliptic curve {key.curve.name} is not supported; use P-256, P-384 or P-521"
            )
        return key
    raise InvalidRequest(
        f"{type(key).__name__.removeprefix('_')} keys are not supported; use an EC or RSA key"
    )


def signature_hash(
    key: CertificateIssuerPrivateKeyTypes,
) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """The digest a CA key signs with: SHA-384 for P-384, SHA-512 for P-521, else SHA-256."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name == "secp384r1":
            return hashes.SHA384()
        if key.curve.name == "secp521r1":
            return hashes.SHA512()
    return hashes.SHA256()


class KeyStore:
    """CA private keys as PKCS#8 PEM files, mode 0600, in a 0700 directory.

    Keys are referred to by an opaque name; they never leave this object except to sign.
    """

    _NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)

    def create(self, key_type: KeyType, prefix: str = "key") -> tuple[str, PrivateKey]:
        """Generate a key, persist it, and return its name and the key."""
        key = key_type.generate()
        name = f"{prefix}-{secrets.token_hex(8)}"
        self.put(name, key)
        return name, key

    def put(self, name: str, key: PrivateKey) -> None:
        path = self._path(name)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def load(self, name: str) -> PrivateKey:
        path = self._path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidRequest(f"CA key {name!r} is missing from {self.directory}") from None
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise InvalidRequest(f"CA key {name!r} is of an unsupported type")
        return key

    def load_if_present(self, name: str) -> PrivateKey | None:
        """The key, or None when this key store does not hold it (another replica's)."""
        if not self._path(name).exists():
            return None
        return self.load(name)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def _path(self, name: str) -> Path:
        if not self._NAME.fullmatch(name):
            raise InvalidRequest(f"invalid key name {name!r}")
        return self.directory / f"{name}.pem"

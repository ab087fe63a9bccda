"""Wrapping authority keys with a key-encryption key (KEK) the replicas share.

Envelope encryption as KMS and Vault do it: the authority key (PKCS#8 DER) is sealed with
AES-256-GCM under the KEK, with the key's name and the KEK's id as associated data, so a
wrapped key moved to another name, or opened with another KEK, fails loudly instead of
yielding a wrong key. The KEK itself is 32 random bytes, kept by each replica in a 0600 file
(written as 64 hex digits); the store only ever holds ciphertext.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ca.errors import InvalidRequest
from ca.keys import PrivateKey

KEK_BYTES = 32
_VERSION = b"\x01"
_ID_BYTES = 8
_NONCE_BYTES = 12


class KeyUnwrapError(InvalidRequest):
    """A wrapped key could not be opened: another KEK, another name, or damage."""


class KeyEncryptionKey:
    """The replicas' shared KEK; never printed (its ``kek_id`` names it)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEK_BYTES:
            raise InvalidRequest(f"a key-encryption key is {KEK_BYTES} bytes, not {len(secret)}")
        self._aead = AESGCM(secret)
        self.kek_id = hashlib.sha256(b"authd-kek-id\x00" + secret).digest()[:_ID_BYTES]

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(id={self.kek_id.hex()})"

    @classmethod
    def generate(cls) -> bytes:
        """A new KEK's file content: 64 hex digits and a newline."""
        return secrets.token_hex(KEK_BYTES).encode("ascii") + b"\n"

    @classmethod
    def load(cls, path: Path) -> KeyEncryptionKey:
        """The KEK in ``path`` (64 hex digits); refused unless the file is private (0600)."""
        try:
            info = path.stat()
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeError) as exc:
            raise InvalidRequest(f"cannot read the key-encryption key {path}: {exc}") from None
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise InvalidRequest(
                f"the key-encryption key {path} is readable by others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it"
            )
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            secret = b""
        if len(secret) != KEK_BYTES:
            raise InvalidRequest(
                f"the key-encryption key {path} must hold {2 * KEK_BYTES} hex digits"
            )
        return cls(secret)

    def wrap(self, key: PrivateKey, *, key_ref: str) -> bytes:
        """``key`` sealed for the store under the name ``key_ref``."""
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, der, self._associated(key_ref))
        return _VERSION + self.kek_id + nonce + sealed

    def unwrap(self, wrapped: bytes, *, key_ref: str) -> PrivateKey:
        """The key sealed in ``wrapped`` for ``key_ref``; ``KeyUnwrapError`` naming why not."""
        head = 1 + _ID_BYTES + _NONCE_BYTES
        if len(wrapped) <= head or wrapped[:1] != _VERSION:
            raise KeyUnwrapError(f"the wrapped CA key {key_ref!r} is not in a known format")
        kek_id, nonce, sealed = (
            wrapped[1 : 1 + _ID_BYTES],
            wrapped[1 + _ID_BYTES : head],
            wrapped[head:],
        )
        if kek_id != self.kek_id:
            raise KeyUnwrapError(
                f"the CA key {key_ref!r} is wrapped with key-encryption key {kek_id.hex()}, "
                f"this replica holds {self.kek_id.hex()}: give every replica the same "
                "ca.key_encryption_key"
            )
        try:
            der = self._aead.decrypt(nonce, sealed, self._associated(key_ref))
        except InvalidTag:
            raise KeyUnwrapError(
                f"the wrapped CA key {key_ref!r} fails its integrity check (damaged, or "
                "stored under another name)"
            ) from None
        key = serialization.load_der_private_key(der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise KeyUnwrapError(f"the wrapped CA key {key_ref!r} is of an unsupported type")
        return key

    def _associated(self, key_ref: str) -> bytes:
        return b"authd-ca-key\x00" + self.kek_id + b"\x00" + key_ref.encode("utf-8")

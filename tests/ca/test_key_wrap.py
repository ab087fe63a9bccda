"""Authority keys wrapped with the replicas' key-encryption key: only the same KEK and name
open them, and anything else read from the store ends in one clear error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from ca.errors import InvalidRequest
from ca.key_wrap import KEK_BYTES, KeyEncryptionKey, KeyUnwrapError

KEK = KeyEncryptionKey(b"\x01" * KEK_BYTES)
KEY = ec.generate_private_key(ec.SECP256R1())


def test_a_wrapped_key_opens_with_the_same_kek_and_name() -> None:
    wrapped = KEK.wrap(KEY, key_ref="x509-0011")
    assert KEK.unwrap(wrapped, key_ref="x509-0011").private_numbers() == KEY.private_numbers()


def test_the_wrapped_form_does_not_contain_the_key() -> None:
    der = KEY.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    secret = KEY.private_numbers().private_value.to_bytes(32, "big")
    wrapped = KEK.wrap(KEY, key_ref="k")
    assert der not in wrapped and secret not in wrapped


def test_another_kek_is_refused_naming_both_kek_ids() -> None:
    other = KeyEncryptionKey(b"\x02" * KEK_BYTES)
    with pytest.raises(KeyUnwrapError, match=f"{KEK.kek_id.hex()}.*{other.kek_id.hex()}"):
        other.unwrap(KEK.wrap(KEY, key_ref="k"), key_ref="k")


def test_a_wrapped_key_moved_to_another_name_is_refused() -> None:
    with pytest.raises(KeyUnwrapError, match="integrity"):
        KEK.unwrap(KEK.wrap(KEY, key_ref="jwt-1"), key_ref="jwt-2")


def test_a_flipped_bit_is_refused() -> None:
    wrapped = bytearray(KEK.wrap(KEY, key_ref="k"))
    wrapped[-1] ^= 1
    with pytest.raises(KeyUnwrapError, match="integrity"):
        KEK.unwrap(bytes(wrapped), key_ref="k")


@given(st.binary(max_size=400))
def test_any_bytes_from_the_store_unwrap_or_fail_with_one_error(data: bytes) -> None:
    with pytest.raises(KeyUnwrapError):
        KEK.unwrap(data, key_ref="k")


def test_the_kek_file_is_64_hex_digits_and_private(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, KeyEncryptionKey.generate())
    os.close(fd)
    kek = KeyEncryptionKey.load(path)
    assert kek.kek_id.hex() in repr(kek)
    path.chmod(0o644)
    with pytest.raises(InvalidRequest, match=r"readable by others.*chmod 600"):
        KeyEncryptionKey.load(path)
    path.chmod(0o600)
    path.write_text("not hex")
    with pytest.raises(InvalidRequest, match="64 hex digits"):
        KeyEncryptionKey.load(path)
    with pytest.raises(InvalidRequest, match="cannot read"):
        KeyEncryptionKey.load(tmp_path / "missing")

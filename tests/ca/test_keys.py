"""Key types, the public keys we certify, and the on-disk key store (0600 files, 0700 dir)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.errors import InvalidRequest
from ca.keys import KeyStore, KeyType, check_public_key, key_type_of, signature_hash


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


# --- key types --------------------------------------------------------------------------


def test_unknown_key_type_error_lists_the_allowed_types() -> None:
    with pytest.raises(InvalidRequest) as caught:
        KeyType.parse("ed25519")
    assert str(caught.value) == (
        "unknown key type 'ed25519'; use one of ec-p256, ec-p384, rsa-2048, rsa-4096"
    )


@pytest.mark.parametrize("text", ["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"])
def test_key_type_parses_its_own_names(text: str) -> None:
    assert KeyType.parse(text).value == text


@pytest.mark.parametrize("text", ["EC-P256", "p256", "rsa-1024", ""])
def test_key_type_names_are_exact(text: str) -> None:
    with pytest.raises(InvalidRequest, match="unknown key type"):
        KeyType.parse(text)


@pytest.mark.parametrize(
    ("key_type", "label"),
    [(KeyType.EC_P256, "ec-p256"), (KeyType.EC_P384, "ec-p384"), (KeyType.RSA_2048, "rsa-2048")],
)
def test_generated_key_matches_its_type(key_type: KeyType, label: str) -> None:
    private_key = key_type.generate()
    assert key_type_of(private_key) == label
    assert key_type_of(private_key.public_key()) == label


@pytest.mark.parametrize(
    ("name", "label"),
    [("P-521", "ec-p521"), ("RSA-3072", "rsa-3072"), ("secp256k1", "ec-secp256k1")],
)
def test_key_type_of_labels_other_keys(key: Any, name: str, label: str) -> None:
    assert key_type_of(key(name)) == label


@pytest.mark.parametrize(
    ("name", "digest"),
    [("P-256", "sha256"), ("P-384", "sha384"), ("P-521", "sha512"), ("RSA-2048", "sha256")],
)
def test_signature_hash_follows_the_key_strength(key: Any, name: str, digest: str) -> None:
    assert signature_hash(key(name)).name == digest


# --- public keys we certify -------------------------------------------------------------


@pytest.mark.parametrize("name", ["P-256", "P-384", "P-521", "RSA-2048", "RSA-3072"])
def test_check_public_key_accepts_strong_ec_and_rsa_keys(key: Any, name: str) -> None:
    public_key = key(name).public_key()
    assert check_public_key(public_key) is public_key
    assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("RSA-1024", "RSA key of 1024 bits is too weak; at least 2048 required"),
        ("secp256k1", "elliptic curve secp256k1 is not supported; use P-256, P-384 or P-521"),
        ("Ed25519", "Ed25519PublicKey keys are not supported; use an EC or RSA key"),
    ],
)
def test_check_public_key_refuses_weak_or_unsupported_keys(
    key: Any, name: str, message: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_public_key(key(name).public_key())
    assert str(caught.value) == message


# --- the key store ----------------------------------------------------------------------


def test_key_store_creates_its_directory_0700(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "a" / "keys")
    assert mode_of(store.directory) == 0o700


def test_key_store_tightens_an_existing_directory_to_0700(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    KeyStore(directory)
    assert mode_of(directory) == 0o700


def test_key_store_files_are_0600_even_with_a_permissive_umask(
    tmp_path: Path, permissive_umask: None
) -> None:
    store = KeyStore(tmp_path / "keys")
    name, _ = store.create(KeyType.EC_P256, prefix="x509")
    path = store.directory / f"{name}.pem"
    assert mode_of(path) == 0o600
    assert mode_of(store.directory) == 0o700
    assert sorted(p.name for p in store.directory.iterdir()) == [f"{name}.pem"]  # no temp left


def test_key_store_round_trips_keys_as_unencrypted_pkcs8(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    for key_type in (KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048):
        name, private_key = store.create(key_type, prefix="jwt")
        assert name.startswith("jwt-")
        pem = (store.directory / f"{name}.pem").read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        loaded = store.load(name)
        assert loaded.private_numbers() == private_key.private_numbers()


def test_key_store_put_replaces_a_key(tmp_path: Path, key: Any) -> None:
    store = KeyStore(tmp_path / "keys")
    store.put("k1", key("P-256"))
    store.put("k1", key("P-384"))
    assert key_type_of(store.load("k1")) == "ec-p384"
    assert mode_of(store.directory / "k1.pem") == 0o600


def test_key_store_names_are_unique(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    names = {store.create(KeyType.EC_P256)[0] for _ in range(20)}
    assert len(names) == 20


def test_key_store_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    with pytest.raises(InvalidRequest, match=r"CA key 'gone' is missing from .*keys"):
        store.load("gone")


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "x" * 129, "white space", "ключ"])
def test_key_store_refuses_names_that_could_leave_the_directory(tmp_path: Path, name: str) -> None:
    store = KeyStore(tmp_path / "keys")
    with pytest.raises(InvalidRequest, match="invalid key name"):
        store.load(name)
    with pytest.raises(InvalidRequest, match="invalid key name"):
        store.delete(name)


def test_key_store_delete_removes_the_file_and_tolerates_absence(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    name, _ = store.create(KeyType.EC_P256)
    store.delete(name)
    assert not (store.directory / f"{name}.pem").exists()
    store.delete(name)
    with pytest.raises(InvalidRequest, match="is missing"):
        store.load(name)

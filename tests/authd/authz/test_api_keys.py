"""API keys: only hashes are stored, lookups compare every hash in constant time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authd.authz import api_keys
from authd.authz.api_keys import ApiKeyEntry, ApiKeyStore, hash_api_key
from authd.config.errors import ConfigError

CI_KEY = "ak_7Hq2c9VtY3mK0pLr8sXw"
DEPLOY_KEY = "ak_Zz41bNw0QeT6uJd2hGfA"


def write_keys(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "api-keys.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_hash_api_key_is_the_lowercase_hex_sha256_of_the_utf8_key():
    assert hash_api_key("test") == (
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    )
    assert hash_api_key("clé") == hashlib.sha256("clé".encode()).hexdigest()


def test_store_loaded_from_toml_finds_keys_by_name(tmp_path):
    path = write_keys(
        tmp_path,
        f"""
[[keys]]
name = "ci-bot"
sha256 = "{hash_api_key(CI_KEY)}"

[[keys]]
name = "deployer"
sha256 = "{hash_api_key(DEPLOY_KEY).upper()}"
""",
    )
    store = ApiKeyStore.load(path)
    assert store.names == ("ci-bot", "deployer")
    assert store.lookup(CI_KEY) == "ci-bot"
    assert store.lookup(DEPLOY_KEY) == "deployer"  # upper-case hex in the file is fine
    assert store.lookup(CI_KEY + "x") is None
    assert store.lookup("") is None


def test_the_file_never_holds_the_keys_themselves(tmp_path):
    path = write_keys(tmp_path, f'[[keys]]\nname = "ci"\nsha256 = "{CI_KEY}"\n')
    with pytest.raises(ConfigError) as raised:
        ApiKeyStore.load(path)
    assert raised.value.key == "keys[0].sha256"
    assert CI_KEY not in str(raised.value)


def test_lookup_compares_against_every_stored_hash_even_after_a_match(monkeypatch):
    store = ApiKeyStore([ApiKeyEntry(f"key-{i}", hash_api_key(f"secret-{i}")) for i in range(5)])
    compared: list[tuple[bytes, bytes]] = []
    real = api_keys.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_keys.hmac, "compare_digest", counting)
    assert store.lookup("secret-0") == "key-0"  # the first entry matches...
    assert len(compared) == 5  # ...and all five are still compared
    assert all(isinstance(a, bytes) and len(a) == len(b) == 32 for a, b in compared)
    compared.clear()
    assert store.lookup("nobody") is None
    assert len(compared) == 5


@given(st.text(min_size=1), st.text(min_size=1))
def test_a_key_finds_its_entry_and_no_other_text_does(key, other):
    store = ApiKeyStore([ApiKeyEntry("k", hash_api_key(key))])
    assert store.lookup(key) == "k"
    assert store.lookup(other) == ("k" if other == key else None)


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ('[[keys]]\nname = "a"\nsha256 = "abc"\n', "keys[0].sha256", "64"),
        ('[[keys]]\nsha256 = "{h}"\n', "keys[0].name", "non-empty"),
        ('[[keys]]\nname = ""\nsha256 = "{h}"\n', "keys[0].name", "non-empty"),
        ('[[keys]]\nname = "a"\nsha256 = 5\n', "keys[0].sha256", "string"),
        ('[[keys]]\nname = "a"\nsha256 = "{h}"\nscope = "admin"\n', "keys[0].scope", "unknown"),
        (
            '[[keys]]\nname = "a"\nsha256 = "{h}"\n[[keys]]\nname = "a"\nsha256 = "{g}"\n',
            "keys[1].name",
            "already keys[0]",
        ),
        (
            '[[keys]]\nname = "a"\nsha256 = "{h}"\n[[keys]]\nname = "b"\nsha256 = "{h}"\n',
            "keys",
            "same hash",
        ),
        ('keys = "all"\n', "keys", "array of tables"),
        ('[[key]]\nname = "a"\n', "key", "unknown table"),
        ("[[keys]\n", "", "invalid TOML"),
    ],
)
def test_bad_key_files_name_the_entry_that_is_wrong(tmp_path, text, key, why):
    path = write_keys(tmp_path, text.format(h=hash_api_key(CI_KEY), g=hash_api_key(DEPLOY_KEY)))
    with pytest.raises(ConfigError) as raised:
        ApiKeyStore.load(path)
    assert raised.value.key == key
    assert why in raised.value.why
    assert raised.value.source == str(path)


def test_missing_key_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        ApiKeyStore.load(tmp_path / "absent.toml")


def test_empty_file_is_an_empty_store(tmp_path):
    store = ApiKeyStore.load(write_keys(tmp_path, ""))
    assert len(store) == 0
    assert store.lookup(CI_KEY) is None

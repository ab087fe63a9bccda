"""API keys: named secrets whose SHA-256 is all authd ever stores.

The file is TOML, one ``[[keys]]`` table per key::

    [[keys]]
    name = "ci-bot"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

``hash_api_key`` gives the hex digest to put there. A leaked file does not leak the keys;
API keys are long random strings, so an unsalted fast hash is enough (there is nothing to
guess a dictionary of).
"""

from __future__ import annotations

import hashlib
import hmac
import string
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authd.config.errors import ConfigError

_ENTRY_FIELDS = frozenset({"name", "sha256"})


def hash_api_key(key: str) -> str:
    """The lowercase hex SHA-256 of ``key`` (UTF-8): what the key file stores."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    """A named API key, known only by its SHA-256 (64 lowercase hex digits)."""

    name: str
    sha256: str

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        if len(self.sha256) != 64 or not set(self.sha256) <= set(string.hexdigits.lower()):
            raise ValueError("sha256 must be 64 lowercase hex digits (see hash_api_key)")


class ApiKeyStore:
    """The API keys authd accepts; ``lookup`` says which one (by name) a presented key is."""

    def __init__(self, entries: Iterable[ApiKeyEntry]) -> None:
        self._entries: tuple[tuple[bytes, str], ...] = ()
        names: set[str] = set()
        digests: set[bytes] = set()
        for entry in entries:
            digest = bytes.fromhex(entry.sha256)
            if entry.name in names:
                raise ValueError(f"API key name {entry.name!r} is used twice")
            if digest in digests:
                raise ValueError(f"API key {entry.name!r} has the same hash as another key")
            names.add(entry.name)
            digests.add(digest)
            self._entries += ((digest, entry.name),)

    @classmethod
    def load(cls, path: Path) -> ApiKeyStore:
        """Read a key file; a bad entry raises ConfigError naming it (``keys[2].sha256``)."""
        source = str(path)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("", f"cannot read the API key file: {exc.strerror}", source) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("", f"invalid TOML: {exc}", source) from None
        entries = _entries_of(document, source)
        try:
            return cls(entries)
        except ValueError as exc:  # two entries share a hash
            raise ConfigError("keys", str(exc), source) from None

    def lookup(self, presented: str) -> str | None:
        """The name of the key ``presented`` is, or None.

        Every stored hash is compared, with ``hmac.compare_digest``, whatever matched
        earlier, so the time taken says nothing about which entry (if any) matched. A dict
        keyed by the hash would be safe too: its timing could reveal only how a digest of
        the guess relates to stored digests, which does not help to find a key (preimage
        resistance). The loop is chosen because key lists are short (~0.1 µs per entry)
        and it leaves nothing to argue about.
        """
        digest = hashlib.sha256(presented.encode(errors="surrogatepass")).digest()
        found: str | None = None
        for stored, name in self._entries:
            if hmac.compare_digest(stored, digest):
                found = name
        return found

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _entries_of(document: Mapping[str, Any], source: str) -> list[ApiKeyEntry]:
    unknown = sorted(set(document) - {"keys"})
    if unknown:
        raise ConfigError(unknown[0], "unknown table; the file holds [[keys]] only", source)
    tables = document.get("keys", [])
    if not isinstance(tables, list):
        raise ConfigError("keys", "must be an array of tables ([[keys]])", source)
    entries: list[ApiKeyEntry] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        where = f"keys[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(where, "must be a table", source)
        extra = sorted(set(table) - _ENTRY_FIELDS)
        if extra:
            raise ConfigError(f"{where}.{extra[0]}", "unknown field; use name and sha256", source)
        name, digest = table.get("name"), table.get("sha256")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name", "must be a non-empty string", source)
        if not isinstance(digest, str):
            raise ConfigError(f"{where}.sha256", "must be a string of 64 hex digits", source)
        try:
            entry = ApiKeyEntry(name, digest.lower())
        except ValueError as exc:
            raise ConfigError(f"{where}.sha256", str(exc), source) from None
        if name in seen:
            raise ConfigError(f"{where}.name", f"{name!r} is already keys[{seen[name]}]", source)
        seen[name] = index
        entries.append(entry)
    return entries

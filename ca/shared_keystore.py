"""The key store of replicas that all sign: authority keys wrapped with the KEK, in the store.

Every replica holding the key-encryption key (``ca.key_wrap``) can open every authority key,
so losing any replica, the rotation leader included, stops no issuance. A key is made by the
rotation leader, wrapped, and written to the shared store (a fenced write, see ``ca.lease``)
before the authority record naming it, so no replica ever reads a record whose key it cannot
fetch. Opened keys are kept in memory only: nothing but ciphertext is stored, and a replica
that is killed leaves no key behind on its disk.

A key still in the local key directory (a store that ran with one rotating replica before)
is served from there and published wrapped, so the replicas take over from it.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from ca.key_wrap import KeyEncryptionKey
from ca.keys import KeyStore, KeyType, PrivateKey
from ca.store.base import Fenced, WrappedKeyVault

log = logging.getLogger(__name__)


class SharedKeyStore(KeyStore):
    """A ``KeyStore`` whose keys live wrapped in ``vault``; writes carry ``fence()``'s token."""

    def __init__(
        self,
        directory: Path,
        *,
        kek: KeyEncryptionKey,
        vault: WrappedKeyVault,
        fence: Callable[[], int | None],
    ) -> None:
        super().__init__(directory)
        self._kek = kek
        self._vault = vault
        self._fence = fence
        self._opened: dict[str, PrivateKey] = {}
        self._lock = threading.Lock()

    def create(self, key_type: KeyType, prefix: str = "key") -> tuple[str, PrivateKey]:
        """A new key, stored wrapped under the rotation lease's token before it is used."""
        token = self._fence()
        if token is None:
            raise Fenced("this replica does not hold the rotation lease: it makes no CA keys")
        key = key_type.generate()
        name = f"{prefix}-{secrets.token_hex(8)}"
        self._vault.put_wrapped(name, self._kek.wrap(key, key_ref=name), fence=token)
        with self._lock:
            self._opened[name] = key
        return name, key

    def put(self, name: str, key: PrivateKey) -> None:
        self._path(name)  # checks the name
        self._vault.put_wrapped(name, self._kek.wrap(key, key_ref=name), fence=self._fence())
        with self._lock:
            self._opened[name] = key

    def load(self, name: str) -> PrivateKey:
        key = self.load_if_present(name)
        if key is None:
            return super().load(name)  # in neither place: raises, naming the missing key
        return key

    def load_if_present(self, name: str) -> PrivateKey | None:
        with self._lock:
            key = self._opened.get(name)
        if key is not None:
            return key
        self._path(name)  # checks the name
        wrapped = self._vault.get_wrapped(name)
        if wrapped is not None:
            key = self._kek.unwrap(wrapped, key_ref=name)
        else:
            key = super().load_if_present(name)
            if key is None:
                return None
            # Publishing an existing key under its own name cannot clobber anything: unfenced.
            self._vault.put_wrapped(name, self._kek.wrap(key, key_ref=name), fence=None)
            log.info("published CA key %s, wrapped, for the other replicas", name)
        with self._lock:
            self._opened[name] = key
        return key

    def delete(self, name: str) -> None:
        self._vault.delete_wrapped(name, fence=self._fence())
        with self._lock:
            self._opened.pop(name, None)
        super().delete(name)

"""The agent's own identity: its SVID, key and last bundle, kept on disk in the data dir.

Kept so a restarted agent need not attest again (a join token works once): under
``<data_dir>/agent/``, the key 0600 in a 0700 directory. An SVID past its expiry is ignored
(the agent attests anew).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authd.agent.client import AgentCredentials
from ca.keys import PrivateKey
from ca.spiffe_id import SpiffeId

__all__ = ["AgentIdentity"]

ROTATE_AT = 0.5  # of the agent SVID's lifetime


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey
    bundle_json: str
    issued_at: float

    @property
    def expires_at(self) -> float:
        return self.chain[0].not_valid_after_utc.timestamp()

    @property
    def renew_at(self) -> float:
        return self.issued_at + (self.expires_at - self.issued_at) * ROTATE_AT

    def credentials(self, roots_pem: bytes) -> AgentCredentials:
        pem = serialization.Encoding.PEM
        return AgentCredentials(
            spiffe_id=self.spiffe_id,
            chain_pem=b"".join(c.public_bytes(pem) for c in self.chain),
            key_pem=self.key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            roots_pem=roots_pem,
        )

    def save(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        creds = self.credentials(b"")
        _write(directory / "svid.pem", creds.chain_pem, 0o644)
        _write(directory / "svid.key", creds.key_pem, 0o600)
        _write(directory / "bundle.json", self.bundle_json.encode(), 0o644)

    @classmethod
    def load(cls, directory: Path, now: float) -> AgentIdentity | None:
        """The saved identity, unless there is none or its SVID has expired."""
        try:
            chain = tuple(x509.load_pem_x509_certificates((directory / "svid.pem").read_bytes()))
            key = serialization.load_pem_private_key(
                (directory / "svid.key").read_bytes(), password=None
            )
            bundle_json = (directory / "bundle.json").read_text()
        except (OSError, ValueError):
            return None
        leaf = chain[0]
        if leaf.not_valid_after_utc.timestamp() <= now:
            return None
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        spiffe_id = SpiffeId.parse(uris.get_values_for_type(x509.UniformResourceIdentifier)[0])
        return cls(
            spiffe_id,
            chain,
            key,  # type: ignore[arg-type]
            bundle_json,
            leaf.not_valid_before_utc.timestamp(),
        )


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)

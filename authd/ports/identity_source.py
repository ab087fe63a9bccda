"""The identity-source port: where the Workload API and SDS get what they hand out.

The workload servers attest a caller into selectors and then ask an :class:`IdentitySource`
which registration entries those selectors grant, for the entries' current SVIDs and for
the trust bundle. They never reach the CA behind it, so the same servers can serve SVIDs
the local CA signs (``authd.workload.svids.SvidProvider``) or, in an agent, SVIDs a remote
server signed and the agent caches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.bundle import TrustBundle
from ca.jwtsvid import JwtSvid
from ca.keys import PrivateKey
from ca.spiffe_id import SpiffeId
from ca.store import RegistrationEntry, Selector

__all__ = ["IdentitySource", "WorkloadX509Svid"]


@dataclass(frozen=True, slots=True)
class WorkloadX509Svid:
    """An X.509-SVID with its key, ready to hand out in the encodings both APIs need."""

    entry_id: str
    entry_revision: int
    spiffe_id: SpiffeId
    hint: str
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey
    authority_id: str
    issued_at: float
    expires_at: float
    rotate_at: float
    chain_der: bytes = field(init=False)  # Workload API: concatenated DER, leaf first
    key_der: bytes = field(init=False)  # Workload API: unencrypted PKCS#8 DER
    chain_pem: bytes = field(init=False)  # SDS: PEM
    key_pem: bytes = field(init=False)

    @property
    def serial(self) -> str:
        return format(self.chain[0].serial_number, "x")

    def __post_init__(self) -> None:
        der, pem = serialization.Encoding.DER, serialization.Encoding.PEM
        pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        object.__setattr__(self, "chain_der", b"".join(c.public_bytes(der) for c in self.chain))
        object.__setattr__(self, "chain_pem", b"".join(c.public_bytes(pem) for c in self.chain))
        object.__setattr__(self, "key_der", self.private_key.private_bytes(der, pkcs8, none))
        object.__setattr__(self, "key_pem", self.private_key.private_bytes(pem, pkcs8, none))


class IdentitySource(Protocol):
    """What the workload servers ask, on their event loop.

    The synchronous methods answer from memory (at most they sign one SVID); anything that
    may wait on storage or the network is a coroutine. ``ca.errors.CAError`` from
    :meth:`x509_svid` or :meth:`fetch_jwt_svid` means that identity cannot be had now;
    ``ca.errors.VerificationError`` from :meth:`verify_jwt_svid` means the token is refused.
    """

    @property
    def version(self) -> int:
        """Grows on every change of the entries, the SVIDs or the bundle."""
        ...

    async def wait_for_change(self, version: int) -> int:
        """Return the new version once it differs from ``version``."""
        ...

    @property
    def bundle(self) -> TrustBundle:
        """The trust bundle of the source's own trust domain."""
        ...

    def federated_bundles(self, entries: Iterable[RegistrationEntry]) -> dict[str, TrustBundle]:
        """The foreign bundles ``entries`` federate with, by trust domain name (those known)."""
        ...

    def entries_for(self, selectors: Iterable[Selector]) -> list[RegistrationEntry]:
        """The entries granted to a workload with ``selectors``, oldest first."""
        ...

    def x509_svid(self, entry: RegistrationEntry) -> WorkloadX509Svid:
        """The entry's current X.509-SVID (call :meth:`commit` before handing it out)."""
        ...

    async def commit(self) -> None:
        """Return once every SVID :meth:`x509_svid` gave out so far may leave authd.

        For the local CA: its serial is in the issuance log, so it can be revoked.
        """
        ...

    async def fetch_jwt_svid(self, entry: RegistrationEntry, audience: Sequence[str]) -> JwtSvid:
        """A JWT-SVID of ``entry`` for ``audience`` (an agent may have to ask its server)."""
        ...

    def verify_jwt_svid(self, token: str, audience: Sequence[str]) -> JwtSvid:
        """The JWT-SVID ``token`` if it verifies against the bundle and names every ``audience``."""
        ...

    def rotate_due(self) -> int:
        """Renew every SVID that is due; returns how many changed (called every second)."""
        ...

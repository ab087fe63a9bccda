"""Who may use the admin API: the one place that decides it.

Two kinds of connection. On the Unix socket, the kernel's credentials of the caller's
connection (see ``authd.transport.peercred``) decide: root and the configured admin uids.
Over mutual TLS (see ``authd.admin.remote``), the client's X.509-SVID decides: its chain
verified by the CA against our own bundle, not revoked (serial or SPIFFE ID), and its SPIFFE
ID that of an unexpired, unrevoked registration entry with ``admin: true``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from authd.admin.errors import PermissionDenied, store_refusal
from authd.transport.peercred import PeerCredentials
from authd.workload.registry import EntryRegistry
from ca.certificate_authority import CertificateAuthority
from ca.errors import VerificationError
from ca.revocation_view import RevocationQuery
from ca.revoker import Revoker
from ca.store import StoreError

LOCAL_ADMINS = "root or admin.allowed_uids"


@dataclass(frozen=True, slots=True)
class AdminCaller:
    """Who made an admin call: a local uid, or the verified SPIFFE ID of a TLS client."""

    name: str  # "uid=0" or "spiffe://example.org/ops"

    @property
    def actor(self) -> str:
        """How the audit and issuance logs name the caller (``admin:uid=0``)."""
        return f"admin:{self.name}"

    def __str__(self) -> str:
        return self.actor


class AdminGate:
    """Decides whether a caller is an admin; raises ``PermissionDenied`` saying why not."""

    def __init__(
        self,
        ca: CertificateAuthority,
        allows_uid: Callable[[int], bool],
        registry: EntryRegistry,
        revocations: Revoker,
    ) -> None:
        self._ca = ca
        self._allows_uid = allows_uid
        self._registry = registry
        self._revocations = revocations

    def admit(
        self, local: PeerCredentials | None, chain: list[x509.Certificate] | None
    ) -> AdminCaller:
        """The caller of a call on the Unix socket (``local``) or over TLS (``chain``)."""
        if local is not None:
            if self._allows_uid(local.uid):
                return AdminCaller(f"uid={local.uid}")
            raise PermissionDenied(f"uid {local.uid} is not an authd admin ({LOCAL_ADMINS})")
        if chain is None:
            raise PermissionDenied(f"unknown caller is not an authd admin ({LOCAL_ADMINS})")
        try:
            return self._remote(chain)
        except StoreError as exc:
            raise store_refusal(exc) from None

    def _remote(self, chain: list[x509.Certificate]) -> AdminCaller:
        """The admin behind a TLS client's chain.

        The TLS handshake already checked the chain, but the URI SAN is believed only once
        the CA has verified the chain itself (SPIFFE leaf rules, path to our bundle).
        """
        try:
            spiffe_id = str(self._ca.verify_x509_svid(chain))
        except (VerificationError, ValueError) as exc:  # ValueError: a malformed extension
            raise PermissionDenied(f"client certificate rejected: {exc}") from None
        serial = format(chain[0].serial_number, "x")
        view = self._revocations.view
        if view.is_revoked(RevocationQuery(serial=serial)):
            raise PermissionDenied(f"the X.509-SVID of {spiffe_id} (serial {serial}) is revoked")
        if view.is_revoked(RevocationQuery(spiffe_id=spiffe_id)):
            raise PermissionDenied(f"{spiffe_id} is revoked")
        for stored in self._ca.store.list_entries(spiffe_id=spiffe_id):
            # The registry's copy, as attestation sees it: gone once expired.
            entry = self._registry.get(stored.entry_id)
            if (
                stored.admin
                and entry is not None
                and entry.admin
                and not self._revocations.blocks_issuance(spiffe_id, entry.entry_id)
            ):
                return AdminCaller(spiffe_id)
        raise PermissionDenied(
            f"{spiffe_id} is not an admin: no registration entry with admin: true"
        )

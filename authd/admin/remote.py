"""The admin API for remote callers: mutual TLS with X.509-SVIDs of our own trust domain.

``authd run`` serves the same Admin servicer on ``admin.mtls_address`` with TLS. The server
presents an X.509-SVID for ``admin.server_spiffe_id`` that its own CA issues for a key it
makes (:class:`AdminServerSvid`); it is re-issued at half its life and whenever the
authorities change. ``grpc.dynamic_ssl_server_credentials`` asks for the certificate
configuration at every handshake, so a new SVID, and new roots in the bundle, apply to the
next connection without a restart. The handshake requires a client certificate that chains
to the bundle; who may call is decided per call by ``AdminService`` from the chain that
:func:`client_chain` reads out of the TLS session, verified again by the CA itself.

The client side has one gap grpc leaves open: its Python API never shows a client the
server's certificate, so the CLI cannot check the server's URI SAN itself. The server's SVID
therefore also carries the DNS name :data:`ADMIN_TLS_NAME`, which clients verify through
``grpc.ssl_target_name_override``. Any SVID of the trust domain carrying that DNS name would
pass; only admins can give an SVID DNS names (``x509 mint --dns``, entries' ``dns_names``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives import serialization

from authd.transport.tls_peer import client_chain
from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock
from ca.keys import KeyType
from ca.spiffe_id import SpiffeId

__all__ = [
    "ADMIN_TLS_NAME",
    "ROTATE_AT",
    "AdminServerSvid",
    "ServerCertificate",
    "client_chain",
]

log = logging.getLogger(__name__)

#: The DNS SAN on the server's SVID; clients verify it (``grpc.ssl_target_name_override``).
ADMIN_TLS_NAME = "authd-admin"
ROTATE_AT = 0.5  # of the server SVID's lifetime
ROTATION_CHECK_INTERVAL = 1.0  # seconds
REQUESTER = "authd:remote-admin"  # the server SVID's requester in the issuance log


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    """One issued server SVID and the roots clients are checked against, in PEM."""

    spiffe_id: str
    serial: str
    chain_pem: bytes
    key_pem: bytes
    roots_pem: bytes
    issued_at: float
    expires_at: float

    @property
    def rotate_at(self) -> float:
        return self.issued_at + (self.expires_at - self.issued_at) * ROTATE_AT

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key_pem, self.chain_pem)], root_certificates=self.roots_pem
        )


class AdminServerSvid:
    """The X.509-SVID the remote admin listener presents, kept current.

    Issued by the daemon's own CA for a key made here, re-issued once half its life has
    passed (``rotate_due``, which ``run`` calls every second) and at once when the
    authorities or the bundle change. grpc calls ``fetch`` at every handshake, from its own
    threads: it returns the new configuration once after each change, else None
    ("unchanged").
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        clock: Clock,
        spiffe_id: SpiffeId,
        *,
        key_type: KeyType = KeyType.EC_P256,
        dns_name: str = ADMIN_TLS_NAME,
        requester: str = REQUESTER,
    ) -> None:
        self._dns_name = dns_name
        self._requester = requester
        self._ca = ca
        self._clock = clock
        self._spiffe_id = spiffe_id
        self._key_type = key_type
        self._lock = threading.Lock()
        self._current = self._issue()
        self._fetched: ServerCertificate | None = None
        ca.add_listener(self._authorities_changed)

    @property
    def current(self) -> ServerCertificate:
        return self._current

    def credentials(self, *, require_client: bool = True) -> grpc.ServerCredentials:
        """TLS server credentials that (by default) require a client certificate and follow
        rotations."""
        with self._lock:
            self._fetched = current = self._current
        return grpc.dynamic_ssl_server_credentials(
            current.configuration(),
            self.fetch,  # type: ignore[arg-type]  # the stubs omit that None means "unchanged"
            require_client_authentication=require_client,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's certificate-configuration fetcher: the new configuration, or None."""
        with self._lock:
            current = self._current
            if current is self._fetched:
                return None
            self._fetched = current
        return current.configuration()

    async def run(self, interval: float = ROTATION_CHECK_INTERVAL) -> None:
        """Check for a due rotation every ``interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.rotate_due()

    def rotate_due(self) -> bool:
        """Re-issue if half the SVID's life has passed; True if it did."""
        if self._clock.now() < self._current.rotate_at:
            return False
        self._reissue("half its life has passed")
        return True

    def _authorities_changed(self) -> None:
        self._reissue("the authorities changed")

    def _reissue(self, why: str) -> None:
        try:
            issued = self._issue()
        except Exception:
            # Keep presenting the current SVID; the next check retries.
            log.exception("cannot re-issue the remote admin SVID (%s); will retry", why)
            return
        with self._lock:
            self._current = issued
        log.info(
            "remote admin SVID %s re-issued (%s): serial %s", issued.spiffe_id, why, issued.serial
        )

    def _issue(self) -> ServerCertificate:
        key = self._key_type.generate()
        svid = self._ca.sign_x509_svid(
            key.public_key(),
            spiffe_id=self._spiffe_id,
            dns_names=[self._dns_name],
            requester=self._requester,
        )
        return ServerCertificate(
            spiffe_id=str(svid.spiffe_id),
            serial=svid.serial,
            chain_pem=svid.chain_pem(),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            roots_pem=self._ca.bundle.to_pem(),
            issued_at=self._clock.now(),
            expires_at=svid.expires_at,
        )

"""The TLS side of our own bundle endpoint, in either profile of the SPIFFE Federation spec.

- ``https_web``: the web certificate and key configured (``federation.bundle_endpoint_cert``
  and ``_key``), loaded once at start.
- ``https_spiffe``: an X.509-SVID for ``federation.bundle_endpoint_spiffe_id`` that our own CA
  issues for a key made here, chained to our bundle. It is re-issued at half its life and at
  once when the authorities change; every handshake picks the current one (the server
  context's SNI callback swaps in the newest context), so no restart is needed.

Python's ``ssl`` reads certificates only from files, so the SVID and its key are written to
``<data_dir>/private-federation/`` (directory 0700, files 0600) before a context loads them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock
from ca.keys import KeyType
from ca.spiffe_id import SpiffeId

__all__ = ["EndpointSvid", "web_server_context"]

log = logging.getLogger(__name__)

ROTATE_AT = 0.5
REQUESTER = "authd:bundle-endpoint"


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def web_server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """https_web: the configured web certificate; ``ValueError`` naming what cannot be read."""
    context = _server_context()
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the web certificate {cert_file}: {exc}") from None
    return context


class EndpointSvid:
    """https_spiffe: the endpoint's own X.509-SVID, kept current, as an ``ssl`` server context."""

    def __init__(
        self,
        ca: CertificateAuthority,
        clock: Clock,
        spiffe_id: SpiffeId,
        private_dir: Path,
        *,
        key_type: KeyType = KeyType.EC_P256,
    ) -> None:
        self._ca = ca
        self._clock = clock
        self._spiffe_id = spiffe_id
        self._dir = private_dir
        self._key_type = key_type
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        self._current, self._rotate_at = self._issue()
        # Handshakes start on this context; the SNI callback moves each to the current one.
        self.context = self._current
        self.context.sni_callback = self._pick
        ca.add_listener(self._authorities_changed)

    def _pick(self, sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if sock.context is not self._current:
            sock.context = self._current

    async def run(self, interval: float = 1.0) -> None:
        """Re-issue when half the SVID's life has passed; until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if self._clock.now() >= self._rotate_at:
                self._reissue("half its life has passed")

    def _authorities_changed(self) -> None:
        self._reissue("the authorities changed")

    def _reissue(self, why: str) -> None:
        try:
            context, rotate_at = self._issue()
        except Exception:
            log.exception("cannot re-issue the bundle endpoint's SVID (%s); will retry", why)
            return
        context.sni_callback = self._pick
        self._current, self._rotate_at = context, rotate_at
        log.info("bundle endpoint SVID %s re-issued (%s)", self._spiffe_id, why)

    def _issue(self) -> tuple[ssl.SSLContext, float]:
        key = self._key_type.generate()
        svid = self._ca.sign_x509_svid(
            key.public_key(), spiffe_id=self._spiffe_id, requester=REQUESTER
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_file = self._write("endpoint-svid.pem", svid.chain_pem())
        key_file = self._write("endpoint-svid.key", key_pem)
        context = _server_context()
        context.load_cert_chain(cert_file, key_file)
        issued_at = self._clock.now()
        return context, issued_at + (svid.expires_at - issued_at) * ROTATE_AT

    def _write(self, name: str, data: bytes) -> Path:
        """Write ``data`` to ``name`` atomically, 0600 from the first byte."""
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self._dir / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self._dir / name

"""A small read-only HTTP endpoint: the trust bundle and the CRLs, for relying parties.

``GET /bundle`` is the SPIFFE bundle (JWKS), and so is ``GET /`` (where the SPIFFE
Federation spec's bundle endpoint URLs usually point); ``GET /crl.pem`` holds one CRL per live X.509
authority, PEM, concatenated; ``GET /crl`` is the active authority's CRL in DER, and
``GET /crl/<authority-id>`` any live authority's. Each CRL's nextUpdate matches how often
it is rebuilt (``ca.crl_refresh``). Nothing here is secret, and nothing here writes.

Given an ``ssl`` context the same endpoint is served over HTTPS: that is the SPIFFE bundle
endpoint of ``federation.bundle_endpoint_address`` (``authd.federation.endpoint_tls`` makes
the context for either profile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from cryptography.hazmat.primitives import serialization

from authd.ports.bundle_view import BundleView
from ca.crl import crl_pem
from ca.revoker import Revoker

log = logging.getLogger(__name__)

MAX_REQUEST = 8192


class BundleEndpoint:
    def __init__(
        self,
        bundles: BundleView,
        revocations: Revoker,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._bundles = bundles
        self._tls = tls
        self._revocations = revocations
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        if self._tls is None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        else:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, ssl=self._tls, ssl_handshake_timeout=10
            )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for ``path``."""
        if path in ("/bundle", "/"):
            return 200, "application/json", self._bundles.bundle.to_json().encode()
        if path == "/crl.pem":
            return 200, "application/x-pem-file", crl_pem(self._revocations.crls())
        crl = None
        if path == "/crl":
            crl = self._revocations.crl_of(None)
        elif path.startswith("/crl/"):
            crl = self._revocations.crl_of(path.removeprefix("/crl/"))
        if crl is not None:
            return 200, "application/pkix-crl", crl.public_bytes(serialization.Encoding.DER)
        return 404, "text/plain", b"not found\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method not in ("GET", "HEAD"):
                status, content_type, body = 405, "text/plain", b"method not allowed\n"
            else:
                status, content_type, body = self.respond(path.split("?", 1)[0])
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\ncache-control: max-age="
                f"{self._revocations.crl_refresh // 2}\r\nconnection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
            ConnectionError,
            ssl.SSLError,
        ):
            pass  # a malformed or slow request gets the connection closed
        except Exception:
            log.exception("bundle endpoint: request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

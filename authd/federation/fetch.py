"""Fetching a foreign bundle from its SPIFFE bundle endpoint over HTTPS (blocking; run it in a
thread).

Two profiles, as the SPIFFE Federation spec names them:

- ``https_web``: the endpoint presents a web certificate, checked against the system's roots
  (or a configured CA file) and the URL's host name, as a browser would.
- ``https_spiffe``: the endpoint presents an X.509-SVID. OpenSSL validates its chain against
  the bundle we already hold for the endpoint's trust domain (the bootstrap bundle at first,
  then the last one fetched), and the leaf must be an X.509-SVID whose SPIFFE ID is exactly the
  configured ``endpoint_spiffe_id``. No host name check: the SPIFFE ID is the identity.

The endpoint is hostile input: every step has a timeout, the whole fetch a deadline, the body
at most ``MAX_BUNDLE_BYTES`` (a larger ``content-length`` is refused before reading), and
redirects are not followed. Every failure is one ``ForeignBundleError`` line.
"""

from __future__ import annotations

import http.client
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509

from authd.federation.foreign_bundle import MAX_BUNDLE_BYTES, ForeignBundleError
from ca.errors import VerificationError
from ca.x509svid import check_leaf

__all__ = ["FETCH_TIMEOUT", "EndpointTarget", "fetch_bundle", "spiffe_context", "web_context"]

FETCH_TIMEOUT = 10.0  # seconds, per socket operation and for the whole fetch
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class EndpointTarget:
    """Where to fetch from, the TLS context to do it with, and whom to expect (https_spiffe)."""

    url: str
    context: ssl.SSLContext
    endpoint_spiffe_id: str = ""  # "" for https_web


def web_context(ca_file: str | None) -> ssl.SSLContext:
    """https_web: the system's roots or ``ca_file``, and host name verification."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ForeignBundleError(f"cannot load the CA file {ca_file}: {exc}") from None


def spiffe_context(roots_pem: bytes) -> ssl.SSLContext:
    """https_spiffe: trust exactly ``roots_pem`` (the endpoint's trust domain's bundle)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # the SPIFFE ID is checked instead
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cadata=roots_pem.decode("ascii"))
    except (ssl.SSLError, ValueError) as exc:
        raise ForeignBundleError(f"cannot use the bundle's roots: {exc}") from None
    return context


def fetch_bundle(
    target: EndpointTarget, *, timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_BUNDLE_BYTES
) -> bytes:
    """The body the endpoint serves at ``target.url`` (status 200), at most ``max_bytes``."""
    parts = urlsplit(target.url)
    if parts.scheme != "https" or not parts.hostname:
        raise ForeignBundleError(f"{target.url} is not an https:// URL")
    deadline = time.monotonic() + timeout
    connection = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, timeout=timeout, context=target.context
    )
    try:
        connection.connect()
        if target.endpoint_spiffe_id:
            _check_endpoint_svid(connection, target.endpoint_spiffe_id)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        connection.request("GET", path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise ForeignBundleError(f"endpoint answered HTTP {response.status}")
        declared = response.getheader("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise ForeignBundleError(f"bundle is larger than {max_bytes} bytes ({declared})")
        body = bytearray()
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > max_bytes:
                raise ForeignBundleError(f"bundle is larger than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise ForeignBundleError(f"endpoint took longer than {timeout:g}s")
    except ssl.SSLCertVerificationError as exc:
        raise ForeignBundleError(
            f"TLS: endpoint certificate refused: {exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        raise ForeignBundleError(f"TLS: {exc.reason or exc}") from None
    except TimeoutError:
        raise ForeignBundleError(f"endpoint took longer than {timeout:g}s") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise ForeignBundleError(f"cannot fetch: {type(exc).__name__}: {exc}") from None
    finally:
        connection.close()


def _check_endpoint_svid(connection: http.client.HTTPSConnection, expected: str) -> None:
    sock = connection.sock
    der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    if not der:
        raise ForeignBundleError("endpoint presented no certificate")
    try:
        presented = check_leaf(x509.load_der_x509_certificate(der))
    except (VerificationError, ValueError) as exc:
        raise ForeignBundleError(f"endpoint certificate is not an X.509-SVID: {exc}") from None
    if str(presented) != expected:
        raise ForeignBundleError(f"endpoint presented {presented}, not {expected}")

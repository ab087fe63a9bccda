"""Downloading an OPA bundle from a bundle server, as OPA's ``download`` package does.

``GET <service url>/<resource>`` with ``If-None-Match: <etag of the active bundle>``: 200 is
a new bundle (its ``ETag`` remembered once it activates), 304 is "unchanged", anything else a
failure. The server is hostile input: connect and read timeouts, the body at most
``max_size`` bytes (a larger ``content-length`` is refused before reading), no redirects
followed. Blocking; run it in a thread.

Polling follows OPA's ``polling.min_delay_seconds`` / ``max_delay_seconds``: after a
successful poll the next one waits a random delay between the two; after a failure, OPA's
backoff (from ``MIN_RETRY_DELAY``, x1.6 per failure with ±20 % jitter, capped at the max).
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from authd.policy.base import PolicyError

__all__ = [
    "DEFAULT_MAX_DELAY",
    "DEFAULT_MIN_DELAY",
    "FETCH_TIMEOUT",
    "BundleFetchError",
    "BundleServer",
    "Fetched",
    "Polling",
    "fetch_bundle",
    "resource_url",
]

DEFAULT_MIN_DELAY: Final = 60.0
DEFAULT_MAX_DELAY: Final = 120.0
MIN_RETRY_DELAY: Final = 0.1
FETCH_TIMEOUT: Final = 10.0
FETCH_DEADLINE: Final = 300.0  # for a whole download, however slowly the server trickles
_CHUNK: Final = 64 * 1024


class BundleFetchError(PolicyError):
    """The bundle server could not be reached or did not answer 200/304."""


@dataclass(frozen=True, slots=True)
class Polling:
    """OPA's ``polling`` block, in seconds."""

    min_delay: float = DEFAULT_MIN_DELAY
    max_delay: float = DEFAULT_MAX_DELAY

    def after_success(self, random: Callable[[], float]) -> float:
        return self.min_delay + (self.max_delay - self.min_delay) * random()

    def after_failures(self, failures: int, random: Callable[[], float]) -> float:
        """OPA's ``util.DefaultBackoff(MIN_RETRY_DELAY, max_delay, failures)``."""
        if failures <= 0:
            return MIN_RETRY_DELAY
        delay = MIN_RETRY_DELAY
        while delay < self.max_delay and failures > 0:
            delay *= 1.6
            failures -= 1
        delay = min(delay, self.max_delay)
        return delay * (1 + 0.2 * (random() * 2 - 1))


@dataclass(frozen=True, slots=True)
class BundleServer:
    """Where a bundle is fetched from and with what (a service's url, headers, TLS)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = FETCH_TIMEOUT
    ca_file: str = ""
    insecure_tls: bool = False


@dataclass(frozen=True, slots=True)
class Fetched:
    """A poll's answer: ``body`` None when the server said 304 Not Modified."""

    body: bytes | None
    etag: str = ""


def resource_url(service_url: str, resource: str) -> str:
    """OPA joins a service URL and a bundle resource with exactly one slash."""
    return service_url.rstrip("/") + "/" + resource.lstrip("/")


def _context(server: BundleServer) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=server.ca_file or None)
    if server.insecure_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def fetch_bundle(server: BundleServer, etag: str, max_size: int) -> Fetched:
    """One GET of the bundle; a ``BundleFetchError`` names what went wrong, on one line."""
    parts = urlsplit(server.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BundleFetchError(f"{server.url}: not an http(s) URL")
    connection: http.client.HTTPConnection
    try:
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.hostname, parts.port or 443, timeout=server.timeout, context=_context(server)
            )
        else:
            connection = http.client.HTTPConnection(
                parts.hostname, parts.port or 80, timeout=server.timeout
            )
    except (OSError, ValueError) as exc:
        raise BundleFetchError(f"{server.url}: {exc}") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    headers = {"Accept-Encoding": "identity", **server.headers}
    if etag:
        headers["If-None-Match"] = etag
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        if response.status == 304:
            return Fetched(None, etag)
        if response.status != 200:
            raise BundleFetchError(f"{server.url}: server replied with HTTP {response.status}")
        length = response.getheader("content-length")
        if length is not None and length.isdigit() and int(length) > max_size:
            raise BundleFetchError(
                f"{server.url}: bundle is {length} bytes, over bundle_max_size {max_size}"
            )
        body = bytearray()
        deadline = time.monotonic() + FETCH_DEADLINE
        while chunk := response.read1(_CHUNK):
            if time.monotonic() > deadline:
                raise BundleFetchError(f"{server.url}: download took over {FETCH_DEADLINE:.0f}s")
            body += chunk
            if len(body) > max_size:
                raise BundleFetchError(
                    f"{server.url}: bundle is over bundle_max_size {max_size} bytes"
                )
        return Fetched(bytes(body), response.getheader("etag") or "")
    except BundleFetchError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise BundleFetchError(f"{server.url}: {reason}") from None
    finally:
        connection.close()

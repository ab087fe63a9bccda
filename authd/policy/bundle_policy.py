"""A policy served from an OPA bundle: compiled at activation, swapped only when the next
bundle is read, verified and compiled in full.

From disk (``authz.rego_bundle = "/path/bundle.tar.gz"``) the ``PolicyHolder`` watches the
file and rebuilds; from a bundle server, ``DownloadedBundle`` polls with ``If-None-Match``
and keeps serving the active bundle when the server is away, answers garbage, or serves a
bundle that fails its bounds, its signature or compilation. Each refused bundle is logged
once, on one line (the same bytes refused again are not logged again); the first failed poll
of an outage is logged once and its end once. Until a first bundle activates every check is
denied (as OPA answers undefined before its bundle is ready).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from authd.check.model import CheckContext, Decision, Identities
from authd.policy.base import InputDocument, Policy, PolicyError
from authd.policy.bundle_download import (
    BundleFetchError,
    BundleServer,
    Fetched,
    Polling,
    fetch_bundle,
)
from authd.policy.opa_bundle import Bundle, BundleError, BundleLimits, read_bundle
from authd.policy.opa_bundle_signing import BundleVerification

__all__ = ["BundleSettings", "DownloadedBundle", "load_bundle_file"]

log = logging.getLogger(__name__)

Compile = Callable[[Bundle, str], Policy]


@dataclass(frozen=True, slots=True)
class BundleSettings:
    """Where a bundle comes from and what it must pass before it activates."""

    name: str
    location: str  # a path, or an http(s) URL
    limits: BundleLimits = field(default_factory=BundleLimits)
    verification: BundleVerification | None = None
    polling: Polling = field(default_factory=Polling)
    server: BundleServer | None = None  # set for an http(s) location

    @property
    def remote(self) -> bool:
        return self.server is not None


def load_bundle_file(settings: BundleSettings, compile_bundle: Compile) -> Policy:
    """Read, verify and compile the bundle file at ``settings.location``."""
    path = Path(settings.location)
    try:
        size = path.stat().st_size
        if size > settings.limits.max_size:
            raise BundleError(
                f"{path}: {size} bytes, over bundle_max_size {settings.limits.max_size}"
            )
        blob = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the bundle: {exc.strerror or exc}") from None
    try:
        bundle = read_bundle(blob, settings.limits, settings.verification)
    except PolicyError as exc:
        raise BundleError(f"bundle {path}: {exc}") from None
    return compile_bundle(bundle, str(path))


class DownloadedBundle:
    """The policy of the bundle last activated from a bundle server (a ``Policy``)."""

    def __init__(
        self,
        settings: BundleSettings,
        compile_bundle: Compile,
        *,
        fetch: Callable[[BundleServer, str, int], Fetched] = fetch_bundle,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        assert settings.server is not None
        self.settings = settings
        self._server = settings.server
        self._compile = compile_bundle
        self._fetch = fetch
        self._random = random_fraction
        self.current: Policy | None = None
        self.name = f"bundle:{settings.name} (not activated)"
        self.etag = ""
        self.revision = ""
        self.activations = 0
        self.refusals = 0
        self.fetch_failures = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._refused_digest = b""
        self._lock = threading.Lock()  # polls may overlap (the first one, and the loop's)

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        current = self.current
        if current is None:
            raise PolicyError(f"bundle {self.settings.name} is not activated yet")
        return await current.evaluate(ctx, identities, input_document)

    @property
    def cache_hits(self) -> int:
        return getattr(self.current, "cache_hits", 0)

    @property
    def cache_misses(self) -> int:
        return getattr(self.current, "cache_misses", 0)

    def poll_now(self) -> bool | None:
        """Fetch once (blocking): True if a new bundle activated, None if unchanged, False if
        the server failed or the bundle was refused."""
        with self._lock:
            return self._poll()

    def _poll(self) -> bool | None:
        limits = self.settings.limits
        try:
            fetched = self._fetch(self._server, self.etag, limits.max_size)
        except BundleFetchError as exc:
            self.fetch_failures += 1
            self.consecutive_failures += 1
            self.last_error = str(exc)
            if self.consecutive_failures == 1:
                log.warning(
                    "bundle %s: download failed, keeping %s: %s",
                    self.settings.name,
                    self._active(),
                    exc,
                )
            return False
        if self.consecutive_failures:
            log.info("bundle %s: server reachable again", self.settings.name)
        self.consecutive_failures = 0
        if fetched.body is None:
            return None
        digest = hashlib.sha256(fetched.body).digest()
        try:
            bundle = read_bundle(fetched.body, limits, self.settings.verification)
            policy = self._compile(bundle, self._server.url)
        except PolicyError as exc:
            self.refusals += 1
            self.last_error = str(exc)
            if digest != self._refused_digest:
                self._refused_digest = digest
                log.error(
                    "bundle %s: refused the bundle from %s, keeping %s: %s",
                    self.settings.name,
                    self._server.url,
                    self._active(),
                    exc,
                )
            return False
        self.current = policy
        self.name = policy.name
        self.etag = fetched.etag
        self.revision = bundle.revision
        self.activations += 1
        self.last_error = None
        self._refused_digest = b""
        log.info(
            "bundle %s: activated revision %r (%s)",
            self.settings.name,
            bundle.revision,
            "signed" if bundle.signed else "unsigned",
        )
        return True

    def _active(self) -> str:
        if self.current is None:
            return "no bundle (denying)"
        return f"revision {self.revision!r}"

    def next_delay(self) -> float:
        polling = self.settings.polling
        if self.consecutive_failures:
            return polling.after_failures(self.consecutive_failures, self._random)
        return polling.after_success(self._random)

    async def poll(self) -> bool | None:
        """One poll off the event loop (download, verify and compile run in a thread)."""
        return await asyncio.to_thread(self.poll_now)

    async def run(self) -> None:
        """Poll until cancelled, with OPA's delays."""
        while True:
            await asyncio.sleep(self.next_delay())
            try:
                await self.poll()
            except Exception:  # a bug here must not end polling for the process's life
                log.exception("bundle %s: poll crashed", self.settings.name)

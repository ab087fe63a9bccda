"""The signing keys of an external token issuer, fetched from its ``jwks_uri`` and cached.

Keys are kept for the response's ``Cache-Control: max-age`` (else a default of 10 minutes).
A token naming an unknown ``kid`` (the issuer rotated) triggers a refetch, but at most one
per ``min_refresh_interval`` (30 s): a flood of tokens with made-up kids cannot turn authd
into a load generator against the issuer. Concurrent callers share one in-flight fetch. If a
refetch fails, the keys already known keep working until the next allowed attempt; a JWKS
body is at most ``MAX_JWKS_BYTES`` and parsed within ``bounded_json``'s depth limit, and
whatever goes wrong while fetching or reading it (however malformed) counts as a failed fetch.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import re
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authd.check.bounded_json import loads_bounded
from ca.bundle import public_key_from_jwk
from ca.clock import Clock
from ca.errors import VerificationError
from ca.keys import MIN_RSA_BITS, PublicKey

log = logging.getLogger(__name__)

DEFAULT_TTL = 600.0
MIN_REFRESH_INTERVAL = 30.0
FETCH_TIMEOUT = 5.0
MAX_TTL = 24 * 3600.0
MAX_JWKS_BYTES = 1 << 20

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_CURVE_FOR_ALG = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


class JwksError(Exception):
    """No key can be had for a token: the JWKS cannot be fetched, or lacks the ``kid``.

    ``rule`` names what failed (``user-jwt/jwks`` or ``user-jwt/kid``); the message names
    the issuer and never includes a token.
    """

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule


@dataclass(frozen=True, slots=True)
class JsonWebKey:
    """One usable public key of an issuer's JWKS."""

    kid: str | None
    public_key: PublicKey
    algorithm: str | None = None  # the JWK's ``alg``, when the issuer pins one

    def can_verify(self, alg: str) -> bool:
        """Whether a token signed with ``alg`` may be checked with this key.

        The key type must fit the algorithm family (RSA for RS*/PS*, the matching curve for
        ES*), so a key of one kind is never fed to a verifier of another.
        """
        if self.algorithm is not None and self.algorithm != alg:
            return False
        if alg.startswith(("RS", "PS")):
            return isinstance(self.public_key, rsa.RSAPublicKey)
        curve = _CURVE_FOR_ALG.get(alg)
        return (
            curve is not None
            and isinstance(self.public_key, ec.EllipticCurvePublicKey)
            and self.public_key.curve.name == curve
        )


def parse_jwks(document: Any, *, source: str = "JWKS") -> dict[str | None, JsonWebKey]:
    """The signature keys of a JWKS document, by ``kid``; keys we cannot use are skipped.

    Skipped: ``use`` other than ``sig``, unknown ``kty`` or curve (including symmetric
    ``oct`` keys, so an HMAC secret can never be configured this way), RSA below 2048 bits,
    and malformed keys (logged).
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS (a JSON object with a 'keys' list)")
    keys: dict[str | None, JsonWebKey] = {}
    for index, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        try:
            public_key = public_key_from_jwk(jwk)
        except VerificationError as exc:
            log.warning("%s: key %d skipped: %s", source, index, exc)
            continue
        if public_key is None:
            continue
        if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < MIN_RSA_BITS:
            log.warning("%s: key %d skipped: RSA key below %d bits", source, index, MIN_RSA_BITS)
            continue
        alg = jwk.get("alg")
        keys[kid] = JsonWebKey(kid, public_key, alg if isinstance(alg, str) else None)
    return keys


def _fetch(url: str, timeout: float) -> tuple[bytes, str]:
    """GET ``url`` (blocking; run in a thread): the body and the Cache-Control header."""
    # S310: the scheme is checked in JwksCache; urllib follows redirects to http(s) and ftp
    # only, never to file://.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body: bytes = response.read(MAX_JWKS_BYTES + 1)
        cache_control: str = response.headers.get("Cache-Control", "")
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"response is larger than {MAX_JWKS_BYTES} bytes")
    return body, cache_control


def max_age(cache_control: str) -> float | None:
    """The ``max-age`` of a Cache-Control header, or None when absent."""
    if "no-store" in cache_control.lower() or "no-cache" in cache_control.lower():
        return 0.0
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else None


class JwksCache:
    """The keys of one issuer, fetched on demand from ``jwks_uri`` and kept fresh."""

    def __init__(
        self,
        jwks_uri: str,
        *,
        clock: Clock,
        issuer_name: str = "",
        default_ttl: float = DEFAULT_TTL,
        min_refresh_interval: float = MIN_REFRESH_INTERVAL,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        if urlsplit(jwks_uri).scheme not in ("http", "https"):
            raise ValueError(f"jwks_uri must be an http or https URL, not {jwks_uri!r}")
        self.jwks_uri = jwks_uri
        self.issuer_name = issuer_name or jwks_uri
        self._clock = clock
        self._default_ttl = default_ttl
        self._min_refresh_interval = min_refresh_interval
        self._timeout = timeout
        self._keys: Mapping[str | None, JsonWebKey] = {}
        self._expires_at = float("-inf")
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self.generation = 0  # grows whenever the key set changes (part of token cache keys)
        self.fetches = 0

    async def key(self, kid: str | None) -> JsonWebKey:
        """The key for ``kid`` (a token without a kid needs a JWKS of exactly one key)."""
        now = self._clock.now()
        if now >= self._expires_at or self._lookup(kid) is None:
            if self._inflight is None and self._may_fetch(now):
                self._last_attempt = now
                self._inflight = asyncio.ensure_future(self._refresh())
            if self._inflight is not None:
                # shield: one caller giving up (its request timed out) must not cancel the
                # fetch the others wait for. _refresh never raises: a failed fetch is
                # logged and the keys already known stay in use.
                await asyncio.shield(self._inflight)
        found = self._lookup(kid)
        if found is not None:
            return found
        if self.fetches == 0:
            raise JwksError("user-jwt/jwks", f"the JWKS of {self.issuer_name} is unavailable")
        if kid is None:
            raise JwksError(
                "user-jwt/kid",
                f"token has no kid and the JWKS of {self.issuer_name} holds {len(self._keys)} keys",
            )
        shown = repr(kid) if len(kid) <= 40 else repr(kid[:37] + "...")  # attacker-chosen
        raise JwksError("user-jwt/kid", f"kid {shown} is not in the JWKS of {self.issuer_name}")

    def _may_fetch(self, now: float) -> bool:
        last = self._last_attempt
        return last is None or now - last >= self._min_refresh_interval

    def _lookup(self, kid: str | None) -> JsonWebKey | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid) if kid is not None else None

    async def _refresh(self) -> None:
        try:
            body, cache_control = await asyncio.to_thread(_fetch, self.jwks_uri, self._timeout)
            document = loads_bounded(body, max_bytes=MAX_JWKS_BYTES)
            keys = parse_jwks(document, source=f"JWKS of {self.issuer_name}")
        except asyncio.CancelledError:
            raise
        # URLError, HTTPError and timeouts are OSErrors, a truncated response an HTTPException,
        # bad JSON a ValueError; anything else the issuer's answer caused is logged the same
        # way (with its traceback, being unforeseen): checks must never fail on it.
        except Exception as exc:
            log.warning(
                "fetching the JWKS of %s failed: %s",
                self.issuer_name,
                exc,
                exc_info=not isinstance(exc, OSError | ValueError | http.client.HTTPException),
            )
            return
        finally:
            self._inflight = None
        self.fetches += 1
        ttl = max_age(cache_control)
        ttl = self._default_ttl if ttl is None else min(ttl, MAX_TTL)
        self._expires_at = self._clock.now() + ttl
        if keys != self._keys:
            self._keys = keys
            self.generation += 1
        log.info("JWKS of %s: %d keys, fresh for %.0f s", self.issuer_name, len(keys), ttl)

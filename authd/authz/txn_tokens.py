"""Transaction tokens (draft-ietf-oauth-transaction-tokens): minted at the front door,
verified at every hop.

A Txn-Token is a compact JWS with header ``typ: txntoken+jwt``, signed by the trust domain's
active JWT authority (``authd.ports.token_signer``; its ``kid`` is in the bundle's JWKS, so
every hop verifies it against the bundle it already trusts). Claims:

- ``aud``: the trust domain's SPIFFE ID (``spiffe://example.org``): the token is good only
  inside it;
- ``txn``: the transaction's id, unique (a random 128-bit hex string), also the front
  door's decision id;
- ``sub``: the end user (a verified end-user JWT's ``sub``; else the API key's name, else the
  calling workload's SPIFFE ID);
- ``scope``: space-separated; the end user's ``scope`` (or ``scp``) unless the policy
  narrows it (``txn_scope``);
- ``req_wl``: the workload that asked for the token: the front door's SPIFFE ID;
- ``tctx``: ``method``, ``path`` (normalised), ``rule`` (the rule that allowed it) and
  ``claims`` (the end-user claims named in ``txn_token.claims``);
- ``rctx``: ``req_ip`` (the client's address, without port) and ``authn`` (how the user
  proved who they are: ``oidc``, ``api_key``, ``jwt_svid``, ``x509``);
- ``iat``, ``exp`` (``txn_token.lifetime`` after ``iat``).

Verification refuses anything but exactly that header (``typ`` included), an ``alg`` the
SPIFFE specs allow, a ``kid`` of the bundle, a signature that verifies, ``aud`` naming the
trust domain, ``exp`` in the future and ``iat`` not in it (both with ``txn_token.leeway``),
and well-formed claims; each refusal names its rule (``txn-token/exp: token has expired``).
Tokens are bounded before any parser sees them, like every bearer token
(``token_claims``); verified tokens are cached until they expire.

A hop never widens a transaction: a policy may ask for a narrower ``scope`` (the token is
re-minted with the same ``txn``, ``sub``, ``aud``, ``req_wl``, contexts, and an ``exp`` no
later than the one it replaces); a scope that is not a subset of the one carried is refused.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authd.authz.token_cache import TtlCache
from authd.authz.token_claims import MAX_TOKEN_BYTES, is_time, sha256, unverified_claims
from authd.check.model import CheckContext, CredentialProblem, Identities, TxnToken
from authd.policy.base import PolicyError
from authd.ports.token_signer import TokenSigner
from ca.bundle import TrustBundle
from ca.clock import Clock
from ca.errors import CAError, InvalidSpiffeId, VerificationError
from ca.jwtsvid import verify_jws
from ca.spiffe_id import SpiffeId, TrustDomain

TXN_TOKEN = "txn_token"  # noqa: S105 (the CredentialProblem kind, not a secret)
TYP: Final = "txntoken+jwt"
# The context extension that chooses, per route, whether this check mints ("mint") or not
# ("off"); unset: ``txn_token.mint``. In HTTP mode: the header x-authd-ctx-txn_token.
MINT_EXTENSION: Final = "txn_token"
# The context extension naming the front door's SPIFFE ID (req_wl) for this route.
WORKLOAD_EXTENSION: Final = "txn_workload"
# HTTP mode has no source address: Envoy may send it as x-authd-ctx-client_ip.
CLIENT_IP_EXTENSION: Final = "client_ip"
MAX_TXN_LENGTH: Final = 256
_SCOPE_CLAIMS: Final = ("scope", "scp")


@dataclass(frozen=True, slots=True)
class TxnTokenSettings:
    """``[txn_token]``: where tokens are minted, how long they live, what they carry."""

    mint: bool = False  # mint at every allowed check (unless a route says txn_token: off)
    workload_id: str = ""  # req_wl; "" means spiffe://<trust domain>/gateway
    lifetime: float = 60.0
    header: str = "txn-token"
    claims: tuple[str, ...] = ()  # end-user claims copied into tctx.claims
    leeway: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "header", self.header.lower())
        if self.lifetime <= 0 or self.leeway < 0:
            raise ValueError("txn_token: lifetime must be positive and leeway not negative")


def mints_here(ctx: CheckContext, settings: TxnTokenSettings) -> bool:
    """Whether this check is at a front door that mints (the route's say, else the config)."""
    choice = ctx.context_extensions.get(MINT_EXTENSION, "")
    if choice:
        return choice == "mint"
    return settings.mint


def b64url_sha256(der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def certificate_thumbprint(encoded: str) -> str | None:
    """RFC 8705's ``x5t#S256`` of the leaf of the URL-encoded PEM chain Envoy sent, or None."""
    if not encoded:
        return None
    try:
        leaf = x509.load_pem_x509_certificate(unquote(encoded).encode(errors="surrogatepass"))
    except ValueError:
        return None
    return b64url_sha256(leaf.public_bytes(Encoding.DER))


def scope_of(value: object) -> tuple[str, ...] | None:
    """A scope claim (space-separated string or list of strings) as a tuple; None if neither."""
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


class TxnTokens:
    """Verifies incoming Txn-Tokens and mints new ones; one per daemon (it owns a cache)."""

    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        clock: Clock,
        settings: TxnTokenSettings | None = None,
        signer: TokenSigner | None = None,
        cache_size: int = 10_000,
        failure_ttl: float = 5.0,
    ) -> None:
        self.settings = settings or TxnTokenSettings()
        self.trust_domain = trust_domain
        self.audience = f"spiffe://{trust_domain}"
        self.workload_id = self.settings.workload_id or f"spiffe://{trust_domain}/gateway"
        SpiffeId.parse(self.workload_id)
        self._clock = clock
        self._signer = signer
        self._failure_ttl = failure_ttl
        self.cache: TtlCache[tuple[bytes, int], TxnToken | CredentialProblem] = TtlCache(
            clock, max_entries=cache_size
        )

    # --- verifying --------------------------------------------------------------------------

    def verify(self, token: str, bundle: TrustBundle) -> TxnToken | CredentialProblem:
        """The verified token, or the problem with it (never an exception for bad input)."""
        token = token.strip()
        if not token:
            return CredentialProblem(TXN_TOKEN, "txn-token/empty: token is empty")
        if len(token) > MAX_TOKEN_BYTES:
            return CredentialProblem(
                TXN_TOKEN, f"txn-token/size: token is longer than {MAX_TOKEN_BYTES} bytes"
            )
        key = (sha256(token), bundle.sequence)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        now = self._clock.now()
        result = self._verify(token, bundle, now)
        if isinstance(result, TxnToken):
            expires_at = result.exp + self.settings.leeway
        else:
            expires_at = now + self._failure_ttl
        self.cache.put(key, result, expires_at=expires_at)
        return result

    def _verify(self, token: str, bundle: TrustBundle, now: float) -> TxnToken | CredentialProblem:
        def problem(rule: str, message: str) -> CredentialProblem:
            return CredentialProblem(TXN_TOKEN, f"txn-token/{rule}: {message}")

        first = unverified_claims(token)  # bounded JSON before any other parser
        if isinstance(first, str):
            return CredentialProblem(TXN_TOKEN, "txn-token/" + first.removeprefix("jwt/"))
        try:
            claims, _ = verify_jws(token, keys=bundle.jwt_authorities, typ=TYP, rule="txn-token")
        except VerificationError as exc:
            return CredentialProblem(TXN_TOKEN, str(exc))
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or self.audience not in audiences:
            return problem("aud", f"audience is not {self.audience}")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not (isinstance(exp, int | float) and isinstance(iat, int | float)) or not (
            is_time(exp) and is_time(iat)
        ):
            return problem("claims", "exp and iat must be numbers")
        leeway = self.settings.leeway
        if now >= exp + leeway:
            return problem("exp", "token has expired")
        if iat > now + leeway:
            return problem("iat", "token is issued in the future")
        txn, sub, req_wl = claims.get("txn"), claims.get("sub"), claims.get("req_wl")
        if not isinstance(txn, str) or not txn or len(txn) > MAX_TXN_LENGTH:
            return problem("txn", "txn must be a non-empty string")
        if not isinstance(sub, str) or not sub:
            return problem("sub", "sub must be a non-empty string")
        try:
            requester = SpiffeId.parse(req_wl)  # type: ignore[arg-type]
        except (InvalidSpiffeId, TypeError, AttributeError):
            return problem("req_wl", "req_wl is not a SPIFFE ID")
        if not requester.member_of(self.trust_domain):
            return problem("req_wl", f"req_wl is not in trust domain {self.trust_domain}")
        scope = scope_of(claims.get("scope", ""))
        if scope is None:
            return problem("scope", "scope must be a space-separated string")
        tctx, rctx = claims.get("tctx", {}), claims.get("rctx", {})
        if not isinstance(tctx, dict) or not isinstance(rctx, dict):
            return problem("claims", "tctx and rctx must be objects")
        return TxnToken(
            txn=txn,
            sub=sub,
            scope=scope,
            req_wl=str(requester),
            tctx=MappingProxyType(tctx),
            rctx=MappingProxyType(rctx),
            iat=int(iat),
            exp=math.floor(exp),
            aud=self.audience,
        )

    # --- minting ----------------------------------------------------------------------------

    @staticmethod
    def new_txn() -> str:
        return os.urandom(16).hex()

    def mint(
        self,
        ctx: CheckContext,
        identities: Identities,
        *,
        txn: str,
        scope: Sequence[str] | None,
        rule: str,
    ) -> str | None:
        """A fresh Txn-Token for the verified caller of ``ctx``; None when nobody verified (or
        there is no signer)."""
        subject, authn = _subject(identities)
        if subject is None:
            return None
        if scope is None:
            scope = user_scope(identities) or ()
        now = int(self._clock.now())
        tctx: dict[str, Any] = {"method": ctx.method, "path": ctx.normalized_path}
        if rule:
            tctx["rule"] = rule
        user = identities.user
        if user is not None and self.settings.claims:
            selected = {n: user.claims[n] for n in self.settings.claims if n in user.claims}
            if selected:
                tctx["claims"] = selected
        rctx: dict[str, Any] = {"authn": authn}
        client_ip = _client_ip(ctx)
        if client_ip:
            rctx["req_ip"] = client_ip
        claims = {
            "iat": now,
            "exp": now + int(self.settings.lifetime),
            "aud": self.audience,
            "txn": txn,
            "sub": subject,
            "scope": " ".join(scope),
            "req_wl": ctx.context_extensions.get(WORKLOAD_EXTENSION) or self.workload_id,
            "tctx": tctx,
            "rctx": rctx,
        }
        return self._sign(claims)

    def replace(self, token: TxnToken, scope: Sequence[str]) -> str | None:
        """``token`` re-minted with a narrower ``scope`` (the caller checked it is narrower)."""
        now = int(self._clock.now())
        claims = {
            "iat": now,
            "exp": min(token.exp, now + int(self.settings.lifetime)),
            "aud": token.aud,
            "txn": token.txn,
            "sub": token.sub,
            "scope": " ".join(scope),
            "req_wl": token.req_wl,
            "tctx": dict(token.tctx),
            "rctx": dict(token.rctx),
        }
        return self._sign(claims)

    def _sign(self, claims: Mapping[str, Any]) -> str | None:
        # Without a signer (`authd policy check`, offline) nothing is minted.
        if self._signer is None:
            return None
        try:
            return self._signer.sign_jwt(claims, typ=TYP)
        except CAError as exc:
            # authd's own failure, not the caller's: an error Envoy's status_on_error answers,
            # logged as one line (no traceback per request).
            raise PolicyError(f"cannot mint a Txn-Token: {exc}") from None


def user_scope(identities: Identities) -> tuple[str, ...] | None:
    """The verified end user's scope (``scope``, else ``scp``), if the token has one."""
    user = identities.user
    if user is None:
        return None
    for name in _SCOPE_CLAIMS:
        if name in user.claims:
            return scope_of(user.claims[name]) or ()
    return None


def _subject(identities: Identities) -> tuple[str | None, str]:
    if identities.user is not None:
        return identities.user.subject, "oidc"
    if identities.api_key is not None:
        return identities.api_key, "api_key"
    if identities.workload is not None:
        return str(identities.workload), "jwt_svid"
    if identities.peer is not None:
        return str(identities.peer), "x509"
    return None, ""


def _client_ip(ctx: CheckContext) -> str:
    address = ctx.source_address or ctx.context_extensions.get(CLIENT_IP_EXTENSION, "")
    if address.startswith("["):  # [v6]:port
        return address[1:].partition("]")[0]
    if address.count(":") == 1:  # v4:port
        return address.partition(":")[0]
    return address

"""Who is calling: the identities a CheckContext proves, each verified here.

Nothing is taken on the caller's word. The mTLS peer's certificate is checked against the
CA's current bundle (or, for a federated trust domain's SVID, that domain's bundle from the
``BundleView``), a JWT-SVID against its trust domain's JWT authorities the same way, an
end-user JWT against its issuer's JWKS, an API key against the stored hashes. A credential
that is presented and fails becomes a ``CredentialProblem`` (the pipeline denies on it); an
absent credential is simply absent.

Verification results, good and bad, are cached (``TtlCache``), so a credential seen again
costs a hash and a dict lookup. Cache keys hold everything the result depends on: the
credential's SHA-256, the audience, the bundle's ``sequence`` (so a CA rotation or a
revoked authority invalidates at once) and the issuers' JWKS generation. Successes live
until the credential expires, failures only ``failure_ttl`` (5 s), enough to blunt a flood.
Revocation is *not* cached: ``is_revoked`` is asked on every request.

Every credential is bounded before a parser sees it: a bearer token is at most
``MAX_TOKEN_BYTES`` and its header and payload JSON at most ``bounded_json.MAX_JSON_DEPTH``
levels deep (``token_claims.unverified_claims``, before any verifier parses it); a
forwarded peer certificate is at most ``MAX_PEER_CERTIFICATE_BYTES``. Past a bound it is a
``CredentialProblem`` naming the bound (a 401 deny). A parser failing in a way not foreseen
raises ``MalformedRequest`` (a 400 deny, logged with its traceback by the pipeline), never
an error that Envoy could be configured to let through.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

import jwt
from cryptography import x509

from authd.authz.api_keys import ApiKeyStore
from authd.authz.identity_settings import (
    API_KEY,
    JWT_SVID,
    MAX_PEER_CERTIFICATE_BYTES,
    PEER,
    TXN_TOKEN,
    USER_JWT,
    IdentitySettings,
    IssuerSettings,
)
from authd.authz.jwks import (
    JwksCache,
    JwksError,
)
from authd.authz.token_cache import TtlCache
from authd.authz.token_claims import (
    MAX_TOKEN_BYTES,
    is_time,
    pyjwt_reason,
    sha256,
    short,
    unverified_claims,
)
from authd.authz.txn_tokens import TxnTokens, certificate_thumbprint, mints_here
from authd.check.errors import MalformedRequest
from authd.check.model import (
    CheckContext,
    CredentialProblem,
    Identities,
    TxnToken,
    UserIdentity,
)
from authd.ports.bundle_view import BundleView
from authd.ports.revocation_view import NeverRevoked, RevocationView
from ca.bundle import TrustBundle
from ca.clock import Clock
from ca.errors import InvalidSpiffeId, VerificationError
from ca.jwtsvid import verify_jwt_svid
from ca.revocation_view import RevocationQuery
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.x509svid import spiffe_id_of, verify_x509_svid

# The settings and kinds live in identity_settings; importers may keep naming them here.
__all__ = [
    "API_KEY",
    "JWT_SVID",
    "MAX_PEER_CERTIFICATE_BYTES",
    "PEER",
    "TXN_TOKEN",
    "USER_JWT",
    "IdentityResolver",
    "IdentitySettings",
    "IssuerSettings",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _VerifiedPeer:
    spiffe_id: SpiffeId
    text: str  # str(spiffe_id), compared with the principal on every request
    serial: str
    # A federated peer: the foreign bundle it was verified with (None for our own). The
    # cached result holds only while that trust domain's bundle is still this one.
    foreign: TrustBundle | None = None


@dataclass(frozen=True, slots=True)
class _VerifiedWorkload:
    spiffe_id: SpiffeId
    text: str
    jti: str | None
    foreign: TrustBundle | None = None  # as for _VerifiedPeer


_PeerResult = _VerifiedPeer | CredentialProblem
_TokenResult = _VerifiedWorkload | UserIdentity | CredentialProblem
# (sha256 of the token, header, audience, bundle.sequence, JWKS generation)
_TokenKey = tuple[bytes, str, tuple[str, ...], int, int]


@dataclass(slots=True)
class _Found:
    peer: SpiffeId | None = None
    peer_serial: str | None = None
    workload: SpiffeId | None = None
    jti: str | None = None
    user: UserIdentity | None = None
    api_key: str | None = None
    txn_token: TxnToken | None = None
    problems: list[CredentialProblem] = field(default_factory=list)


class IdentityResolver:
    """Turns a CheckContext into verified ``Identities``; one per daemon (it owns the caches)."""

    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        bundles: BundleView,
        clock: Clock,
        settings: IdentitySettings | None = None,
        api_keys: ApiKeyStore | None = None,
        revocations: RevocationView | None = None,
        txn_tokens: TxnTokens | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.txn_tokens = txn_tokens
        self.settings = s = settings or IdentitySettings()
        self._bundles = bundles
        self._clock = clock
        self._api_keys = api_keys
        self._revocations = revocations or NeverRevoked()
        self._is_revoked = self._revocations.is_revoked
        self._foreign = frozenset(TrustDomain.parse(n) for n in s.allowed_foreign_trust_domains)
        self._issuers: dict[str, dict[str, IssuerSettings]] = {}
        for issuer in s.issuers:
            self._issuers.setdefault(issuer.header, {})[issuer.issuer] = issuer
        self._token_headers = tuple(dict.fromkeys([s.jwt_svid_header, *self._issuers]))
        self._jwks = {
            issuer.name: JwksCache(
                issuer.jwks_uri,
                clock=clock,
                issuer_name=issuer.name,
                default_ttl=s.jwks_ttl,
                min_refresh_interval=s.jwks_min_refresh_interval,
                timeout=s.jwks_timeout,
            )
            for issuer in s.issuers
        }
        # Keyed by the certificate text itself (public, and hashing it each time cost more than
        # the lookup); bearer tokens are keyed by their digest, never kept in memory.
        self.peer_cache: TtlCache[tuple[str, int], _PeerResult] = TtlCache(
            clock, max_entries=s.cache_size
        )
        self.token_cache: TtlCache[_TokenKey, _TokenResult] = TtlCache(
            clock, max_entries=s.cache_size
        )

    def jwks(self, issuer_name: str) -> JwksCache:
        """The JWKS cache of a configured issuer (for metrics and tests)."""
        return self._jwks[issuer_name]

    async def resolve(self, ctx: CheckContext) -> Identities:
        bundle = self._bundles.bundle  # one snapshot for the whole request
        found = _Found()
        if ctx.source_certificate:
            self._peer_from_certificate(ctx, bundle, found)
        elif ctx.source_principal and self.settings.trust_principal_without_certificate:
            self._peer_from_principal(ctx.source_principal, found)
        for header in self._token_headers:
            value = ctx.headers.get(header)
            if value is not None:
                await self._from_token_header(ctx, header, value, bundle, found)
        if self._api_keys is not None:
            presented = ctx.headers.get(self.settings.api_key_header)
            if presented is not None:
                found.api_key = self._api_keys.lookup(presented)
                if found.api_key is None:
                    found.problems.append(CredentialProblem(API_KEY, "unknown API key"))
        if found.user is not None and "cnf" in found.user.claims:
            self._check_binding(ctx, found)
        txn_tokens = self.txn_tokens
        if txn_tokens is not None and not mints_here(ctx, txn_tokens.settings):
            # At a front door that mints, a client's own Txn-Token is ignored (and removed).
            value = ctx.headers.get(txn_tokens.settings.header)
            if value is not None:
                self._txn_token(value, bundle, found)
        return Identities(
            peer=found.peer,
            peer_serial=found.peer_serial,
            workload=found.workload,
            workload_token_id=found.jti,
            user=found.user,
            api_key=found.api_key,
            txn_token=found.txn_token,
            problems=tuple(found.problems),
        )

    def _check_binding(self, ctx: CheckContext, found: _Found) -> None:
        """RFC 8705: a token with ``cnf.x5t#S256`` counts only with that client certificate."""
        assert found.user is not None
        cnf = found.user.claims["cnf"]
        expected = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if not isinstance(expected, str):
            reason = "user-jwt/cnf: the token is bound by a confirmation method authd cannot check"
        elif len(ctx.source_certificate) > MAX_PEER_CERTIFICATE_BYTES:
            reason = "user-jwt/cnf: the client certificate is too long"
        elif certificate_thumbprint(ctx.source_certificate) == expected:
            return
        elif not ctx.source_certificate:
            reason = "user-jwt/cnf: the token is bound to a client certificate; none was presented"
        else:
            reason = "user-jwt/cnf: the client certificate is not the one the token is bound to"
        found.user = None
        found.problems.append(CredentialProblem(USER_JWT, reason))

    def _txn_token(self, value: str, bundle: TrustBundle, found: _Found) -> None:
        assert self.txn_tokens is not None
        try:
            result = self.txn_tokens.verify(value, bundle)
        except Exception as exc:  # a parser failed on the token the caller presented
            raise MalformedRequest(
                TXN_TOKEN, f"token cannot be read: {type(exc).__name__}"
            ) from exc
        if isinstance(result, CredentialProblem):
            found.problems.append(result)
        elif self._is_revoked(RevocationQuery(spiffe_id=result.req_wl, txn=result.txn)):
            found.problems.append(
                CredentialProblem(
                    TXN_TOKEN, "revoked transaction, or its requesting workload", revoked=True
                )
            )
        else:
            found.txn_token = result

    # --- the mTLS peer ------------------------------------------------------------------

    def _peer_from_certificate(self, ctx: CheckContext, bundle: TrustBundle, found: _Found) -> None:
        if len(ctx.source_certificate) > MAX_PEER_CERTIFICATE_BYTES:
            found.problems.append(
                CredentialProblem(
                    PEER,
                    f"x509-svid/size: peer certificate is longer than "
                    f"{MAX_PEER_CERTIFICATE_BYTES} bytes",
                )
            )
            return
        try:
            result = self._verified_certificate(ctx.source_certificate, bundle)
        except Exception as exc:  # a parser failed on what the caller presented
            raise MalformedRequest(PEER, f"cannot be read: {type(exc).__name__}") from exc
        if isinstance(result, CredentialProblem):
            found.problems.append(result)
            return
        if ctx.source_principal and ctx.source_principal != result.text:
            found.problems.append(
                CredentialProblem(
                    PEER,
                    "peer/principal: source principal is not the certificate's SPIFFE ID",
                )
            )
            return
        if self._is_revoked(RevocationQuery(serial=result.serial, spiffe_id=result.text)):
            found.problems.append(
                CredentialProblem(PEER, "revoked peer certificate or SPIFFE ID", revoked=True)
            )
            return
        found.peer, found.peer_serial = result.spiffe_id, result.serial

    def _verified_certificate(self, encoded: str, bundle: TrustBundle) -> _PeerResult:
        """Verify (or recall verifying) the URL-encoded PEM chain Envoy sent."""
        key = (encoded, bundle.sequence)
        cached = self.peer_cache.get(key)
        if cached is not None and self._still_trusted(cached):
            return cached
        now = self._clock.now()
        result: _PeerResult
        foreign: TrustBundle | None = None
        try:
            chain = x509.load_pem_x509_certificates(unquote(encoded).encode(errors="surrogatepass"))
            trusted = bundle
            named = spiffe_id_of(chain[0]) if chain else None
            if named is not None and not named.member_of(self.trust_domain):
                # A federated trust domain's SVID: verified against that domain's bundle.
                foreign = self._bundles.bundle_for(named.trust_domain)
                if foreign is None:
                    raise VerificationError(
                        "x509-svid/trust-domain",
                        f"{named} is not in trust domain {self.trust_domain} "
                        "nor in one federated with it",
                    )
                trusted = foreign
            spiffe_id = verify_x509_svid(
                chain,
                trust_domain=trusted.trust_domain,
                roots=trusted.x509_authorities,
                now=now,
            )
        except VerificationError as exc:
            result, expires_at = CredentialProblem(PEER, str(exc)), now + self.settings.failure_ttl
        except ValueError:
            result = CredentialProblem(PEER, "x509-svid/pem: peer certificate is not PEM")
            expires_at = now + self.settings.failure_ttl
        else:
            serial = format(chain[0].serial_number, "x")
            result = _VerifiedPeer(spiffe_id, str(spiffe_id), serial, foreign)
            # Valid until the first certificate of the chain expires; a bundle change
            # (rotation, a revoked authority) changes the key instead.
            expires_at = min(c.not_valid_after_utc.timestamp() for c in chain)
        self.peer_cache.put(key, result, expires_at=expires_at)
        return result

    def _still_trusted(self, cached: _PeerResult | _TokenResult) -> bool:
        """A federated result holds only while its trust domain's bundle is unchanged."""
        foreign = getattr(cached, "foreign", None)
        if foreign is None:
            return True
        return self._bundles.bundle_for(foreign.trust_domain) is foreign

    def _peer_from_principal(self, principal: str, found: _Found) -> None:
        """Accept Envoy's ``source.principal`` alone (see IdentitySettings for the trade-off)."""
        try:
            spiffe_id = SpiffeId.parse(principal)
        except InvalidSpiffeId as exc:
            found.problems.append(CredentialProblem(PEER, f"peer/spiffe-id: {exc}"))
            return
        if not spiffe_id.is_workload:
            found.problems.append(
                CredentialProblem(PEER, f"peer/spiffe-id: {spiffe_id} has no path")
            )
            return
        if not spiffe_id.member_of(self.trust_domain) and (
            spiffe_id.trust_domain not in self._foreign
            and self._bundles.bundle_for(spiffe_id.trust_domain) is None
        ):
            found.problems.append(
                CredentialProblem(
                    PEER, f"peer/trust-domain: {spiffe_id.trust_domain} is not trusted"
                )
            )
            return
        if self._is_revoked(RevocationQuery(spiffe_id=principal)):
            found.problems.append(CredentialProblem(PEER, "revoked SPIFFE ID", revoked=True))
            return
        found.peer = spiffe_id

    # --- tokens -------------------------------------------------------------------------

    async def _from_token_header(
        self, ctx: CheckContext, header: str, value: str, bundle: TrustBundle, found: _Found
    ) -> None:
        if header == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() != "bearer":
                return  # Basic and other schemes are not ours to judge
            token = token.strip()
        else:
            token = value.strip()
        if not token:
            found.problems.append(
                CredentialProblem(self._kind_for(header), "jwt/empty: token is empty")
            )
            return
        if len(token) > MAX_TOKEN_BYTES:
            found.problems.append(
                CredentialProblem(
                    self._kind_for(header),
                    f"jwt/size: token is longer than {MAX_TOKEN_BYTES} bytes",
                )
            )
            return
        audience_override = ctx.context_extensions.get("audience")
        audience = (audience_override,) if audience_override else self.settings.jwt_svid_audiences
        try:
            result = await self._token(header, token, audience, bundle)
        except Exception as exc:  # a parser failed on the token the caller presented
            raise MalformedRequest(
                self._kind_for(header), f"token cannot be read: {type(exc).__name__}"
            ) from exc
        if isinstance(result, CredentialProblem):
            found.problems.append(result)
        elif isinstance(result, _VerifiedWorkload):
            query = RevocationQuery(spiffe_id=result.text, jti=result.jti)
            if self._is_revoked(query):
                found.problems.append(
                    CredentialProblem(JWT_SVID, "revoked JWT-SVID or SPIFFE ID", revoked=True)
                )
            elif found.workload is None:
                found.workload, found.jti = result.spiffe_id, result.jti
        elif found.user is None:
            found.user = result

    async def _token(
        self, header: str, token: str, audience: tuple[str, ...], bundle: TrustBundle
    ) -> _TokenResult:
        digest = sha256(token)
        cached = self.token_cache.get(
            (digest, header, audience, bundle.sequence, self._jwks_generation())
        )
        if cached is not None and self._still_trusted(cached):
            return cached
        result, expires_at = await self._verify_token(header, token, audience, bundle)
        # The generation is read again: a refetch during verification (unknown kid) gave
        # the keys this result was verified with.
        self.token_cache.put(
            (digest, header, audience, bundle.sequence, self._jwks_generation()),
            result,
            expires_at=expires_at,
        )
        return result

    def _jwks_generation(self) -> int:
        # A sum of counters that only grow changes whenever any of them does.
        return sum(cache.generation for cache in self._jwks.values())

    def _kind_for(self, header: str) -> str:
        """The kind of an unclassifiable token: a JWT-SVID if only SVIDs are expected there."""
        only_svids = header == self.settings.jwt_svid_header and header not in self._issuers
        return JWT_SVID if only_svids else USER_JWT

    async def _verify_token(
        self, header: str, token: str, audience: tuple[str, ...], bundle: TrustBundle
    ) -> tuple[_TokenResult, float]:
        """Verify ``token``; returns the result and until when it may be cached."""
        failed_until = self._clock.now() + self.settings.failure_ttl
        claims = unverified_claims(token)
        if isinstance(claims, str):
            return CredentialProblem(self._kind_for(header), claims), failed_until
        sub, iss = claims.get("sub"), claims.get("iss")
        if header == self.settings.jwt_svid_header and (
            isinstance(sub, str) and sub.startswith("spiffe://")
        ):
            return self._verify_jwt_svid(token, audience, self._bundle_of_subject(sub, bundle))
        issuer = self._issuers.get(header, {}).get(iss) if isinstance(iss, str) else None
        if issuer is None:
            untrusted = CredentialProblem(USER_JWT, "user-jwt/iss: token issuer not trusted")
            return untrusted, failed_until
        return await self._verify_user_jwt(token, issuer, failed_until)

    def _bundle_of_subject(self, sub: str, bundle: TrustBundle) -> TrustBundle:
        """The bundle a JWT-SVID of ``sub`` is verified with: a federated trust domain's own
        (when we federate with it), else ours (which then refuses it, naming why)."""
        try:
            named = SpiffeId.parse(sub).trust_domain
        except InvalidSpiffeId:
            return bundle
        if named == self.trust_domain:
            return bundle
        return self._bundles.bundle_for(named) or bundle

    def _verify_jwt_svid(
        self, token: str, audience: tuple[str, ...], bundle: TrustBundle
    ) -> tuple[_TokenResult, float]:
        now = self._clock.now()
        failed_until = now + self.settings.failure_ttl
        if not audience:
            return CredentialProblem(JWT_SVID, "jwt-svid/aud: no audience configured"), failed_until
        try:
            svid = verify_jwt_svid(
                token,
                trust_domain=bundle.trust_domain,
                keys=bundle.jwt_authorities,
                audience=audience,
                now=now,
            )
        except VerificationError as exc:
            return CredentialProblem(JWT_SVID, str(exc)), failed_until
        jti = svid.claims.get("jti")
        foreign = None if bundle.trust_domain == self.trust_domain else bundle
        verified = _VerifiedWorkload(
            svid.spiffe_id,
            str(svid.spiffe_id),
            jti if isinstance(jti, str) and jti else None,
            foreign,
        )
        return verified, float(svid.expiry)

    async def _verify_user_jwt(
        self, token: str, issuer: IssuerSettings, failed_until: float
    ) -> tuple[_TokenResult, float]:
        def problem(reason: str) -> tuple[_TokenResult, float]:
            return CredentialProblem(USER_JWT, reason), failed_until

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return problem("user-jwt/compact: not a compact JWS")
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in issuer.algorithms:
            return problem(
                f"user-jwt/alg: algorithm {short(alg)} is not allowed for issuer {issuer.name}"
            )
        if kid is not None and not isinstance(kid, str):
            return problem("user-jwt/kid: kid is not a string")
        try:
            key = await self._jwks[issuer.name].key(kid)
        except JwksError as exc:
            return problem(str(exc))
        if not key.can_verify(alg):
            return problem(f"user-jwt/alg: the issuer's key {short(kid)} cannot verify {alg}")
        try:
            # PyJWT reads the real time, so exp/nbf/iat are checked below against our clock.
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=[alg],
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            return problem(pyjwt_reason(exc, issuer.name, issuer.issuer))
        now = self._clock.now()
        exp, nbf, iat = claims["exp"], claims.get("nbf"), claims.get("iat")
        if not is_time(exp) or any(t is not None and not is_time(t) for t in (nbf, iat)):
            return problem("user-jwt/claims: exp, nbf and iat must be numbers")
        if now >= exp + issuer.leeway:
            return problem("user-jwt/exp: token has expired")
        if nbf is not None and now + issuer.leeway < nbf:
            return problem("user-jwt/nbf: token is not valid yet")
        if iat is not None and now + issuer.leeway < iat:
            return problem("user-jwt/iat: token is issued in the future")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            return problem("user-jwt/sub: sub must be a non-empty string")
        user = UserIdentity(issuer.issuer, sub, MappingProxyType(claims))
        return user, float(exp + issuer.leeway)

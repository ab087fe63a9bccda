"""What the identity resolver is told: the credential kinds, its bounds, and its settings
(which credentials are trusted, where they are found, how long results are cached)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from authd.authz.jwks import DEFAULT_TTL, FETCH_TIMEOUT, MIN_REFRESH_INTERVAL
from ca.jwtsvid import ALLOWED_ALGORITHMS
from ca.spiffe_id import TrustDomain

__all__ = [
    "API_KEY",
    "JWT_SVID",
    "MAX_PEER_CERTIFICATE_BYTES",
    "PEER",
    "TXN_TOKEN",
    "USER_JWT",
    "IdentitySettings",
    "IssuerSettings",
]

PEER = "peer_certificate"
JWT_SVID = "jwt_svid"
USER_JWT = "user_jwt"
API_KEY = "api_key"
TXN_TOKEN = "txn_token"  # noqa: S105 (a credential kind, not a secret)

# Far above any real chain (three certificates are ~4 kB), below Envoy's 60 KiB header limit.
MAX_PEER_CERTIFICATE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class IssuerSettings:
    """An external issuer of end-user JWTs (an OIDC provider), trusted for ``audiences``."""

    name: str
    issuer: str  # the tokens' ``iss``
    jwks_uri: str
    audiences: tuple[str, ...]  # a token's ``aud`` must hold at least one of these
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    header: str = "authorization"  # "authorization" means the Bearer scheme; else raw value
    leeway: float = 60.0  # seconds of clock skew allowed on exp, nbf and iat

    def __post_init__(self) -> None:
        if not self.name or not self.issuer:
            raise ValueError("an issuer needs a name and an issuer (iss) value")
        if urlsplit(self.jwks_uri).scheme not in ("http", "https"):
            raise ValueError(f"issuer {self.name}: jwks_uri must be an http or https URL")
        if not self.audiences or not all(self.audiences):
            # Without an audience any token of the issuer, minted for any application,
            # would do.
            raise ValueError(f"issuer {self.name}: at least one audience is required")
        bad = [a for a in self.algorithms if a not in ALLOWED_ALGORITHMS]
        if bad or not self.algorithms:
            raise ValueError(
                f"issuer {self.name}: algorithms must be chosen from "
                f"{sorted(ALLOWED_ALGORITHMS)} (never none or HMAC); got {bad or 'none'}"
            )
        if self.leeway < 0:
            raise ValueError(f"issuer {self.name}: leeway must not be negative")
        object.__setattr__(self, "header", self.header.lower())


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """How credentials are found in a request and which ones are trusted.

    ``jwt_svid_audiences``: every one of them must be in a JWT-SVID's ``aud`` (the rule of
    ``ca.jwtsvid.verify_jwt_svid``); a route's ``context_extensions["audience"]`` replaces
    them. ``trust_principal_without_certificate``: when Envoy sends the mTLS peer's
    ``source.principal`` but not its certificate (``include_peer_certificate`` off), the
    principal is accepted as the peer, because Envoy itself validated the chain against the
    trust bundle we give it over SDS. The price: that trust extends to whatever bundle
    Envoy was configured with, a revoked or foreign authority in a stale static bundle
    included, and there is no serial to check against revocation. Turn it off (and
    ``include_peer_certificate`` on) to have authd verify every chain itself; a principal
    alone is then ignored, leaving the peer unauthenticated.
    """

    jwt_svid_header: str = "authorization"  # "authorization": the Bearer scheme; else raw
    jwt_svid_audiences: tuple[str, ...] = ()
    issuers: tuple[IssuerSettings, ...] = ()
    api_key_header: str = "x-api-key"
    trust_principal_without_certificate: bool = True
    allowed_foreign_trust_domains: tuple[str, ...] = ()  # for principals without a cert
    cache_size: int = 10_000  # per cache: peer certificates, tokens
    failure_ttl: float = 5.0
    jwks_ttl: float = DEFAULT_TTL
    jwks_min_refresh_interval: float = MIN_REFRESH_INTERVAL
    jwks_timeout: float = FETCH_TIMEOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "jwt_svid_header", self.jwt_svid_header.lower())
        object.__setattr__(self, "api_key_header", self.api_key_header.lower())
        for name in self.allowed_foreign_trust_domains:
            TrustDomain.parse(name)  # raises InvalidSpiffeId naming what is wrong
        names = [i.name for i in self.issuers]
        if len(set(names)) != len(names):
            raise ValueError("issuer names must be unique")
        slots = [(i.header, i.issuer) for i in self.issuers]
        if len(set(slots)) != len(slots):
            raise ValueError("two issuers share an iss value and a header")

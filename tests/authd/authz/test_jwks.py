"""End-user JWTs from external issuers, and the JWKS cache that holds the issuers' keys.

A real HTTP server on 127.0.0.1 plays the identity provider: it serves a JWKS (RS256 and
ES256 keys), counts requests, and can rotate keys, fail or redirect. Time is a FakeClock,
for the JWKS freshness and rate limit as much as for token expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authd.authz.identity import IdentityResolver, IdentitySettings, IssuerSettings
from authd.authz.jwks import JsonWebKey, JwksCache, JwksError, max_age, parse_jwks
from authd.check.model import CheckContext, CredentialProblem, Identities, UserIdentity
from authd.ports.bundle_view import StaticBundles
from ca.bundle import TrustBundle, public_jwk
from ca.clock import FakeClock
from ca.jwtsvid import b64url
from ca.spiffe_id import TrustDomain

ISSUER = "https://idp.example.com"
AUDIENCE = "orders-api"
EXAMPLE = TrustDomain("example.org")

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


class IdP:
    """A JWKS endpoint: serves ``self.keys`` at /jwks and counts the requests it answers."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}  # kid -> private key
        self.requests = 0
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body: bytes | None = None  # served instead of the JWKS when set
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.requests += 1
                body = idp.body if idp.body is not None else json.dumps(idp.jwks()).encode()
                self.send_response(idp.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in idp.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks"

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {**public_jwk(key.public_key()), "kid": kid, "use": "sig"}
                for kid, key in self.keys.items()
            ]
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def idp() -> Iterator[IdP]:
    server = IdP()
    server.keys = {"rsa-1": RSA_KEY, "ec-1": EC_KEY}
    yield server
    server.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def issuer_settings(idp: IdP, **overrides: Any) -> IssuerSettings:
    settings = IssuerSettings(
        name="idp", issuer=ISSUER, jwks_uri=idp.url, audiences=(AUDIENCE,), leeway=0
    )
    return replace(settings, **overrides)


def make_resolver(idp: IdP, clock: FakeClock, **overrides: Any) -> IdentityResolver:
    return IdentityResolver(
        trust_domain=EXAMPLE,
        bundles=StaticBundles(TrustBundle(EXAMPLE)),
        clock=clock,
        settings=IdentitySettings(issuers=(issuer_settings(idp, **overrides),)),
    )


def sign(key: Any, kid: str | None, clock: FakeClock, alg: str = "RS256", **claims: Any) -> str:
    now = int(clock.now())
    payload = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + 300}
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def resolve(resolver: IdentityResolver, token: str, header: str = "authorization") -> Identities:
    value = f"Bearer {token}" if header == "authorization" else token
    ctx = CheckContext(method="GET", host="api", path="/", headers={header: value})
    return asyncio.run(resolver.resolve(ctx))


def problem_of(identities: Identities, token: str) -> CredentialProblem:
    assert identities.user is None
    assert len(identities.problems) == 1, identities.problems
    problem = identities.problems[0]
    assert problem.kind == "user_jwt"
    assert token not in problem.reason
    return problem


# --- end-user JWTs through the resolver ---------------------------------------------------


@pytest.mark.parametrize(("kid", "alg"), [("rsa-1", "RS256"), ("ec-1", "ES256")])
def test_valid_user_jwt_gives_the_user(idp, clock, kid, alg):
    token = sign(idp.keys[kid], kid, clock, alg, email="alice@example.com")
    identities = resolve(make_resolver(idp, clock), token)
    assert identities.problems == ()
    user = identities.user
    assert isinstance(user, UserIdentity)
    assert (user.issuer, user.subject) == (ISSUER, "alice")
    assert user.claims["email"] == "alice@example.com"
    assert identities.authenticated
    assert identities.workload is None


def test_user_jwt_from_an_unconfigured_issuer_is_not_trusted(idp, clock):
    token = sign(RSA_KEY, "rsa-1", clock, iss="https://idp.example.com.evil")
    identities = resolve(make_resolver(idp, clock), token)
    assert problem_of(identities, token).reason == "user-jwt/iss: token issuer not trusted"
    assert idp.requests == 0


def test_user_jwt_for_another_audience_is_a_problem(idp, clock):
    token = sign(RSA_KEY, "rsa-1", clock, aud="billing-api")
    reason = problem_of(resolve(make_resolver(idp, clock), token), token).reason
    assert reason.startswith("user-jwt/aud")


def test_user_jwt_audience_may_be_any_of_the_issuers_audiences(idp, clock):
    token = sign(RSA_KEY, "rsa-1", clock, aud=["billing-api", "orders-api"])
    resolver = make_resolver(idp, clock, audiences=("web", AUDIENCE))
    assert resolve(resolver, token).user is not None


def test_user_jwt_expires_by_the_injected_clock_even_after_it_was_cached(idp, clock):
    token = sign(RSA_KEY, "rsa-1", clock, exp=int(clock.now()) + 60)
    resolver = make_resolver(idp, clock)
    assert resolve(resolver, token).user is not None
    clock.advance(60)
    assert problem_of(resolve(resolver, token), token).reason == "user-jwt/exp: token has expired"


def test_leeway_extends_expiry_by_that_many_seconds(idp, clock):
    token = sign(RSA_KEY, "rsa-1", clock, exp=int(clock.now()) - 20)
    assert resolve(make_resolver(idp, clock, leeway=30), token).user is not None
    reason = problem_of(resolve(make_resolver(idp, clock, leeway=10), token), token).reason
    assert reason == "user-jwt/exp: token has expired"


def test_user_jwt_before_its_nbf_is_a_problem(idp, clock):
    token = sign(RSA_KEY, "rsa-1", clock, nbf=int(clock.now()) + 120)
    resolver = make_resolver(idp, clock)
    reason = problem_of(resolve(resolver, token), token).reason
    assert reason == "user-jwt/nbf: token is not valid yet"
    clock.advance(120)
    assert resolve(resolver, token).user is not None


def test_user_jwt_issued_in_the_future_is_a_problem(idp, clock):
    token = sign(RSA_KEY, "rsa-1", clock, iat=int(clock.now()) + 120)
    reason = problem_of(resolve(make_resolver(idp, clock), token), token).reason
    assert reason == "user-jwt/iat: token is issued in the future"


@pytest.mark.parametrize("claim", ["exp", "sub", "aud"])
def test_user_jwt_without_a_required_claim_is_a_problem(idp, clock, claim):
    token = sign(RSA_KEY, "rsa-1", clock, **{claim: None})
    reason = problem_of(resolve(make_resolver(idp, clock), token), token).reason
    assert reason == f"user-jwt/claims: token has no {claim} claim"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "2030-01-01", True])
def test_time_claims_must_be_finite_numbers(idp, clock, claim, value):
    token = sign(RSA_KEY, "rsa-1", clock, **{claim: value})
    reason = problem_of(resolve(make_resolver(idp, clock), token), token).reason
    assert reason.startswith("user-jwt/")
    assert reason != "user-jwt/signature: signature does not verify"


def test_hs256_user_jwt_is_rejected_before_any_key_is_fetched(idp, clock):
    # The classic confusion: HMAC "signed" with the issuer's public key as the secret.
    # (PyJWT refuses to make such a token, so it is made by hand.)
    secret = RSA_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
    claims = {"iss": ISSUER, "sub": "mallory", "aud": AUDIENCE, "exp": int(clock.now()) + 60}
    signing_input = ".".join(b64url(json.dumps(part).encode()) for part in (header, claims))
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64url(mac)}"
    reason = problem_of(resolve(make_resolver(idp, clock), token), token).reason
    assert reason == "user-jwt/alg: algorithm 'HS256' is not allowed for issuer idp"
    assert idp.requests == 0


def test_alg_none_user_jwt_is_rejected(idp, clock):
    token = sign(None, "rsa-1", clock, alg="none")
    reason = problem_of(resolve(make_resolver(idp, clock), token), token).reason
    assert reason == "user-jwt/alg: algorithm 'none' is not allowed for issuer idp"
    assert idp.requests == 0


def test_algorithm_the_issuer_does_not_use_is_rejected(idp, clock):
    token = sign(EC_KEY, "ec-1", clock, alg="ES256")
    resolver = make_resolver(idp, clock, algorithms=("RS256",))
    assert problem_of(resolve(resolver, token), token).reason.startswith("user-jwt/alg")


def test_user_jwt_signed_by_another_key_under_a_known_kid_is_a_problem(idp, clock):
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = sign(forger, "rsa-1", clock)
    reason = problem_of(resolve(make_resolver(idp, clock), token), token).reason
    assert reason == "user-jwt/signature: signature does not verify"


def test_key_of_the_wrong_type_for_the_algorithm_is_refused(idp, clock):
    # kid names the EC key but the header says RS256: never hand an EC key to RSA.
    token = sign(RSA_KEY, "ec-1", clock, alg="RS256")
    reason = problem_of(resolve(make_resolver(idp, clock), token), token).reason
    assert reason == "user-jwt/alg: the issuer's key 'ec-1' cannot verify RS256"


def test_unknown_kid_refetches_once_then_waits_for_the_rate_limit(idp, clock):
    resolver = make_resolver(idp, clock)
    assert resolve(resolver, sign(RSA_KEY, "rsa-1", clock)).user is not None
    assert idp.requests == 1
    clock.advance(31)
    ghost_key = ec.generate_private_key(ec.SECP256R1())
    first = sign(ghost_key, "ghost-1", clock, alg="ES256")
    reason = problem_of(resolve(resolver, first), first).reason
    assert reason == "user-jwt/kid: kid 'ghost-1' is not in the JWKS of idp"
    assert idp.requests == 2  # one refetch for the unknown kid
    clock.advance(1)
    second = sign(ghost_key, "ghost-2", clock, alg="ES256")
    assert problem_of(resolve(resolver, second), second).reason.startswith("user-jwt/kid")
    assert idp.requests == 2  # within 30 s of the last fetch: none


def test_key_rotation_at_the_idp_is_picked_up_after_the_rate_limit_window(idp, clock):
    resolver = make_resolver(idp, clock)
    old = sign(RSA_KEY, "rsa-1", clock)
    assert resolve(resolver, old).user is not None
    new_key = ec.generate_private_key(ec.SECP256R1())
    idp.keys = {"ec-2": new_key}  # the IdP rotates: the old key is gone
    clock.advance(1)
    new = sign(new_key, "ec-2", clock, alg="ES256")
    assert problem_of(resolve(resolver, new), new).reason.startswith("user-jwt/kid")
    assert idp.requests == 1
    clock.advance(30)
    assert resolve(resolver, new).user is not None
    assert idp.requests == 2
    # The cached verdict on the old token does not outlive its key.
    assert problem_of(resolve(resolver, old), old).reason.startswith("user-jwt/kid")


def test_second_check_with_the_same_user_jwt_hits_the_cache(idp, clock):
    resolver = make_resolver(idp, clock)
    token = sign(EC_KEY, "ec-1", clock, alg="ES256")
    resolve(resolver, token)
    assert resolve(resolver, token).user is not None
    assert (resolver.token_cache.hits, resolver.token_cache.misses) == (1, 1)


def test_user_jwt_in_an_issuer_specific_header_is_read_raw(idp, clock):
    resolver = make_resolver(idp, clock, header="X-User-Token")
    token = sign(RSA_KEY, "rsa-1", clock)
    assert resolve(resolver, token, header="x-user-token").user is not None
    assert resolve(resolver, token).problems == (
        CredentialProblem("user_jwt", "user-jwt/iss: token issuer not trusted"),
    )


def test_unreachable_jwks_is_a_problem(clock):
    resolver = IdentityResolver(
        trust_domain=EXAMPLE,
        bundles=StaticBundles(TrustBundle(EXAMPLE)),
        clock=clock,
        settings=IdentitySettings(
            issuers=(
                IssuerSettings(
                    name="down",
                    issuer=ISSUER,
                    jwks_uri="http://127.0.0.1:9/jwks",  # discard port: nothing listens
                    audiences=(AUDIENCE,),
                ),
            ),
            jwks_timeout=1,
        ),
    )
    token = sign(RSA_KEY, "rsa-1", clock)
    reason = problem_of(resolve(resolver, token), token).reason
    assert reason == "user-jwt/jwks: the JWKS of down is unavailable"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"algorithms": ("HS256",)}, "never none or HMAC"),
        ({"algorithms": ("RS256", "none")}, "never none or HMAC"),
        ({"algorithms": ()}, "never none or HMAC"),
        ({"audiences": ()}, "audience"),
        ({"jwks_uri": "file:///etc/jwks.json"}, "http or https"),
        ({"leeway": -1}, "leeway"),
    ],
)
def test_issuer_settings_refuse_unsafe_values(overrides, message):
    base = {"name": "idp", "issuer": ISSUER, "jwks_uri": "https://idp/jwks", "audiences": ("a",)}
    with pytest.raises(ValueError, match=message):
        IssuerSettings(**{**base, **overrides})


# --- JwksCache ----------------------------------------------------------------------------


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_keys_are_fetched_once_and_kept_for_the_default_ttl(idp, clock):
    cache = JwksCache(idp.url, clock=clock)
    assert run(cache.key("rsa-1")).public_key == RSA_KEY.public_key()
    assert run(cache.key("ec-1")).public_key == EC_KEY.public_key()
    clock.advance(599)
    run(cache.key("rsa-1"))
    assert idp.requests == 1
    clock.advance(1)
    run(cache.key("rsa-1"))
    assert idp.requests == 2


def test_cache_control_max_age_sets_how_long_keys_stay_fresh(idp, clock):
    idp.headers["Cache-Control"] = "public, max-age=120"
    cache = JwksCache(idp.url, clock=clock)
    run(cache.key("rsa-1"))
    clock.advance(119)
    run(cache.key("rsa-1"))
    assert idp.requests == 1
    clock.advance(1)
    run(cache.key("rsa-1"))
    assert idp.requests == 2


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("max-age=60", 60.0),
        ("public, max-age=3600, must-revalidate", 3600.0),
        ("", None),
        ("no-store", 0.0),
        ("s-maxage=10", None),
    ],
)
def test_max_age_reads_cache_control(header, seconds):
    assert max_age(header) == seconds


@pytest.mark.parametrize("interval", [30, 0])
def test_concurrent_callers_share_one_fetch(idp, clock, interval):
    cache = JwksCache(idp.url, clock=clock, min_refresh_interval=interval)

    async def many() -> list[JsonWebKey]:
        return await asyncio.gather(*(cache.key("ec-1") for _ in range(10)))

    keys = run(many())
    assert idp.requests == 1
    assert {k.kid for k in keys} == {"ec-1"}


def test_refresh_rate_limit_is_configurable(idp, clock):
    cache = JwksCache(idp.url, clock=clock, min_refresh_interval=5)
    run(cache.key("rsa-1"))
    clock.advance(5)
    with pytest.raises(JwksError):
        run(cache.key("unknown"))
    assert idp.requests == 2


def test_failed_fetch_is_an_error_and_is_retried_only_after_the_window(idp, clock):
    idp.status = 500
    cache = JwksCache(idp.url, clock=clock, issuer_name="idp")
    with pytest.raises(JwksError) as raised:
        run(cache.key("rsa-1"))
    assert raised.value.rule == "user-jwt/jwks"
    with pytest.raises(JwksError):
        run(cache.key("rsa-1"))
    assert idp.requests == 1
    idp.status = 200
    clock.advance(30)
    assert run(cache.key("rsa-1")).kid == "rsa-1"
    assert idp.requests == 2


def test_known_keys_stay_in_use_when_a_refresh_fails(idp, clock):
    cache = JwksCache(idp.url, clock=clock)
    run(cache.key("rsa-1"))
    idp.status = 503
    clock.advance(600)
    assert run(cache.key("rsa-1")).kid == "rsa-1"
    assert idp.requests == 2


@pytest.mark.parametrize(
    "body",
    [
        b'{"keys": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",  # past Python's recursion limit
        b'{"keys": [' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"]}",  # past authd's limit
        b'{"keys": [{"kty": "EC", "crv": ["P-256"], "x": 1, "y": {}}]}',
        b'{"keys": NaN}',
    ],
)
def test_a_malformed_jwks_is_a_failed_fetch_never_an_error_in_the_check(idp, clock, body):
    idp.body = body
    cache = JwksCache(idp.url, clock=clock, issuer_name="idp")
    with pytest.raises(JwksError, match=r"unavailable|is not in the JWKS"):
        run(cache.key("rsa-1"))


def test_known_keys_stay_in_use_when_a_refresh_answers_nested_json(idp, clock):
    cache = JwksCache(idp.url, clock=clock)
    run(cache.key("rsa-1"))
    idp.body = b"[" * 5_000 + b"]" * 5_000
    clock.advance(600)
    assert run(cache.key("rsa-1")).kid == "rsa-1"
    assert idp.requests == 2


def test_redirect_to_a_non_http_url_is_refused(idp, clock):
    idp.status = 302
    idp.headers["Location"] = "file:///etc/passwd"
    cache = JwksCache(idp.url, clock=clock)
    with pytest.raises(JwksError, match="unavailable"):
        run(cache.key("rsa-1"))


def test_jwks_uri_must_be_http_or_https(clock):
    with pytest.raises(ValueError, match="http or https"):
        JwksCache("file:///etc/jwks.json", clock=clock)


def test_token_without_kid_needs_a_jwks_of_exactly_one_key(idp, clock):
    cache = JwksCache(idp.url, clock=clock)
    with pytest.raises(JwksError, match="holds 2 keys"):
        run(cache.key(None))
    idp.keys = {"only": EC_KEY}
    clock.advance(600)
    assert run(cache.key(None)).kid == "only"


def test_generation_grows_only_when_the_key_set_changes(idp, clock):
    cache = JwksCache(idp.url, clock=clock)
    run(cache.key("rsa-1"))
    assert cache.generation == 1
    clock.advance(600)
    run(cache.key("rsa-1"))
    assert (cache.fetches, cache.generation) == (2, 1)
    idp.keys = {"rsa-1": RSA_KEY}
    clock.advance(600)
    run(cache.key("rsa-1"))
    assert (cache.fetches, cache.generation) == (3, 2)


def test_parse_jwks_keeps_only_usable_signature_keys():
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    document = {
        "keys": [
            {**public_jwk(RSA_KEY.public_key()), "kid": "good-rsa", "alg": "RS256"},
            {**public_jwk(EC_KEY.public_key()), "kid": "good-ec", "use": "sig"},
            {**public_jwk(EC_KEY.public_key()), "kid": "encryption", "use": "enc"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"},
            {**public_jwk(weak.public_key()), "kid": "weak"},
            {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "!!", "y": "!!"},
            "not a key",
        ]
    }
    keys = parse_jwks(document)
    assert sorted(k for k in keys if k) == ["good-ec", "good-rsa"]
    assert keys["good-rsa"].algorithm == "RS256"
    with pytest.raises(ValueError, match="not a JWKS"):
        parse_jwks({"keys": "none"})


def test_a_key_verifies_only_the_algorithms_that_fit_it():
    rsa_key = JsonWebKey("r", RSA_KEY.public_key())
    ec_key = JsonWebKey("e", EC_KEY.public_key())
    pinned = JsonWebKey("p", RSA_KEY.public_key(), algorithm="PS256")
    assert rsa_key.can_verify("RS256") and rsa_key.can_verify("PS384")
    assert not rsa_key.can_verify("ES256")
    assert ec_key.can_verify("ES256")
    assert not ec_key.can_verify("ES384")  # P-256 key, P-384 algorithm
    assert not ec_key.can_verify("RS256")
    assert not ec_key.can_verify("HS256")
    assert pinned.can_verify("PS256") and not pinned.can_verify("RS256")

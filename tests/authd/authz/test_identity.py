"""IdentityResolver: identities come from verified credentials, never from the caller's word.

A real CA (SQLite store, key store, fake clock) issues the SVIDs; a second CA with the same
trust domain name but its own keys plays the impostor. End-user JWTs and JWKS fetching are
specified in test_jwks.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authd.authz.api_keys import ApiKeyEntry, ApiKeyStore, hash_api_key
from authd.authz.identity import (
    IdentityResolver,
    IdentitySettings,
    IssuerSettings,
    RevocationQuery,
)
from authd.check.model import CheckContext, CredentialProblem, Identities
from authd.ports.bundle_view import StaticBundles
from ca.bundle import TrustBundle
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.jwtsvid import b64url
from ca.keys import KeyStore
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import SQLiteStore
from ca.x509svid import X509Svid

EXAMPLE = TrustDomain("example.org")
FRONTEND = EXAMPLE.spiffe_id("/ns/web/sa/frontend")
BACKEND = EXAMPLE.spiffe_id("/ns/api/sa/backend")
HOUR = 3600.0


# --- fixtures ------------------------------------------------------------------------------


class CAs:
    """Opens real CAs on the shared fake clock and closes them at the end of the test."""

    def __init__(self, root: Path, clock: FakeClock) -> None:
        self.root = root
        self.clock = clock
        self.opened: list[CertificateAuthority] = []

    def open(self, name: str, trust_domain: TrustDomain = EXAMPLE) -> CertificateAuthority:
        directory = self.root / name
        directory.mkdir()
        authority = CertificateAuthority(
            trust_domain=trust_domain,
            store=SQLiteStore(directory / "s.db"),
            keystore=KeyStore(directory / "keys"),
            clock=self.clock,
        )
        self.opened.append(authority)
        return authority


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cas(tmp_path: Path, clock: FakeClock) -> Iterator[CAs]:
    opener = CAs(tmp_path, clock)
    yield opener
    for authority in opener.opened:
        authority.close()
        authority.store.close()


@pytest.fixture
def ca(cas: CAs) -> CertificateAuthority:
    return cas.open("ca")


@pytest.fixture
def impostor(cas: CAs) -> CertificateAuthority:
    """Another CA that also calls itself example.org: its SVIDs look right and are not ours."""
    return cas.open("impostor")


def issue(
    authority: CertificateAuthority, spiffe_id: SpiffeId = FRONTEND, ttl: float | None = None
) -> X509Svid:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    return authority.issue_x509_svid(csr, spiffe_id=spiffe_id, ttl=ttl, requester="test")


def envoy_certificate(svid: X509Svid, *, chain: bool = False) -> str:
    """``source.certificate`` as Envoy sends it: URL-encoded PEM, the leaf only by default."""
    certificates = svid.chain if chain else (svid.leaf,)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
    return quote(pem.decode())


def context(
    *,
    headers: Mapping[str, str] | None = None,
    principal: str = "",
    certificate: str = "",
    extensions: Mapping[str, str] | None = None,
) -> CheckContext:
    return CheckContext(
        method="GET",
        host="api.example.org",
        path="/orders",
        headers=headers or {},
        source_principal=principal,
        source_certificate=certificate,
        context_extensions=extensions or {},
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class RevocationHook:
    """Records every query; answers True for the SPIFFE IDs, serials and jtis in ``revoked``."""

    def __init__(self, *revoked: str) -> None:
        self.revoked = set(revoked)
        self.queries: list[RevocationQuery] = []

    def is_revoked(self, query: RevocationQuery) -> bool:
        self.queries.append(query)
        return bool({query.serial, query.spiffe_id, query.jti} & self.revoked)

    def contains(self, kind: str, target: str) -> bool:
        return target in self.revoked

    def staleness(self) -> float:
        return 0.0


def make_resolver(
    ca: CertificateAuthority,
    clock: FakeClock,
    *,
    bundles: Any = None,
    **settings: Any,
) -> IdentityResolver:
    settings.setdefault("jwt_svid_audiences", ("orders",))
    return IdentityResolver(
        trust_domain=ca.trust_domain,
        bundles=bundles or ca,
        clock=clock,
        settings=IdentitySettings(**settings),
    )


def resolve(resolver: IdentityResolver, ctx: CheckContext) -> Identities:
    return asyncio.run(resolver.resolve(ctx))


def only_problem(identities: Identities) -> CredentialProblem:
    assert len(identities.problems) == 1, identities.problems
    return identities.problems[0]


# --- the mTLS peer ------------------------------------------------------------------------


def test_peer_certificate_from_our_ca_gives_peer_and_serial(ca, clock):
    svid = issue(ca)
    identities = resolve(
        make_resolver(ca, clock),
        context(principal=str(FRONTEND), certificate=envoy_certificate(svid)),
    )
    assert identities.peer == FRONTEND
    assert identities.peer_serial == format(svid.leaf.serial_number, "x")
    assert identities.peer_serial == identities.peer_serial.lower().lstrip("0")
    assert identities.problems == ()
    assert identities.caller == FRONTEND


def test_peer_certificate_with_its_chain_verifies_too(ca, clock):
    svid = issue(ca)
    identities = resolve(
        make_resolver(ca, clock), context(certificate=envoy_certificate(svid, chain=True))
    )
    assert identities.peer == FRONTEND
    assert identities.problems == ()


def test_peer_certificate_from_a_foreign_ca_is_a_problem_not_a_peer(ca, impostor, clock):
    forged = issue(impostor, BACKEND)
    certificate = envoy_certificate(forged)
    identities = resolve(
        make_resolver(ca, clock), context(principal=str(BACKEND), certificate=certificate)
    )
    assert identities.peer is None
    assert identities.peer_serial is None
    assert not identities.authenticated
    problem = only_problem(identities)
    assert problem.kind == "peer_certificate"
    assert problem.reason.startswith("x509-svid/path-validation")
    assert not problem.revoked
    assert certificate not in problem.reason


def test_principal_that_differs_from_the_certificate_is_a_problem(ca, clock):
    svid = issue(ca, FRONTEND)
    identities = resolve(
        make_resolver(ca, clock),
        context(principal=str(BACKEND), certificate=envoy_certificate(svid)),
    )
    assert identities.peer is None
    assert only_problem(identities).reason.startswith("peer/principal")


def test_expired_peer_certificate_is_a_problem_even_after_it_was_cached(ca, clock):
    svid = issue(ca, ttl=600)
    resolver = make_resolver(ca, clock)
    ctx = context(certificate=envoy_certificate(svid))
    assert resolve(resolver, ctx).peer == FRONTEND
    clock.advance(601)
    identities = resolve(resolver, ctx)
    assert identities.peer is None
    assert only_problem(identities).reason.startswith("x509-svid/path-validation")


def test_peer_certificate_that_is_not_pem_is_a_problem(ca, clock):
    garbage = quote("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    identities = resolve(make_resolver(ca, clock), context(certificate=garbage))
    problem = only_problem(identities)
    assert problem.reason == "x509-svid/pem: peer certificate is not PEM"
    assert identities.peer is None


def test_signing_certificate_is_never_a_peer(ca, clock):
    root = ca.x509_authority.certificate
    encoded = quote(root.public_bytes(serialization.Encoding.PEM).decode())
    identities = resolve(make_resolver(ca, clock), context(certificate=encoded))
    assert identities.peer is None
    assert only_problem(identities).reason.startswith("x509-svid/")


def test_principal_without_certificate_is_trusted_by_default(ca, clock):
    identities = resolve(make_resolver(ca, clock), context(principal=str(FRONTEND)))
    assert identities.peer == FRONTEND
    assert identities.peer_serial is None
    assert identities.problems == ()


def test_principal_without_certificate_is_ignored_when_not_trusted(ca, clock):
    resolver = make_resolver(ca, clock, trust_principal_without_certificate=False)
    identities = resolve(resolver, context(principal=str(FRONTEND)))
    assert identities.peer is None
    assert identities.problems == ()
    assert not identities.authenticated


def test_principal_from_another_trust_domain_needs_to_be_allowed(ca, clock):
    partner = "spiffe://partner.example/ns/billing/sa/invoicer"
    identities = resolve(make_resolver(ca, clock), context(principal=partner))
    assert identities.peer is None
    assert only_problem(identities).reason == "peer/trust-domain: partner.example is not trusted"

    resolver = make_resolver(ca, clock, allowed_foreign_trust_domains=("partner.example",))
    assert resolve(resolver, context(principal=partner)).peer == SpiffeId.parse(partner)


@pytest.mark.parametrize(
    "principal",
    ["backend.example.org", "spiffe://example.org", "spiffe://Example.org/x", "CN=frontend"],
)
def test_principal_that_is_not_a_workload_spiffe_id_is_a_problem(ca, clock, principal):
    identities = resolve(make_resolver(ca, clock), context(principal=principal))
    assert identities.peer is None
    assert only_problem(identities).reason.startswith("peer/spiffe-id")


def test_second_check_with_the_same_certificate_hits_the_cache(ca, clock):
    resolver = make_resolver(ca, clock)
    ctx = context(certificate=envoy_certificate(issue(ca)))
    resolve(resolver, ctx)
    assert (resolver.peer_cache.hits, resolver.peer_cache.misses) == (0, 1)
    assert resolve(resolver, ctx).peer == FRONTEND
    assert (resolver.peer_cache.hits, resolver.peer_cache.misses) == (1, 1)


def test_bundle_rotation_makes_the_cached_certificate_verify_again(ca, clock):
    clock.advance(6 * HOUR)  # so the SVID outlives the moment the next authority is prepared
    svid = issue(ca, ttl=12 * HOUR)
    resolver = make_resolver(ca, clock)
    ctx = context(certificate=envoy_certificate(svid))
    resolve(resolver, ctx)
    sequence = ca.bundle.sequence
    clock.advance(6 * HOUR + 1)
    assert ca.rotate()
    assert ca.bundle.sequence != sequence
    identities = resolve(resolver, ctx)
    assert identities.peer == FRONTEND
    assert (resolver.peer_cache.hits, resolver.peer_cache.misses) == (0, 2)


def test_failures_are_cached_briefly(ca, impostor, clock):
    resolver = make_resolver(ca, clock)
    ctx = context(certificate=envoy_certificate(issue(impostor)))
    resolve(resolver, ctx)
    resolve(resolver, ctx)
    assert (resolver.peer_cache.hits, resolver.peer_cache.misses) == (1, 1)
    clock.advance(5)
    assert only_problem(resolve(resolver, ctx)).kind == "peer_certificate"
    assert (resolver.peer_cache.hits, resolver.peer_cache.misses) == (1, 2)


def test_a_failure_is_never_cached_across_a_bundle_change(ca, clock):
    # authd starts before it has the CA's roots: the first check fails, the next one, with
    # the real bundle, must not be answered from the failure cache.
    bundles = StaticBundles(TrustBundle(EXAMPLE, sequence=ca.bundle.sequence + 100))
    resolver = make_resolver(ca, clock, bundles=bundles)
    ctx = context(certificate=envoy_certificate(issue(ca)))
    assert only_problem(resolve(resolver, ctx)).reason.startswith("x509-svid/bundle")
    bundles.bundle = ca.bundle
    assert resolve(resolver, ctx).peer == FRONTEND


# --- JWT-SVIDs ----------------------------------------------------------------------------


def test_jwt_svid_with_our_audience_gives_the_workload(ca, clock):
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["orders"]).token
    identities = resolve(make_resolver(ca, clock), context(headers=bearer(token)))
    assert identities.workload == BACKEND
    assert identities.workload_token_id is None
    assert identities.problems == ()
    assert identities.caller == BACKEND


def test_jwt_svid_subject_is_the_caller_over_the_mtls_peer(ca, clock):
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["orders"]).token
    ctx = context(headers=bearer(token), certificate=envoy_certificate(issue(ca, FRONTEND)))
    identities = resolve(make_resolver(ca, clock), ctx)
    assert (identities.peer, identities.workload, identities.caller) == (
        FRONTEND,
        BACKEND,
        BACKEND,
    )


def test_jwt_svid_for_another_audience_is_a_problem(ca, clock):
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["payments"]).token
    identities = resolve(make_resolver(ca, clock), context(headers=bearer(token)))
    assert identities.workload is None
    problem = only_problem(identities)
    assert (problem.kind, problem.reason.split(":")[0]) == ("jwt_svid", "jwt-svid/aud")
    assert token not in problem.reason


def test_audience_from_context_extensions_overrides_the_default(ca, clock):
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["route-a"]).token
    resolver = make_resolver(ca, clock, jwt_svid_audiences=("orders",))
    routed = context(headers=bearer(token), extensions={"audience": "route-a"})
    assert resolve(resolver, routed).workload == BACKEND
    default = context(headers=bearer(token))
    assert only_problem(resolve(resolver, default)).reason.startswith("jwt-svid/aud")


def test_jwt_svid_without_any_configured_audience_is_a_problem(ca, clock):
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["orders"]).token
    resolver = make_resolver(ca, clock, jwt_svid_audiences=())
    problem = only_problem(resolve(resolver, context(headers=bearer(token))))
    assert problem.reason == "jwt-svid/aud: no audience configured"


def test_expired_jwt_svid_is_a_problem_even_after_it_was_cached(ca, clock):
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["orders"], ttl=60).token
    resolver = make_resolver(ca, clock)
    assert resolve(resolver, context(headers=bearer(token))).workload == BACKEND
    clock.advance(60)
    identities = resolve(resolver, context(headers=bearer(token)))
    assert identities.workload is None
    assert only_problem(identities).reason == "jwt-svid/exp: token has expired"


def test_jwt_svid_signed_by_a_key_not_in_our_bundle_is_a_problem(ca, impostor, clock):
    token = impostor.mint_jwt_svid(spiffe_id=BACKEND, audience=["orders"]).token
    identities = resolve(make_resolver(ca, clock), context(headers=bearer(token)))
    assert identities.workload is None
    assert only_problem(identities).reason.startswith("jwt-svid/kid")


def test_jwt_svid_with_alg_none_is_a_problem(ca, clock):
    header = {"alg": "none", "kid": ca.jwt_authority.kid, "typ": "JWT"}
    claims = {"sub": str(BACKEND), "aud": ["orders"], "exp": int(clock.now()) + 60}
    token = ".".join(b64url(json.dumps(part).encode()) for part in (header, claims)) + "."
    identities = resolve(make_resolver(ca, clock), context(headers=bearer(token)))
    assert identities.workload is None
    assert only_problem(identities).reason == "jwt-svid/alg: algorithm 'none' is not allowed"


def test_jwt_svid_from_another_trust_domain_is_a_problem(ca, cas, clock):
    other = cas.open("other", TrustDomain("other.org"))
    token = other.mint_jwt_svid(spiffe_id=other.trust_domain.spiffe_id("/x"), audience=["orders"])
    identities = resolve(make_resolver(ca, clock), context(headers=bearer(token.token)))
    assert only_problem(identities).reason.startswith("jwt-svid/trust-domain")


def test_jwt_svid_in_a_configured_header_is_read_raw(ca, clock):
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["orders"]).token
    resolver = make_resolver(ca, clock, jwt_svid_header="X-Workload-Token")
    assert resolve(resolver, context(headers={"x-workload-token": token})).workload == BACKEND
    assert resolve(resolver, context(headers=bearer(token))).workload is None


def test_second_check_with_the_same_jwt_svid_hits_the_cache(ca, clock):
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["orders"]).token
    resolver = make_resolver(ca, clock)
    resolve(resolver, context(headers=bearer(token)))
    assert resolve(resolver, context(headers=bearer(token))).workload == BACKEND
    assert (resolver.token_cache.hits, resolver.token_cache.misses) == (1, 1)


def test_cached_jwt_svid_is_keyed_by_audience(ca, clock):
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["orders", "route-a"]).token
    resolver = make_resolver(ca, clock)
    resolve(resolver, context(headers=bearer(token)))
    resolve(resolver, context(headers=bearer(token), extensions={"audience": "route-a"}))
    assert resolver.token_cache.misses == 2


def test_bundle_rotation_makes_the_cached_jwt_svid_verify_again(ca, clock):
    clock.advance(6 * HOUR)  # so the token outlives the moment the next authority is prepared
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["orders"], ttl=12 * HOUR).token
    resolver = make_resolver(ca, clock)
    resolve(resolver, context(headers=bearer(token)))
    clock.advance(6 * HOUR + 1)
    assert ca.rotate()
    assert resolve(resolver, context(headers=bearer(token))).workload == BACKEND
    assert (resolver.token_cache.hits, resolver.token_cache.misses) == (0, 2)


def test_a_jwt_svid_failure_is_never_cached_across_a_bundle_change(ca, clock):
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["orders"]).token
    bundles = StaticBundles(
        replace(ca.bundle, jwt_authorities={}, sequence=ca.bundle.sequence + 100)
    )
    resolver = make_resolver(ca, clock, bundles=bundles)
    assert only_problem(resolve(resolver, context(headers=bearer(token)))).reason.startswith(
        "jwt-svid/kid"
    )
    bundles.bundle = ca.bundle
    assert resolve(resolver, context(headers=bearer(token))).workload == BACKEND


def test_bearer_token_that_is_not_a_jwt_is_a_problem(ca, clock):
    identities = resolve(make_resolver(ca, clock), context(headers=bearer("opaque-secret-123")))
    problem = only_problem(identities)
    assert problem == CredentialProblem("jwt_svid", "jwt/compact: not a JWT")
    assert "opaque-secret-123" not in problem.reason


def test_empty_bearer_token_is_a_problem(ca, clock):
    identities = resolve(make_resolver(ca, clock), context(headers={"authorization": "Bearer "}))
    assert only_problem(identities).reason == "jwt/empty: token is empty"


def test_other_authorization_schemes_are_not_ours_to_judge(ca, clock):
    identities = resolve(
        make_resolver(ca, clock), context(headers={"authorization": "Basic dXNlcjpwYXNz"})
    )
    assert identities == Identities()


def test_token_from_an_issuer_not_configured_is_a_problem(ca, clock):
    key = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": "https://evil.example", "sub": "alice", "aud": "orders", "exp": 2**40}
    token = jwt.encode(claims, key, algorithm="ES256")
    identities = resolve(make_resolver(ca, clock), context(headers=bearer(token)))
    assert identities.user is None
    assert only_problem(identities) == CredentialProblem(
        "user_jwt", "user-jwt/iss: token issuer not trusted"
    )


def test_spiffe_subject_in_an_issuer_header_is_not_taken_for_a_jwt_svid(ca, clock):
    token = ca.mint_jwt_svid(spiffe_id=BACKEND, audience=["orders"]).token
    issuer = IssuerSettings(
        name="idp",
        issuer="https://idp.example",
        jwks_uri="http://127.0.0.1:9/jwks",
        audiences=("orders",),
        header="x-user-token",
    )
    resolver = make_resolver(ca, clock, issuers=(issuer,))
    identities = resolve(resolver, context(headers={"x-user-token": token}))
    assert identities.workload is None
    assert only_problem(identities).reason == "user-jwt/iss: token issuer not trusted"


# --- revocation ---------------------------------------------------------------------------


def test_revocation_hook_is_asked_about_every_peer_certificate(ca, clock):
    svid = issue(ca)
    hook = RevocationHook()
    resolver = IdentityResolver(trust_domain=EXAMPLE, bundles=ca, clock=clock, revocations=hook)
    ctx = context(certificate=envoy_certificate(svid))
    resolve(resolver, ctx)
    resolve(resolver, ctx)  # from the cache, and still asked: revocation is never cached
    expected = RevocationQuery(serial=svid.serial, spiffe_id=str(FRONTEND), jti=None)
    assert hook.queries == [expected, expected]


def test_revoked_peer_certificate_is_a_revoked_problem(ca, clock):
    svid = issue(ca)
    hook = RevocationHook(svid.serial)
    resolver = IdentityResolver(trust_domain=EXAMPLE, bundles=ca, clock=clock, revocations=hook)
    identities = resolve(resolver, context(certificate=envoy_certificate(svid)))
    assert identities.peer is None
    assert identities.peer_serial is None
    problem = only_problem(identities)
    assert problem.kind == "peer_certificate"
    assert problem.revoked
    assert problem.reason.startswith("revoked")


def test_revoked_principal_without_certificate_is_a_revoked_problem(ca, clock):
    hook = RevocationHook(str(FRONTEND))
    resolver = IdentityResolver(trust_domain=EXAMPLE, bundles=ca, clock=clock, revocations=hook)
    identities = resolve(resolver, context(principal=str(FRONTEND)))
    assert hook.queries == [RevocationQuery(spiffe_id=str(FRONTEND))]
    assert identities.peer is None
    assert only_problem(identities).revoked


def test_revocation_hook_is_asked_about_jwt_svid_subject_and_jti(ca, clock):
    claims = {
        "sub": str(BACKEND),
        "aud": ["orders"],
        "exp": int(clock.now()) + 300,
        "jti": "token-42",
    }
    token = jwt.encode(
        claims, ca.jwt_authority.key, algorithm="ES256", headers={"kid": ca.jwt_authority.kid}
    )
    hook = RevocationHook()
    resolver = IdentityResolver(
        trust_domain=EXAMPLE,
        bundles=ca,
        clock=clock,
        settings=IdentitySettings(jwt_svid_audiences=("orders",)),
        revocations=hook,
    )
    identities = resolve(resolver, context(headers=bearer(token)))
    assert identities.workload == BACKEND
    assert identities.workload_token_id == "token-42"
    assert hook.queries == [RevocationQuery(spiffe_id=str(BACKEND), jti="token-42")]

    hook.revoked.add("token-42")
    identities = resolve(resolver, context(headers=bearer(token)))
    assert identities.workload is None
    assert identities.workload_token_id is None
    problem = only_problem(identities)
    assert (problem.kind, problem.revoked) == ("jwt_svid", True)
    assert token not in problem.reason


# --- API keys -----------------------------------------------------------------------------


def api_key_resolver(ca: CertificateAuthority, clock: FakeClock) -> IdentityResolver:
    store = ApiKeyStore([ApiKeyEntry("ci-bot", hash_api_key("s3cret-ci-key"))])
    return IdentityResolver(trust_domain=EXAMPLE, bundles=ca, clock=clock, api_keys=store)


def test_known_api_key_gives_its_name(ca, clock):
    identities = resolve(
        api_key_resolver(ca, clock), context(headers={"x-api-key": "s3cret-ci-key"})
    )
    assert identities.api_key == "ci-bot"
    assert identities.authenticated
    assert identities.problems == ()


def test_unknown_api_key_is_a_problem_that_does_not_repeat_the_key(ca, clock):
    identities = resolve(api_key_resolver(ca, clock), context(headers={"x-api-key": "guess-123"}))
    assert identities.api_key is None
    assert only_problem(identities) == CredentialProblem("api_key", "unknown API key")


def test_api_key_header_is_ignored_when_no_keys_are_configured(ca, clock):
    identities = resolve(make_resolver(ca, clock), context(headers={"x-api-key": "anything"}))
    assert identities == Identities()


def test_no_credentials_means_no_identity_and_no_problem(ca, clock):
    identities = resolve(make_resolver(ca, clock), context())
    assert identities == Identities()
    assert not identities.authenticated


# --- settings -----------------------------------------------------------------------------


def test_settings_refuse_a_bad_foreign_trust_domain():
    with pytest.raises(ValueError, match="trust domain"):
        IdentitySettings(allowed_foreign_trust_domains=("Partner.Example",))


def test_settings_refuse_two_issuers_with_one_name():
    issuer = IssuerSettings(
        name="idp", issuer="https://a", jwks_uri="https://a/jwks", audiences=("x",)
    )
    with pytest.raises(ValueError, match="unique"):
        IdentitySettings(issuers=(issuer, replace(issuer, issuer="https://b")))

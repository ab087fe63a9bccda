"""Transaction tokens: minted at the front door, verified at each hop, never widened.

A real CA (SQLite store, key store, fake clock) signs; the pipeline runs with the rules
engine. Each test is a rule of authd/authz/txn_tokens.py or of the call-path rules.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authd.authz.api_keys import ApiKeyEntry, ApiKeyStore, hash_api_key
from authd.authz.identity import IdentityResolver, IdentitySettings, IssuerSettings
from authd.authz.pipeline import Authorizer
from authd.authz.txn_tokens import TYP, TxnTokens, TxnTokenSettings, certificate_thumbprint
from authd.check.model import CheckContext, CredentialProblem, Outcome, Reason, TxnToken
from authd.policy.base import PolicyError
from authd.policy.rules import RulesPolicy
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.jwtsvid import sign_jws
from ca.keys import KeyStore
from ca.revocation_view import RevocationView
from ca.spiffe_id import TrustDomain
from ca.store import Revocation, SQLiteStore
from tests.support.idp import TokenIssuer

EXAMPLE = TrustDomain("example.org")
GATEWAY = "spiffe://example.org/gateway"
ORDERS = "spiffe://example.org/orders"
PAYMENTS = "spiffe://example.org/payments"
API_KEY = "k-0123456789abcdef"

POLICY = f"""\
version: 1
rule_sets:
  default:
    rules:
      - name: front-door
        effect: allow
        at: ["{GATEWAY}"]
        paths: ["/orders/*"]
        authenticated: true
      - name: narrowed
        effect: allow
        at: ["{GATEWAY}"]
        paths: ["/narrow/*"]
        authenticated: true
        txn_scope: [orders:read]
      - name: orders-from-gateway
        effect: allow
        at: ["{ORDERS}"]
        from: ["{GATEWAY}"]
        paths: ["/orders/*"]
      - name: payments-via-orders
        effect: allow
        at: ["{PAYMENTS}"]
        from: ["{GATEWAY}", "{ORDERS}"]
        txn_scopes: [pay]
        paths: ["/pay/*"]
        txn_scope: pay
      - name: payments-widen
        effect: allow
        at: ["{PAYMENTS}"]
        paths: ["/widen/*"]
        from: ["{GATEWAY}", "{ORDERS}"]
        txn_scope: [pay, admin]
"""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=float(int(time.time())))


@pytest.fixture
def ca(tmp_path: Path, clock: FakeClock) -> Iterator[CertificateAuthority]:
    authority = CertificateAuthority(
        trust_domain=EXAMPLE,
        store=SQLiteStore(tmp_path / "s.db"),
        keystore=KeyStore(tmp_path / "keys"),
        clock=clock,
    )
    yield authority
    authority.close()
    authority.store.close()


@pytest.fixture(scope="module")
def idp() -> Iterator[TokenIssuer]:
    issuer = TokenIssuer()
    yield issuer
    issuer.close()


class Hop:
    """One decision point (resolver, Txn-Tokens, rules pipeline) over the shared CA."""

    def __init__(
        self,
        ca: CertificateAuthority,
        clock: FakeClock,
        idp: TokenIssuer,
        *,
        revocations: RevocationView | None = None,
        claims: tuple[str, ...] = ("email",),
    ) -> None:
        self.tokens = TxnTokens(
            trust_domain=EXAMPLE,
            clock=clock,
            settings=TxnTokenSettings(claims=claims),
            signer=ca,
        )
        keys = ApiKeyStore([ApiKeyEntry("ci-bot", hash_api_key(API_KEY))])
        self.resolver = IdentityResolver(
            trust_domain=EXAMPLE,
            bundles=ca,
            clock=clock,
            settings=IdentitySettings(
                issuers=(
                    IssuerSettings(
                        name="idp",
                        issuer=idp.issuer,
                        jwks_uri=idp.jwks_uri,
                        audiences=(idp.audience,),
                        algorithms=("ES256",),
                    ),
                )
            ),
            api_keys=keys,
            revocations=revocations,
            txn_tokens=self.tokens,
        )
        policy = RulesPolicy.from_text(POLICY, "policy.yaml")
        self.authorizer = Authorizer(
            resolver=self.resolver, policy=lambda: policy, txn_tokens=self.tokens
        )

    def check(self, ctx: CheckContext) -> Outcome:
        return asyncio.run(self.authorizer.check(ctx))


def ctx(
    path: str,
    *,
    at: str,
    headers: Mapping[str, str] | None = None,
    peer: str = "",
    certificate: str = "",
    mint: bool = False,
) -> CheckContext:
    extensions = {"at": at}
    if mint:
        extensions["txn_token"] = "mint"
    return CheckContext(
        method="GET",
        host="api.example.org",
        path=path,
        headers=dict(headers or {}),
        source_principal=peer,
        source_certificate=certificate,
        source_address="203.0.113.9:51000",
        context_extensions=extensions,
    )


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return tuple(  # type: ignore[return-value]
        json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        for part in (header, payload)
    )


def front_door(hop: Hop, idp: TokenIssuer, path: str = "/orders/7", **claims: Any) -> Outcome:
    user = idp.token("alice", scope="orders:read pay", email="a@example.com", **claims)
    return hop.check(ctx(path, at=GATEWAY, headers={"authorization": f"Bearer {user}"}, mint=True))


# --- minting at the front door -------------------------------------------------------------


def test_front_door_mints_a_txn_token_signed_by_the_jwt_authority(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    outcome = front_door(Hop(ca, clock, idp), idp)
    assert outcome.allowed, outcome.decision
    token = outcome.upstream_headers["txn-token"]
    header, claims = decode(token)
    assert header["typ"] == TYP and header["alg"] == "ES256"
    assert header["kid"] in ca.bundle.jwt_authorities
    assert claims["aud"] == "spiffe://example.org"
    assert claims["sub"] == "alice"
    assert claims["scope"] == "orders:read pay"
    assert claims["req_wl"] == GATEWAY
    assert claims["exp"] - claims["iat"] == 60
    assert claims["tctx"] == {
        "method": "GET",
        "path": "/orders/7",
        "rule": "front-door",
        "claims": {"email": "a@example.com"},
    }
    assert claims["rctx"] == {"authn": "oidc", "req_ip": "203.0.113.9"}
    # The txn is the front door's decision id, and reaches Envoy's metadata.
    assert outcome.decision_id == claims["txn"] == outcome.txn
    assert outcome.dynamic_metadata["txn"] == claims["txn"]
    assert "authorization" in outcome.remove_headers


def test_each_transaction_gets_its_own_txn(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    hop = Hop(ca, clock, idp)
    txns = {front_door(hop, idp).txn for _ in range(5)}
    assert len(txns) == 5


def test_api_key_callers_get_a_token_with_the_key_as_subject(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    hop = Hop(ca, clock, idp)
    outcome = hop.check(ctx("/orders/1", at=GATEWAY, headers={"x-api-key": API_KEY}, mint=True))
    _, claims = decode(outcome.upstream_headers["txn-token"])
    assert (claims["sub"], claims["rctx"]["authn"], claims["scope"]) == ("ci-bot", "api_key", "")


def test_policy_narrows_the_minted_scope(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    outcome = front_door(Hop(ca, clock, idp), idp, "/narrow/x")
    _, claims = decode(outcome.upstream_headers["txn-token"])
    assert claims["scope"] == "orders:read"


def test_policy_cannot_mint_wider_than_the_user(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    hop = Hop(ca, clock, idp)
    user = idp.token("bob", scope="pay")
    outcome = hop.check(
        ctx("/narrow/x", at=GATEWAY, headers={"authorization": f"Bearer {user}"}, mint=True)
    )
    assert (outcome.allowed, outcome.decision.reason, outcome.status) == (
        False,
        Reason.TXN_SCOPE_WIDENED,
        403,
    )


def test_anonymous_call_at_a_minting_door_gets_no_token_and_loses_its_own(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    hop = Hop(ca, clock, idp)
    smuggled = front_door(hop, idp).upstream_headers["txn-token"]
    outcome = hop.check(ctx("/orders/1", at=GATEWAY, headers={"txn-token": smuggled}, mint=True))
    assert outcome.identities.txn_token is None  # never read where tokens are minted
    assert "txn-token" not in outcome.upstream_headers


# --- verifying at a hop ---------------------------------------------------------------------


def test_hop_verifies_the_token_and_policy_sees_its_claims(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    hop = Hop(ca, clock, idp)
    token = front_door(hop, idp).upstream_headers["txn-token"]
    outcome = hop.check(ctx("/orders/1", at=ORDERS, headers={"txn-token": token}, peer=GATEWAY))
    assert outcome.allowed, outcome.decision
    carried = outcome.identities.txn_token
    assert isinstance(carried, TxnToken)
    assert (carried.sub, carried.req_wl, carried.scope) == (
        "alice",
        GATEWAY,
        ("orders:read", "pay"),
    )
    assert outcome.txn == carried.txn and outcome.dynamic_metadata["txn"] == carried.txn
    assert "txn-token" not in outcome.upstream_headers  # passed on as it came


def test_an_expired_token_is_refused_after_the_leeway(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    hop = Hop(ca, clock, idp)
    token = front_door(hop, idp).upstream_headers["txn-token"]
    clock.advance(60 + 4)
    assert hop.check(
        ctx("/orders/1", at=ORDERS, headers={"txn-token": token}, peer=GATEWAY)
    ).allowed
    clock.advance(1)
    outcome = Hop(ca, clock, idp).check(
        ctx("/orders/1", at=ORDERS, headers={"txn-token": token}, peer=GATEWAY)
    )
    assert (outcome.status, outcome.decision.reason) == (401, Reason.INVALID_CREDENTIALS)
    assert outcome.identities.problems[0].reason == "txn-token/exp: token has expired"


def _forged(ca: CertificateAuthority, clock: FakeClock, **changes: Any) -> dict[str, str]:
    now = int(clock.now())
    claims: dict[str, Any] = {
        "iat": now,
        "exp": now + 60,
        "aud": "spiffe://example.org",
        "txn": "t1",
        "sub": "alice",
        "scope": "pay",
        "req_wl": GATEWAY,
    }
    typ = changes.pop("typ", TYP)
    claims.update(changes)
    return {"txn-token": sign_jws(ca.jwt_authority, claims, typ=typ)}


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"typ": "JWT"}, "txn-token/typ"),
        ({"aud": "spiffe://other.org"}, "txn-token/aud"),
        ({"req_wl": "spiffe://other.org/gateway"}, "txn-token/req_wl"),
        ({"txn": ""}, "txn-token/txn"),
        ({"scope": 7}, "txn-token/scope"),
        ({"iat": 10**10}, "txn-token/iat"),
        ({"iat": "soon"}, "txn-token/claims"),
    ],
)
def test_a_token_with_a_bad_header_or_claim_is_refused(
    ca: CertificateAuthority,
    clock: FakeClock,
    idp: TokenIssuer,
    changes: dict[str, Any],
    rule: str,
) -> None:
    hop = Hop(ca, clock, idp)
    outcome = hop.check(ctx("/orders/1", at=ORDERS, headers=_forged(ca, clock, **changes)))
    assert outcome.status == 401
    assert outcome.identities.problems[0].reason.startswith(rule + ":")


def test_a_tampered_or_foreign_token_is_refused(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer, tmp_path: Path
) -> None:
    hop = Hop(ca, clock, idp)
    header, _, signature = _forged(ca, clock)["txn-token"].split(".")
    payload = base64.urlsafe_b64encode(b'{"txn":"t1","scope":"admin"}').rstrip(b"=").decode()
    tampered = f"{header}.{payload}.{signature}"
    reason = hop.resolver.txn_tokens.verify(tampered, ca.bundle)  # type: ignore[union-attr]
    assert isinstance(reason, CredentialProblem) and reason.reason.startswith("txn-token/signature")
    other = CertificateAuthority(
        trust_domain=EXAMPLE,
        store=SQLiteStore(tmp_path / "o.db"),
        keystore=KeyStore(tmp_path / "okeys"),
        clock=clock,
    )
    try:
        foreign = _forged(other, clock)["txn-token"]
    finally:
        other.close()
        other.store.close()
    reason = hop.resolver.txn_tokens.verify(foreign, ca.bundle)  # type: ignore[union-attr]
    assert isinstance(reason, CredentialProblem) and reason.reason.startswith("txn-token/kid")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(st.binary(max_size=80), min_size=1, max_size=4).map(
            lambda parts: ".".join(base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in parts)
        ),
        st.tuples(
            st.dictionaries(st.sampled_from(["alg", "kid", "typ", "x"]), st.text(max_size=12)),
            st.dictionaries(
                st.sampled_from(["aud", "exp", "iat", "txn", "sub", "req_wl", "scope", "tctx"]),
                st.one_of(st.none(), st.integers(), st.text(max_size=20), st.floats()),
            ),
        ).map(
            lambda hp: ".".join(
                base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
                for part in (*hp, {})
            )
        ),
    )
)
def test_the_token_parser_never_raises(
    ca: CertificateAuthority, clock: FakeClock, token: str
) -> None:
    tokens = TxnTokens(trust_domain=EXAMPLE, clock=clock, signer=ca)
    result = tokens.verify(token, ca.bundle)
    assert isinstance(result, CredentialProblem)
    assert result.reason.startswith("txn-token/")


# --- never wider ----------------------------------------------------------------------------


def test_a_hop_may_narrow_the_scope_keeping_txn_sub_and_aud(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    hop = Hop(ca, clock, idp)
    original = front_door(hop, idp).upstream_headers["txn-token"]
    outcome = hop.check(ctx("/pay/1", at=PAYMENTS, headers={"txn-token": original}, peer=ORDERS))
    assert outcome.allowed, outcome.decision
    _, before = decode(original)
    _, after = decode(outcome.upstream_headers["txn-token"])
    assert after["scope"] == "pay"
    for claim in ("txn", "sub", "aud", "req_wl", "tctx", "rctx"):
        assert after[claim] == before[claim]
    assert after["exp"] <= before["exp"]


def test_a_hop_cannot_widen_the_scope(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    hop = Hop(ca, clock, idp)
    token = front_door(hop, idp).upstream_headers["txn-token"]
    outcome = hop.check(ctx("/widen/1", at=PAYMENTS, headers={"txn-token": token}, peer=ORDERS))
    assert (outcome.allowed, outcome.decision.reason) == (False, Reason.TXN_SCOPE_WIDENED)


# --- call paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "with_token", "why"),
    [
        (ORDERS, False, "no verified Txn-Token"),
        (GATEWAY, True, f"the call comes from {GATEWAY}, not {ORDERS}"),
    ],
)
def test_a_call_that_skips_the_gateway_or_a_hop_is_denied_call_path(
    ca: CertificateAuthority,
    clock: FakeClock,
    idp: TokenIssuer,
    peer: str,
    with_token: bool,
    why: str,
) -> None:
    hop = Hop(ca, clock, idp)
    headers = (
        {"txn-token": front_door(hop, idp).upstream_headers["txn-token"]} if with_token else {}
    )
    request = ctx("/pay/1", at=PAYMENTS, headers=headers, peer=peer)
    outcome = hop.check(request)
    assert (outcome.allowed, outcome.status, outcome.decision.reason, outcome.decision.rule) == (
        False,
        403,
        Reason.CALL_PATH,
        "payments-via-orders",
    )
    policy = RulesPolicy.from_text(POLICY, "policy.yaml")
    explained = "\n".join(policy.explain(request, outcome.identities))
    assert why in explained
    assert f"at hop {PAYMENTS}" in explained


def test_rules_apply_only_at_their_hop(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    hop = Hop(ca, clock, idp)
    token = front_door(hop, idp).upstream_headers["txn-token"]
    # The orders rule does not apply at payments, whatever the token says.
    outcome = hop.check(ctx("/orders/1", at=PAYMENTS, headers={"txn-token": token}, peer=GATEWAY))
    assert (outcome.allowed, outcome.decision.reason) == (False, Reason.NO_MATCHING_RULE)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("from: [spiffe://a.org/x, spiffe://a.org/y, spiffe://a.org/z]", "at most two"),
        ("from: [not-an-id]", "bad caller"),
        ("effect: deny\n        txn_scope: [x]", "txn_scope narrows"),
    ],
)
def test_bad_call_path_rules_are_refused_with_their_line(rule: str, message: str) -> None:
    effect = "" if "effect" in rule else "effect: allow\n        "
    text = (
        f"version: 1\nrule_sets:\n  default:\n    rules:\n      - name: r\n        {effect}{rule}\n"
    )
    with pytest.raises(PolicyError, match=message):
        RulesPolicy.from_text(text, "p.yaml")


# --- revocation -----------------------------------------------------------------------------


def test_revoking_the_txn_or_the_minting_workload_refuses_the_token(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    view = RevocationView()
    hop = Hop(ca, clock, idp, revocations=view)
    token = front_door(hop, idp).upstream_headers["txn-token"]
    _, claims = decode(token)
    request = ctx("/orders/1", at=ORDERS, headers={"txn-token": token}, peer=GATEWAY)
    assert hop.check(request).allowed
    for kind, target in (("txn", claims["txn"]), ("spiffe_id", GATEWAY)):
        view.load([Revocation(kind, target, 0, "", 0, "admin")])
        outcome = hop.check(request)
        assert (outcome.status, outcome.decision.reason) == (401, Reason.REVOKED), kind


# --- certificate-bound end-user tokens (RFC 8705) ---------------------------------------------


def _certificate(ca: CertificateAuthority) -> str:
    from urllib.parse import quote

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    svid = ca.issue_x509_svid(csr, spiffe_id=EXAMPLE.spiffe_id("/client"), requester="test")
    return quote(svid.leaf.public_bytes(serialization.Encoding.PEM).decode())


def test_a_bound_token_counts_only_with_its_certificate(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    hop = Hop(ca, clock, idp)
    mine, other = _certificate(ca), _certificate(ca)
    thumbprint = certificate_thumbprint(mine)
    user = idp.token("carol", cnf={"x5t#S256": thumbprint})
    headers = {"authorization": f"Bearer {user}"}
    assert hop.check(
        ctx("/orders/1", at=GATEWAY, headers=headers, certificate=mine, mint=True)
    ).allowed
    for certificate, why in (("", "none was presented"), (other, "not the one")):
        outcome = hop.check(
            ctx("/orders/1", at=GATEWAY, headers=headers, certificate=certificate, mint=True)
        )
        assert (outcome.status, outcome.decision.reason) == (401, Reason.INVALID_CREDENTIALS)
        assert why in outcome.identities.problems[-1].reason


def test_without_a_signer_nothing_is_minted_and_the_check_still_decides(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    # `authd policy check` decides offline, with no CA key at hand.
    hop = Hop(ca, clock, idp)
    offline = TxnTokens(trust_domain=EXAMPLE, clock=clock)
    authorizer = Authorizer(
        resolver=hop.resolver,
        policy=lambda: RulesPolicy.from_text(POLICY, "policy.yaml"),
        txn_tokens=offline,
    )
    outcome = asyncio.run(
        authorizer.check(ctx("/orders/1", at=GATEWAY, headers={"x-api-key": API_KEY}, mint=True))
    )
    assert outcome.allowed and "txn-token" not in outcome.upstream_headers
    assert "txn-token" in outcome.remove_headers


class _NoKeyHere:
    """A signer on a replica without the CA keys (ca.rotates = false)."""

    def sign_jwt(self, claims: Mapping[str, Any], *, typ: str) -> str:
        from ca.errors import InvalidRequest

        raise InvalidRequest("no active jwt authority with its key here")


def test_a_replica_that_cannot_sign_fails_the_check_as_authds_own_error(
    ca: CertificateAuthority, clock: FakeClock, idp: TokenIssuer
) -> None:
    hop = Hop(ca, clock, idp)
    unable = TxnTokens(trust_domain=EXAMPLE, clock=clock, signer=_NoKeyHere())
    authorizer = Authorizer(
        resolver=hop.resolver,
        policy=lambda: RulesPolicy.from_text(POLICY, "policy.yaml"),
        txn_tokens=unable,
    )
    request = ctx("/orders/1", at=GATEWAY, headers={"x-api-key": API_KEY}, mint=True)
    with pytest.raises(PolicyError, match="cannot mint a Txn-Token: no active jwt authority"):
        asyncio.run(authorizer.check(request))

"""What a caller sends can never make a check fail: every parse failure is a deny.

The pipeline runs with a real IdentityResolver, real policy engines (rules, Rego) and, where
it matters, the real gRPC adapter's translation; the hostile inputs are the ones that used to
raise (RecursionError from deeply nested JSON, values Rego cannot take) and so reached Envoy
as an error, which ``failure_mode_allow: true`` turns into an allow.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2

from authd.authz.identity import (
    MAX_PEER_CERTIFICATE_BYTES,
    IdentityResolver,
    IdentitySettings,
    IssuerSettings,
)
from authd.authz.metrics import AuthzMetrics
from authd.authz.pipeline import Authorizer
from authd.authz.token_claims import MAX_TOKEN_BYTES
from authd.check.bounded_json import MAX_JSON_DEPTH
from authd.check.model import CheckContext, Decision, Identities, Outcome, Reason
from authd.extauthz.grpc_servicer import check_response, context_from_check_request
from authd.policy.base import InputDocument, Policy, PolicyError
from authd.policy.rego import RegoPolicy
from authd.policy.rules import RulesPolicy
from authd.ports.bundle_view import StaticBundles
from ca.bundle import TrustBundle
from ca.clock import FakeClock
from ca.jwtsvid import b64url
from ca.spiffe_id import TrustDomain

EXAMPLE = TrustDomain("example.org")
ISSUER = "https://idp.example.com"
ALLOW_ALL = RulesPolicy.from_text(
    "version: 1\nrule_sets:\n  default:\n    rules:\n      - {name: all, effect: allow}\n",
    "policy.yaml",
)
BODY_POLICY = "package envoy.authz\n\nimport rego.v1\n\nallow if input.parsed_body.a == 1\n"


def resolver() -> IdentityResolver:
    issuer = IssuerSettings(
        name="idp", issuer=ISSUER, jwks_uri="http://127.0.0.1:9/jwks", audiences=("orders",)
    )
    return IdentityResolver(
        trust_domain=EXAMPLE,
        bundles=StaticBundles(TrustBundle(EXAMPLE)),
        clock=FakeClock(),
        settings=IdentitySettings(jwt_svid_audiences=("orders",), issuers=(issuer,)),
    )


def check(
    ctx: CheckContext, policy: Policy = ALLOW_ALL, metrics: AuthzMetrics | None = None
) -> Outcome:
    authorizer = Authorizer(resolver=resolver(), policy=lambda: policy, metrics=metrics)
    return asyncio.run(authorizer.check(ctx))


def request(
    *, headers: dict[str, str] | None = None, body: bytes = b"", certificate: str = ""
) -> CheckContext:
    return CheckContext(
        method="POST",
        host="api.example.org",
        path="/orders",
        headers=headers or {},
        body=body,
        source_certificate=certificate,
    )


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def deeply_nested_json(depth: int = 3_000) -> str:
    """Nested past Python's recursion limit, and short enough to fit in a token."""
    return "[" * depth + "]" * depth


def token(header: str, payload: str) -> str:
    return f"{b64url(header.encode())}.{b64url(payload.encode())}.{b64url(b'sig')}"


SVID_CLAIMS = json.dumps({"sub": "spiffe://example.org/web", "aud": ["orders"], "exp": 2**31})
USER_CLAIMS = json.dumps({"iss": ISSUER, "sub": "alice", "aud": "orders", "exp": 2**31})
HEADER = json.dumps({"alg": "ES256", "kid": "k", "typ": "JWT"})


def assert_invalid_credentials(outcome: Outcome, rule: str) -> None:
    assert not outcome.allowed
    assert outcome.status == 401
    assert outcome.decision.reason == Reason.INVALID_CREDENTIALS
    assert outcome.identities.problems[0].reason.startswith(rule), outcome.identities.problems


@pytest.mark.parametrize("claims_of", ["jwt_svid", "user_jwt"])
def test_jwt_payload_nested_too_deep_is_a_deny_not_an_error(claims_of: str) -> None:
    route = SVID_CLAIMS if claims_of == "jwt_svid" else USER_CLAIMS
    payload = route[:-1] + ', "x": ' + deeply_nested_json() + "}"
    outcome = check(request(headers={"authorization": f"Bearer {token(HEADER, payload)}"}))
    assert_invalid_credentials(outcome, "jwt/json: JSON nests deeper")


@pytest.mark.parametrize("claims", [SVID_CLAIMS, USER_CLAIMS])
def test_jwt_header_nested_too_deep_is_a_deny_not_an_error(claims: str) -> None:
    header = HEADER[:-1] + ', "x": ' + deeply_nested_json() + "}"
    outcome = check(request(headers={"authorization": f"Bearer {token(header, claims)}"}))
    assert_invalid_credentials(outcome, "jwt/json: JSON nests deeper")


def test_jwt_nested_just_within_the_limit_is_judged_by_its_verifier() -> None:
    payload = json.dumps({**json.loads(USER_CLAIMS), "x": nested(MAX_JSON_DEPTH - 1)})
    hmac_header = json.dumps({"alg": "HS256", "typ": "JWT"})  # refused before any JWKS fetch
    outcome = check(request(headers={"authorization": f"Bearer {token(hmac_header, payload)}"}))
    assert_invalid_credentials(outcome, "user-jwt/alg")


def test_token_longer_than_the_limit_is_a_deny() -> None:
    payload = json.dumps({**json.loads(USER_CLAIMS), "pad": "x" * MAX_TOKEN_BYTES})
    outcome = check(request(headers={"authorization": f"Bearer {token(HEADER, payload)}"}))
    assert_invalid_credentials(outcome, "jwt/size")


def test_peer_certificate_longer_than_the_limit_is_a_deny() -> None:
    certificate = "-----BEGIN%20CERTIFICATE-----" + "A" * MAX_PEER_CERTIFICATE_BYTES
    assert_invalid_credentials(check(request(certificate=certificate)), "x509-svid/size")


@pytest.mark.parametrize(
    "certificate", ["%ZZ", "%FF%FE", "-----BEGIN%20CERTIFICATE-----%0A%00%0A", "%ED%A0%80"]
)
def test_peer_certificate_that_is_not_pem_is_a_deny(certificate: str) -> None:
    assert_invalid_credentials(check(request(certificate=certificate)), "x509-svid/pem")


def certificate_with_a_duplicate_extension() -> str:
    """URL-encoded PEM of a certificate whose DER holds one extension twice.

    cryptography parses it, and raises DuplicateExtension (not a ValueError) only when the
    extensions are read: past the PEM parser, inside the SVID checks.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
    )
    for oid in ("1.2.3.4.5.6", "1.2.3.4.5.7"):
        extension = x509.UnrecognizedExtension(ObjectIdentifier(oid), b"\x05\x00")
        builder = builder.add_extension(extension, critical=False)
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    first = bytes([0x06, 0x05, 0x2A, 0x03, 0x04, 0x05, 0x06])  # OID 1.2.3.4.5.6
    der = der.replace(first[:-1] + b"\x07", first)
    pem = (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    )
    return quote(pem.decode())


def test_certificate_that_breaks_the_parser_is_a_malformed_request_deny_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = AuthzMetrics()
    with caplog.at_level(logging.WARNING, logger="authd.authz.pipeline"):
        outcome = check(
            request(certificate=certificate_with_a_duplicate_extension()), metrics=metrics
        )
    assert not outcome.allowed
    assert (outcome.status, outcome.decision.reason) == (400, Reason.MALFORMED_REQUEST)
    assert outcome.decision.rule == "peer_certificate"
    [record] = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert record.exc_info is not None
    assert metrics.malformed_requests[("grpc", "peer_certificate")] == 1


def test_json_body_nested_too_deep_gives_no_parsed_body_and_a_decision() -> None:
    policy = RegoPolicy.from_sources({"authz.rego": BODY_POLICY}, name="body")
    ctx = request(
        headers={"content-type": "application/json"}, body=deeply_nested_json(5_000).encode()
    )
    outcome = check(ctx, policy)
    assert not outcome.allowed
    assert outcome.decision.rule == "envoy/authz/allow (undefined)"


def test_input_that_rego_cannot_take_is_a_malformed_request_deny_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A lone surrogate is valid JSON text but no UTF-8 string: regopy cannot convert it.
    policy = RegoPolicy.from_sources({"authz.rego": BODY_POLICY}, name="body")
    metrics = AuthzMetrics()
    ctx = request(headers={"content-type": "application/json"}, body=b'{"a": "\\ud800"}')
    with caplog.at_level(logging.WARNING, logger="authd.authz.pipeline"):
        outcome = check(ctx, policy, metrics)
    assert not outcome.allowed
    assert outcome.status == 400
    assert outcome.decision.reason == Reason.MALFORMED_REQUEST
    assert json.loads(outcome.deny_body)["error"] == "malformed_request"
    [record] = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert record.exc_info is not None  # the traceback, to fix the parser
    assert metrics.malformed_requests[("grpc", "input")] == 1
    assert metrics.checks[("grpc", "deny", "malformed_request")] == 1


class BrokenPolicy:
    """A policy engine failing on its own (not on the request)."""

    name = "test:broken"

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        input_document()
        raise PolicyError("test:broken: evaluation failed")


def test_a_policy_engine_failure_stays_an_error_for_envoy_status_on_error() -> None:
    with pytest.raises(PolicyError):
        check(request(), BrokenPolicy())


def grpc_check_request(token_text: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.host, http.path = "GET", "api.example.org", "/orders"
    http.headers["authorization"] = f"Bearer {token_text}"
    return request


def test_grpc_check_with_a_hostile_token_is_answered_unauthenticated_never_internal() -> None:
    hostile = token(HEADER[:-1] + ', "x": ' + deeply_nested_json() + "}", SVID_CLAIMS)
    outcome = check(context_from_check_request(grpc_check_request(hostile)))
    response = check_response(outcome)
    assert response.status.code == code_pb2.UNAUTHENTICATED
    assert response.denied_response.status.code == 401

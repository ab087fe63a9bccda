"""Property: whatever a caller sends, the pipeline answers with an allow or a deny with a reason.

Hypothesis generates CheckRequests (Envoy's own protos), JWT-shaped bearer tokens (random
header and payload JSON, deep nesting, random base64), headers, bodies and paths, and runs
them through the gRPC adapter's translation, a real IdentityResolver and real policy engines
(rules and Rego). The pipeline must never raise, and its answer must translate into a
CheckResponse and an HTTP-mode response. Few examples, deterministic, no deadline: this runs
in CI; set ``AUTHD_HYPOTHESIS_EXAMPLES`` (say 5000) to search harder before a release.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from authd.authz.api_keys import ApiKeyEntry, ApiKeyStore, hash_api_key
from authd.authz.identity import IdentityResolver, IdentitySettings, IssuerSettings
from authd.authz.pipeline import Authorizer
from authd.check.header_values import is_field_value, is_token
from authd.check.model import Outcome, Reason
from authd.extauthz.grpc_servicer import check_response, context_from_check_request
from authd.extauthz.http_service import HttpAuthzServer, http_response
from authd.policy.base import Policy
from authd.policy.rego import RegoPolicy
from authd.policy.rules import RulesPolicy
from authd.ports.bundle_view import StaticBundles
from ca.bundle import TrustBundle
from ca.clock import FakeClock
from ca.spiffe_id import TrustDomain

EXAMPLES = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=int(os.environ.get("AUTHD_HYPOTHESIS_EXAMPLES", "60")),
)
EXAMPLE = TrustDomain("example.org")
ISSUER = "https://idp.example.com"

RULES = """\
version: 1
rule_sets:
  default:
    rules:
      - {name: no-staging, effect: deny, callers: ["spiffe://example.org/staging/*"]}
      - {name: admin, effect: deny, paths: ["/admin/*"]}
      - {name: public, effect: allow, methods: [GET], paths: ["/public/*", "/items/{id}"]}
      - {name: users, effect: allow, users: {claims: {scope: "read"}}}
      - {name: bots, effect: allow, api_keys: [bot], headers: {x-tenant: acme}}
"""
REGO = """\
package envoy.authz

import rego.v1

default allow := false

allow if input.parsed_path[0] == "public"

allow if input.parsed_body.role == "admin"

allow if input.parsed_query.debug[0] == "1"

allow if startswith(input.attributes.request.http.headers["x-tenant"], "acme")

allow if input.authd.peer == "spiffe://example.org/web"
"""


def policies() -> dict[str, Policy]:
    return {
        "rules": RulesPolicy.from_text(RULES, "policy.yaml"),
        "rego": RegoPolicy.from_sources({"authz.rego": REGO}, name="authz.rego"),
    }


def authorizer(policy: Policy) -> Authorizer:
    issuer = IssuerSettings(
        name="idp", issuer=ISSUER, jwks_uri="http://127.0.0.1:9/jwks", audiences=("orders",)
    )
    resolver = IdentityResolver(
        trust_domain=EXAMPLE,
        bundles=StaticBundles(TrustBundle(EXAMPLE)),
        clock=FakeClock(),
        settings=IdentitySettings(jwt_svid_audiences=("orders",), issuers=(issuer,)),
        api_keys=ApiKeyStore([ApiKeyEntry("bot", hash_api_key("k" * 32))]),
    )
    return Authorizer(resolver=resolver, policy=lambda: policy)


# --- strategies ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def deeply_nested(depth: int, opener: str) -> str:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return opener * depth + ("1" if opener != "[" else "") + closer * depth


nested_json = st.builds(
    deeply_nested, st.integers(min_value=1, max_value=3_000), st.sampled_from(["[", '{"a":'])
)
claims = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.sampled_from(["spiffe://example.org/web", "alice", ""]) | st.text(max_size=20),
        "iss": st.sampled_from([ISSUER, "https://evil"]) | json_values,
        "aud": st.sampled_from(["orders", ["orders"]]) | json_values,
        "exp": st.integers() | st.floats(allow_nan=True) | json_values,
        "scope": st.just("read") | json_values,
        "x": json_values,
    },
).map(json.dumps)
jose_headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["ES256", "RS256", "none", "HS256"]) | json_values,
        "kid": st.text(max_size=8) | json_values,
        "typ": st.sampled_from(["JWT", "JOSE"]) | json_values,
    },
).map(json.dumps)


def b64(text: str | bytes) -> str:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


jwt_parts = st.one_of(
    jose_headers.map(b64),
    claims.map(b64),
    nested_json.map(b64),
    json_values.map(json.dumps).map(b64),
    st.binary(max_size=40).map(b64),
    st.text(max_size=20),
)
jwt_shaped = st.lists(jwt_parts, min_size=1, max_size=4).map(".".join) | st.builds(
    lambda h, p, s: f"{h}.{p}.{s}", jose_headers.map(b64), claims | nested_json, jwt_parts
).map(lambda t: ".".join(b64(p) if i == 1 else p for i, p in enumerate(t.split(".", 2))))

header_names = st.sampled_from(
    ["authorization", "x-api-key", "content-type", "x-tenant", "x-authd-caller", "host"]
) | st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
header_values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)
authorization = st.one_of(
    jwt_shaped.map(lambda t: f"Bearer {t}"),
    st.sampled_from(["Bearer", "Bearer ", "Basic abc", "bearer  x.y.z"]),
    header_values,
)
headers = st.dictionaries(header_names, header_values, max_size=5).flatmap(
    lambda h: st.fixed_dictionaries(
        {},
        optional={
            "authorization": authorization,
            "x-api-key": st.just("k" * 32) | header_values,
            "content-type": st.sampled_from(
                ["application/json", "application/x-www-form-urlencoded", "text/plain"]
            ),
        },
    ).map(lambda extra: {**h, **extra})
)
path_segments = st.sampled_from(
    [
        "public",
        "admin",
        "items",
        "1",
        "..",
        ".",
        "%2e%2e",
        "%2E.",
        "..%2f",
        "%5c",
        "\\",
        "",
        "%61dmin",
        "%",
        "%zz",
        "%00",
        "%252e",
    ]
) | st.text(max_size=8)
paths = st.builds(
    lambda segments, query: "/" + "/".join(segments) + query,
    st.lists(path_segments, max_size=6),
    st.sampled_from(["", "?debug=1", "?a=%2F..&a", "#frag", "?%zz=%"]) | st.text(max_size=10),
) | st.text(max_size=30)
bodies = st.one_of(
    st.binary(max_size=60),
    json_values.map(lambda v: json.dumps(v).encode()),
    nested_json.map(str.encode),
    st.sampled_from([b'{"role": "admin"}', b'{"a": "\\ud800"}', b'{"a": 1e400}', b"role=admin"]),
)
certificates = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.sampled_from(["-----BEGIN%20CERTIFICATE-----%0AMIIB%0A-----END%20CERTIFICATE-----%0A"]),
)
principals = st.sampled_from(["", "spiffe://example.org/web", "spiffe://evil.org/x"]) | st.text(
    max_size=20
)


@st.composite
def check_requests(draw: Any) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    attributes = request.attributes
    http = attributes.request.http
    http.method = draw(st.sampled_from(["GET", "POST", "DELETE", "get", ""]))
    http.host = draw(st.sampled_from(["api.example.org", "API.example.org:443", "[::1]", ""]))
    http.path = draw(paths)
    for name, value in draw(headers).items():
        http.headers[name] = value
    body = draw(bodies)
    if draw(st.booleans()):
        http.raw_body = body
    else:
        http.body = body.decode("utf-8", "replace")
    attributes.source.principal = draw(principals)
    attributes.source.certificate = draw(certificates)
    for key, value in draw(
        st.dictionaries(st.sampled_from(["policy", "audience", "x"]), header_values, max_size=2)
    ).items():
        attributes.context_extensions[key] = value
    return request


# --- the property ---------------------------------------------------------------------------


def assert_valid(outcome: Outcome) -> None:
    assert isinstance(outcome, Outcome)
    if outcome.allowed:
        assert outcome.decision.allowed
        assert outcome.status == 200
    else:
        assert isinstance(outcome.decision.reason, Reason)
        assert outcome.decision.reason != Reason.ALLOWED
        assert 400 <= outcome.status < 600
        assert json.loads(outcome.deny_body)["error"] == outcome.decision.reason
    # The pipeline is the one place that makes headers sendable (the adapters write what it
    # gives them): every name a token, every value an RFC 9110 field value.
    added = outcome.decision.response_headers_to_add or {}
    for headers in (outcome.upstream_headers, outcome.deny_headers, added):
        for name, value in headers.items():
            assert is_token(name) and is_field_value(value), (name, value)
    assert all(is_token(name) for name in outcome.remove_headers)
    check_response(outcome)  # the gRPC adapter can send it
    http_response(outcome)  # and so can the HTTP-service adapter


@pytest.fixture(scope="module")
def engines() -> dict[str, Authorizer]:
    return {name: authorizer(policy) for name, policy in policies().items()}


@pytest.mark.parametrize("engine", ["rules", "rego"])
@given(request=check_requests())
@EXAMPLES
def test_any_check_request_is_answered_with_an_allow_or_a_deny_with_a_reason(
    engines: dict[str, Authorizer], engine: str, request: external_auth_pb2.CheckRequest
) -> None:
    ctx = context_from_check_request(request)
    assert_valid(asyncio.run(engines[engine].check(ctx)))


@pytest.mark.parametrize("engine", ["rules", "rego"])
@given(token=jwt_shaped)
@EXAMPLES
def test_any_jwt_shaped_bearer_token_is_answered_with_an_allow_or_a_deny(
    engines: dict[str, Authorizer], engine: str, token: str
) -> None:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.host, http.path = "GET", "api.example.org", "/orders"
    http.headers["authorization"] = f"Bearer {token}"
    outcome = asyncio.run(engines[engine].check(context_from_check_request(request)))
    assert_valid(outcome)
    assert not outcome.allowed or outcome.identities.authenticated or engine == "rego"


latin1_values = st.text(st.characters(max_codepoint=255, blacklist_characters="\r\n\x00"))


@pytest.mark.parametrize("engine", ["rules", "rego"])
@given(
    url=paths.map(lambda p: p.encode("utf-8", "surrogatepass")) | st.binary(max_size=40),
    sent=st.dictionaries(
        header_names | st.sampled_from(["x-authd-peer-cert", "x-authd-ctx-policy"]),
        latin1_values,
        max_size=5,
    ),
    body=bodies,
)
@EXAMPLES
def test_any_http_mode_request_is_answered_with_an_allow_or_a_deny_with_a_reason(
    engines: dict[str, Authorizer],
    engine: str,
    url: bytes,
    sent: dict[str, str],
    body: bytes,
) -> None:
    server = HttpAuthzServer(engines[engine], host="127.0.0.1", port=0)
    ctx = server.context("POST", url, dict(sent), [body])
    assert_valid(asyncio.run(engines[engine].check(ctx)))

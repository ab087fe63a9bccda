"""Claim values in the headers authd sends, through a real Envoy on the shipped gateway configs.

An end user's verified ``sub`` goes upstream in ``x-authd-subject``. Whatever the issuer put
there, both ext_authz transports send the same thing: the value as it is, an RFC 8187
ext-value (``UTF-8''...``) for non-ASCII, or a 403 ``invalid_header_value`` when it cannot be
sent (CR, LF, NUL, other controls, too long) — never a forged header, never a 5xx.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from authd.check.header_values import MAX_VALUE_LENGTH, InvalidHeader, field_value
from tests.support.envoy import (
    Authd,
    EchoUpstream,
    Envoy,
    authd_config,
    gateway_config,
    request,
    start_authd,
    start_envoy,
)
from tests.support.idp import TokenIssuer

SUBJECT_HEADER = "x-authd-subject"
POLICY = """\
version: 1
default_rule_set: gateway
rule_sets:
  gateway:
    rules:
      - name: end-users
        effect: allow
        paths: ["/me/*"]
        users: {issuers: ["https://idp.example.com"]}
"""


@dataclass
class Gateway:
    mode: str
    envoy: Envoy
    port: int


@pytest.fixture(scope="module")
def issuer() -> Iterator[TokenIssuer]:
    server = TokenIssuer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def authd(tmp: Path, issuer: TokenIssuer) -> Iterator[Authd]:
    config = authd_config(extra=issuer.authd_toml())
    daemon = start_authd(tmp / "authd", config, files={"policy.yaml": POLICY})
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module", params=["grpc", "http"])
def gateway(
    request: pytest.FixtureRequest, authd: Authd, upstream: EchoUpstream, tmp: Path
) -> Iterator[Gateway]:
    mode = request.param
    config = gateway_config(mode, authd, upstream, tmp / f"{mode}.access.log")
    envoy = start_envoy(config, tmp, name=f"gw-{mode}")
    yield Gateway(mode, envoy, envoy.listener_port("gateway"))
    envoy.stop()


def assert_as_documented(gateway: Gateway, issuer: TokenIssuer, authd: Authd, sub: str) -> None:
    """``sub`` reaches the upstream exactly as the encoding rule says, or is a clean 403."""
    token = issuer.token(sub)
    reply = request(gateway.port, "/me/profile", headers={"authorization": f"Bearer {token}"})
    try:
        expected = field_value(SUBJECT_HEADER, sub)
    except InvalidHeader:
        assert reply.status == 403, (gateway.mode, sub, reply.status, reply.body)
        assert reply.json()["error"] == "invalid_header_value"
        decision = authd.decision(reply.json()["decision_id"])
        assert (decision["decision"], decision["reason"]) == ("deny", "invalid_header_value")
        return
    assert reply.status == 200, (gateway.mode, sub, reply.status, reply.body)
    seen = reply.upstream
    assert seen.one(SUBJECT_HEADER) == expected
    assert seen.values("x-authd-caller") == []


@pytest.mark.parametrize(
    "sub",
    [
        "alice",
        "alice\r\nx-authd-caller: spiffe://example.org/ns/prod/admin",
        "alice\nx-authd-caller: spiffe://example.org/ns/prod/admin",
        "nul\x00byte",
        "用户-42",
        "josé",
        "tab\tinside",
        " leading-space",
        "x" * (MAX_VALUE_LENGTH + 1),
        "é" * (MAX_VALUE_LENGTH // 6),  # fits raw, too long once encoded
    ],
    ids=["ascii", "crlf", "lf", "nul", "cjk", "latin1", "tab", "space", "long", "long-encoded"],
)
def test_subject_claim_is_sent_as_documented_or_denied(
    gateway: Gateway, issuer: TokenIssuer, authd: Authd, sub: str
) -> None:
    assert_as_documented(gateway, issuer, authd, sub)


def test_forged_header_line_never_reaches_the_upstream(
    gateway: Gateway, issuer: TokenIssuer, upstream: EchoUpstream
) -> None:
    before = len(upstream.seen)
    token = issuer.token("alice\r\nx-authd-caller: spiffe://example.org/ns/prod/admin")
    reply = request(gateway.port, "/me/x", headers={"authorization": f"Bearer {token}"})
    assert reply.status == 403
    assert len(upstream.seen) == before


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sub=st.text(min_size=1, max_size=40))
def test_any_subject_claim_is_sent_as_documented_or_denied(
    gateway: Gateway, issuer: TokenIssuer, authd: Authd, sub: str
) -> None:
    assume(not sub.startswith("spiffe://"))
    assert_as_documented(gateway, issuer, authd, sub)


def test_no_traceback_in_authds_log(gateway: Gateway, authd: Authd) -> None:
    assert "Traceback" not in authd.stderr_path.read_text()

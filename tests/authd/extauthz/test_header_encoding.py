"""Header values authd sends are safe by construction, and the same bytes on both transports."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Mapping
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

from authd.authz.decision_log import DecisionLog
from authd.authz.pipeline import Authorizer, AuthzSettings
from authd.check.header_values import (
    MAX_VALUE_LENGTH,
    InvalidHeader,
    field_value,
    is_field_value,
    is_token,
)
from authd.check.model import (
    CheckContext,
    Decision,
    Identities,
    Reason,
    UserIdentity,
)
from authd.extauthz.grpc_servicer import ExtAuthzService
from authd.extauthz.http_service import HttpAuthzServer
from authd.policy.base import InputDocument
from ca.spiffe_id import SpiffeId
from tests.support.authz import FixedIdentities
from tests.support.http_mode import RawResponse, get, read_response

WEB = SpiffeId.parse("spiffe://example.org/web")
FORGED = "alice\r\nx-authd-caller: spiffe://example.org/ns/prod/admin"


class AllowWith:
    """Allows everything, adding ``headers`` upstream (what a policy's ``headers`` does)."""

    name = "test:allow-with"

    def __init__(self, headers: Mapping[str, str] | None = None, deny: bool = False) -> None:
        self.headers = dict(headers or {})
        self.deny = deny

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        reason = Reason.POLICY_DENIED if self.deny else Reason.ALLOWED
        return Decision(allowed=not self.deny, reason=reason, rule="p", headers=self.headers)


def user(subject: str) -> Identities:
    return Identities(user=UserIdentity("https://idp.example", subject, {"sub": subject}))


def authorizer(
    identities: Identities, policy: AllowWith | None = None, *, dry_run: bool = False
) -> tuple[Authorizer, io.StringIO]:
    chosen = policy or AllowWith()
    log = io.StringIO()
    authz = Authorizer(
        resolver=FixedIdentities(identities),
        policy=lambda: chosen,
        decision_log=DecisionLog(log),
        settings=AuthzSettings(dry_run=dry_run),
    )
    return authz, log


def over_http(authz: Authorizer) -> RawResponse:
    async def run() -> RawResponse:
        server = HttpAuthzServer(authz, host="127.0.0.1", port=0)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(get("/api/orders"))
            response = await read_response(reader)
            writer.close()
            return response
        finally:
            await server.close()

    return asyncio.run(run())


def over_grpc(authz: Authorizer) -> Any:
    async def run() -> Any:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(ExtAuthzService(authz), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                request = external_auth_pb2.CheckRequest()
                http = request.attributes.request.http
                http.method, http.path, http.host = "GET", "/api/orders", "api.example.com"
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                return await stub.Check(request)
        finally:
            await server.stop(None)

    return asyncio.run(run())


def grpc_headers(reply: Any) -> dict[str, str]:
    response = reply.ok_response if reply.status.code == code_pb2.OK else reply.denied_response
    return {o.header.key: o.header.value for o in response.headers}


# --- the rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("alice", "alice"),
        ("spiffe://example.org/web", "spiffe://example.org/web"),
        ("a b\tc", "a b\tc"),
        ("", ""),
        ("josé", "UTF-8''jos%C3%A9"),
        ("用户-42", "UTF-8''%E7%94%A8%E6%88%B7-42"),
        (" padded", "UTF-8''%20padded"),
        ("UTF-8''looks-encoded", "UTF-8''UTF-8%27%27looks-encoded"),
        ("50%", "50%"),
    ],
)
def test_header_value_is_sent_as_is_or_as_an_rfc8187_ext_value(value: str, sent: str) -> None:
    assert field_value("x-authd-subject", value) == sent


UNSENDABLE = [FORGED, "a\nb", "a\rb", "nul\x00", "bell\x07", "del\x7f"]
UNSENDABLE.append("x" * (MAX_VALUE_LENGTH + 1))


@pytest.mark.parametrize("value", UNSENDABLE)
def test_unsendable_header_value_is_refused(value: str) -> None:
    with pytest.raises(InvalidHeader):
        field_value("x-authd-subject", value)


# --- through the pipeline and both transports -----------------------------------------------


def test_subject_with_crlf_is_a_403_deny_on_both_transports_and_logged_as_deny() -> None:
    authz, log = authorizer(user(FORGED))
    http = over_http(authz)
    assert http.status == 403
    assert b"x-authd-caller" not in http.head
    assert http.names() == ["content-type", "x-authd-decision-id", "content-length"]
    assert json.loads(http.body)["error"] == "invalid_header_value"
    reply = over_grpc(authz)
    assert reply.status.code == code_pb2.PERMISSION_DENIED
    assert reply.denied_response.status.code == 403
    assert "x-authd-caller" not in grpc_headers(reply)
    records = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(r["decision"], r["reason"], r["rule"]) for r in records] == [
        ("deny", "invalid_header_value", "header:x-authd-subject")
    ] * 2


@pytest.mark.parametrize("subject", ["josé", "用户-42", "Ünïcødé ✓"])
def test_non_ascii_subject_is_the_same_ext_value_on_both_transports(subject: str) -> None:
    authz, log = authorizer(user(subject))
    http = over_http(authz)
    assert http.status == 200
    expected = field_value("x-authd-subject", subject)
    assert expected.startswith("UTF-8''") and expected.isascii()
    assert http.header("x-authd-subject") == expected
    reply = over_grpc(authz)
    assert reply.status.code == code_pb2.OK
    assert grpc_headers(reply)["x-authd-subject"] == expected
    assert all(json.loads(line)["decision"] == "allow" for line in log.getvalue().splitlines())


def test_policy_header_value_with_a_newline_is_a_deny() -> None:
    authz, _ = authorizer(Identities(peer=WEB), AllowWith({"x-tenant": "acme\r\nx-admin: 1"}))
    http = over_http(authz)
    assert http.status == 403
    assert b"x-admin" not in http.head
    assert over_grpc(authz).denied_response.status.code == 403


@pytest.mark.parametrize("name", ["x bad", "x-a:b", "", "x-\r\nforged", "ünï"])
def test_policy_header_name_that_is_not_a_token_is_a_deny(name: str) -> None:
    authz, log = authorizer(Identities(peer=WEB), AllowWith({name: "v"}))
    assert over_http(authz).status == 403
    assert over_grpc(authz).denied_response.status.code == 403
    rules = {json.loads(line)["rule"] for line in log.getvalue().splitlines()}
    assert rules == {"header:(invalid name)"}


def test_policy_deny_headers_are_checked_too() -> None:
    authz, _ = authorizer(Identities(peer=WEB), AllowWith({"x-why": "a\nb"}, deny=True))
    http = over_http(authz)
    assert http.status == 403
    assert json.loads(http.body)["error"] == "invalid_header_value"


def test_unsendable_header_stays_a_deny_in_dry_run() -> None:
    authz, log = authorizer(user(FORGED), dry_run=True)
    assert over_http(authz).status == 403
    assert json.loads(log.getvalue())["decision"] == "deny"


@pytest.mark.parametrize("value", [FORGED, "nul\x00", "josé", " padded "])
def test_the_pipeline_hands_the_adapters_only_sendable_values(value: str) -> None:
    # The adapters write what the pipeline gives them: it is the one check.
    authz, _ = authorizer(user(value))
    outcome = asyncio.run(authz.check(CheckContext(method="GET", host="h", path="/", headers={})))
    for headers in (outcome.upstream_headers, outcome.deny_headers):
        assert all(is_token(k) and is_field_value(v) for k, v in headers.items())

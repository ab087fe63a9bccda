"""Decisions from an OPA server over its REST Data API.

No OPA binary can be installed here, so the server is a stand-in (tests/support/opa.py) that
speaks OPA's Data API (POST /v1/data/<path> with {"input": ...} → {"result": ...}, or {} when
undefined), evaluates trivially and records every input it receives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from authd.authz.pipeline import identity_document
from authd.check.input_document import input_document
from authd.check.model import CheckContext, Decision, Identities, Reason
from authd.policy.base import PolicyError
from authd.policy.opa import OpaPolicy
from authd.transport.eager import run_eagerly
from ca.spiffe_id import SpiffeId
from tests.support.opa import OpaStandIn
from tests.support.ports import free_port

T = TypeVar("T")


class FakeOpa(OpaStandIn):
    """OPA's Data API over a fixed table of documents; remembers what it was asked."""

    def answer(self, path: str, received: Any) -> tuple[int, str, bytes]:
        """(status, content type, body) for a query of ``path`` with input ``received``."""
        method = received.get("attributes", {}).get("request", {}).get("http", {}).get("method")
        documents: dict[str, Any] = {
            "envoy/authz/allow": {"result": method == "GET"},
            "envoy/authz/response": {
                "result": {
                    "allowed": method == "GET",
                    "headers": {"x-opa": "yes"},
                    "http_status": 200 if method == "GET" else 451,
                    "body": "" if method == "GET" else "unavailable",
                    "dynamic_metadata": {"decided_by": "opa"},
                }
            },
            "envoy/authz/malformed": {"result": {"allowed": "yes"}},
            "broken/list": [1, 2],
        }
        if path == "broken/status":
            body = {"code": "internal_error", "message": "boom"}
            return 500, "application/json", json.dumps(body).encode()
        if path == "broken/json":
            return 200, "application/json", b'{"result": tru'
        if path == "broken/text":
            return 200, "text/plain", b"hello"
        if path == "slow/allow":
            self.release.wait(timeout=10)
        # OPA answers an undefined document with 200 and no "result".
        return 200, "application/json", json.dumps(documents.get(path, {})).encode()


@pytest.fixture
def opa() -> Iterator[FakeOpa]:
    server = FakeOpa()
    yield server
    server.close()


def run_with(policy: OpaPolicy, step: Callable[[OpaPolicy], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await step(policy)
        finally:
            await policy.aclose()

    return asyncio.run(main())


def document(method: str = "GET", path: str = "/") -> dict[str, Any]:
    ctx = CheckContext(method=method, host="api.example.com", path=path, headers={})
    doc = input_document(ctx)
    doc["authd"] = identity_document(Identities())
    return doc


def query(policy: OpaPolicy, doc: dict[str, Any]) -> Decision:
    return run_with(policy, lambda p: p.query(doc))


def query_error(policy: OpaPolicy, doc: dict[str, Any] | None = None) -> str:
    with pytest.raises(PolicyError) as info:
        query(policy, doc or document())
    return str(info.value)


# --- decisions --------------------------------------------------------------------------


def test_boolean_true_from_opa_allows(opa: FakeOpa) -> None:
    decision = query(OpaPolicy(opa.url), document("GET"))
    assert decision.allowed
    assert decision.reason is Reason.ALLOWED
    assert decision.rule == "envoy/authz/allow"


def test_boolean_false_from_opa_is_policy_denied(opa: FakeOpa) -> None:
    decision = query(OpaPolicy(opa.url), document("DELETE"))
    assert not decision.allowed
    assert decision.reason is Reason.POLICY_DENIED


def test_object_result_maps_as_for_embedded_rego(opa: FakeOpa) -> None:
    policy = OpaPolicy(opa.url, path="envoy/authz/response")
    decision = query(policy, document("POST"))
    assert decision == Decision(
        allowed=False,
        reason=Reason.POLICY_DENIED,
        rule="envoy/authz/response",
        http_status=451,
        headers={"x-opa": "yes"},
        body="unavailable",
        dynamic_metadata={"decided_by": "opa"},
    )


def test_undefined_document_denies_and_says_undefined(opa: FakeOpa) -> None:
    decision = query(OpaPolicy(opa.url, path="envoy/authz/nothing_here"), document())
    assert not decision.allowed
    assert decision.reason is Reason.POLICY_DENIED
    assert decision.rule == "envoy/authz/nothing_here (undefined)"


def test_input_document_arrives_intact(opa: FakeOpa) -> None:
    ctx = CheckContext(
        method="POST",
        host="api.example.com",
        path="/orders/42?expand=items&expand=customer",
        headers={"content-type": "application/json", "x-tenant": "acme"},
        body=b'{"qty": 2, "sku": "\\u00e9"}',
        source_principal="spiffe://example.org/web",
    )
    doc = input_document(ctx)
    doc["authd"] = identity_document(Identities(peer=SpiffeId.parse("spiffe://example.org/web")))
    expected = json.loads(json.dumps(doc))
    query(OpaPolicy(opa.url), doc)
    assert opa.requests == [("envoy/authz/allow", expected)]
    assert opa.inputs[0]["parsed_body"] == {"qty": 2, "sku": "é"}
    assert opa.inputs[0]["authd"]["caller"] == "spiffe://example.org/web"


def test_path_with_dots_or_data_prefix_queries_the_same_document(opa: FakeOpa) -> None:
    for path in ("envoy.authz.allow", "data.envoy.authz.allow", "/envoy/authz/allow"):
        assert query(OpaPolicy(opa.url, path=path), document("GET")).allowed
    assert [p for p, _ in opa.requests] == ["envoy/authz/allow"] * 3


def test_evaluate_sends_the_pipelines_input_document(opa: FakeOpa) -> None:
    doc = document("GET", "/public")
    ctx = CheckContext(method="GET", host="h", path="/public", headers={})
    decision = run_with(OpaPolicy(opa.url), lambda p: p.evaluate(ctx, Identities(), lambda: doc))
    assert decision.allowed
    assert opa.inputs == [doc]


def test_checks_reuse_one_keep_alive_connection(opa: FakeOpa) -> None:
    async def three(policy: OpaPolicy) -> list[bool]:
        return [(await policy.query(document("GET"))).allowed for _ in range(3)]

    assert run_with(OpaPolicy(opa.url), three) == [True, True, True]
    assert len(opa.requests) == 3
    assert len(opa.client_ports) == 1


# --- errors are PolicyErrors, never a deny ----------------------------------------------


def test_connection_refused_is_a_policy_error() -> None:
    port = free_port()
    message = query_error(OpaPolicy(f"http://127.0.0.1:{port}"))
    assert message.startswith(f"cannot reach OPA at http://127.0.0.1:{port} (envoy/authz/allow)")


def test_non_200_answer_is_a_policy_error(opa: FakeOpa) -> None:
    message = query_error(OpaPolicy(opa.url, path="broken/status"))
    assert message == f"OPA at {opa.url} (broken/status) answered HTTP 500 Internal Server Error"


def test_invalid_json_is_a_policy_error(opa: FakeOpa) -> None:
    message = query_error(OpaPolicy(opa.url, path="broken/json"))
    assert message.startswith(f"OPA at {opa.url} (broken/json) answered with invalid JSON")


def test_non_json_content_is_a_policy_error(opa: FakeOpa) -> None:
    message = query_error(OpaPolicy(opa.url, path="broken/text"))
    assert message == f"OPA at {opa.url} (broken/text) answered text/plain, not JSON"


def test_json_that_is_not_an_object_is_a_policy_error(opa: FakeOpa) -> None:
    message = query_error(OpaPolicy(opa.url, path="broken/list"))
    assert message == f"OPA at {opa.url} (broken/list) answered list, not a JSON object"


def test_malformed_result_is_a_policy_error(opa: FakeOpa) -> None:
    message = query_error(OpaPolicy(opa.url, path="envoy/authz/malformed"))
    assert message == "envoy/authz/malformed: 'allowed' must be a boolean, not string"


def test_no_answer_within_the_timeout_is_a_policy_error(opa: FakeOpa) -> None:
    message = query_error(OpaPolicy(opa.url, path="slow/allow", timeout=0.05))
    assert message == f"OPA at {opa.url} (slow/allow) did not answer within 0.05s"
    assert [p for p, _ in opa.requests] == ["slow/allow"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://127.0.0.1:8181", "expected http(s)://host[:port]"),
        ("127.0.0.1:8181", "expected http(s)://host[:port]"),
        ("http://127.0.0.1:8181/v1/data", "give only scheme, host and port"),
        ("http://127.0.0.1:99999", "Port out of range"),
    ],
)
def test_bad_url_is_refused_at_construction(url: str, why: str) -> None:
    with pytest.raises(PolicyError) as info:
        OpaPolicy(url)
    assert why in str(info.value)


def test_policy_is_named_after_the_document_it_queries() -> None:
    assert OpaPolicy("http://opa:8181/", "envoy.authz.allow").name == (
        "opa:http://opa:8181/v1/data/envoy/authz/allow"
    )


# --- as the transports run a check: eagerly, from a loop callback, outside any task ----------


def query_as_transports_do(policy: OpaPolicy, doc: dict[str, Any]) -> tuple[object, object]:
    """``policy.query(doc)`` started by ``run_eagerly`` from a plain loop callback (as the
    native gRPC and HTTP-mode listeners start checks), awaited until done."""

    async def main() -> tuple[object, object]:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[tuple[object, object]] = loop.create_future()
        loop.call_soon(
            lambda: run_eagerly(policy.query(doc), lambda r, e: outcome.set_result((r, e)))
        )
        try:
            return await asyncio.wait_for(outcome, 10)
        finally:
            await policy.aclose()

    return asyncio.run(main())


def test_a_check_started_eagerly_outside_a_task_gets_opas_answer(opa: FakeOpa) -> None:
    decision, error = query_as_transports_do(OpaPolicy(opa.url), document("GET"))
    assert error is None
    assert isinstance(decision, Decision) and decision.allowed


def test_a_check_started_eagerly_outside_a_task_times_out_as_a_policy_error(
    opa: FakeOpa,
) -> None:
    policy = OpaPolicy(opa.url, path="slow/allow", timeout=0.05)
    decision, error = query_as_transports_do(policy, document())
    assert decision is None and isinstance(error, PolicyError)
    assert str(error) == f"OPA at {opa.url} (slow/allow) did not answer within 0.05s"

"""The allow answers built from a template (gRPC and HTTP mode) are the answers built whole."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from authd.check.model import Decision, Identities, Outcome, Reason
from authd.extauthz import grpc_servicer
from authd.extauthz.grpc_servicer import check_response
from authd.extauthz.http_service import http_response

CALLER = "spiffe://example.org/ns/prod/web"
REMOVE = ["x-authd-subject", "authorization", "x-api-key"]


def allow(decision_id: str, **changes: Any) -> Outcome:
    headers = {"x-authd-decision-id": decision_id, "x-authd-caller": CALLER}
    headers.update(changes.pop("extra_headers", {}))
    metadata: dict[str, Any] = {
        "decision_id": decision_id,
        "reason": "allowed",
        "rule": "prod",
        "caller": CALLER,
    }
    metadata.update(changes.pop("extra_metadata", {}))
    decision = Decision(True, Reason.ALLOWED, rule="prod", **changes.pop("decision", {}))
    return Outcome(
        decision=decision,
        identities=Identities(),
        decision_id=decision_id,
        status=200,
        allowed=True,
        upstream_headers=headers,
        remove_headers=list(REMOVE),
        dynamic_metadata=metadata,
        **changes,
    )


def uncached(outcome: Outcome) -> Any:
    return grpc_servicer._check_response(outcome)


def test_each_answer_carries_its_own_decision_id() -> None:
    first, second = check_response(allow("a-1")), check_response(allow("a-2"))
    assert first == uncached(allow("a-1"))
    assert second == uncached(allow("a-2"))
    assert second.ok_response.headers[0].header.value == "a-2"
    assert second.dynamic_metadata.fields["decision_id"].string_value == "a-2"
    assert first.dynamic_metadata.fields["decision_id"].string_value == "a-1"  # not shared


def test_a_header_that_happens_to_equal_the_decision_id_is_not_taken_for_it() -> None:
    check_response(allow("a-1", extra_headers={"x-echo": "a-1"}))
    outcome = allow("a-2", extra_headers={"x-echo": "a-1"})
    assert check_response(outcome) == uncached(outcome)
    outcome = allow("a-3", extra_headers={"x-echo": "a-3"})
    assert check_response(outcome) == uncached(outcome)


def test_unusual_allows_are_built_field_by_field() -> None:
    for outcome in (
        allow("b-1", extra_metadata={"dry_run_would_deny": True}),
        allow("b-2", decision={"dynamic_metadata": {"tenant": "acme"}}),
        allow("b-3", decision={"response_headers_to_add": {"x-served-by": "authd"}}),
        allow("b-4", decision={"query_parameters_to_set": {"tenant": "acme"}}),
        allow("b-5", txn="b-5"),
    ):
        assert grpc_servicer._allow_key(outcome) is None
        assert check_response(outcome) == uncached(outcome)


_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)


@settings(max_examples=100, deadline=None)
@given(
    ids=st.lists(_values.filter(bool), min_size=2, max_size=4, unique=True),
    headers=st.dictionaries(st.sampled_from(["x-a", "x-b", "x-authd-subject"]), _values),
    rule=_values,
)
def test_cached_answers_equal_answers_built_field_by_field(
    ids: list[str], headers: dict[str, str], rule: str
) -> None:
    for decision_id in ids:
        outcome = allow(decision_id, extra_headers=headers, extra_metadata={"rule": rule})
        assert check_response(outcome) == uncached(outcome)


def test_http_replies_carry_their_own_decision_id() -> None:
    assert b"x-authd-decision-id: h-1\r\n" in http_response(allow("h-1"))
    reply = http_response(allow("h-2"))
    assert b"x-authd-decision-id: h-2\r\n" in reply and b"h-1" not in reply

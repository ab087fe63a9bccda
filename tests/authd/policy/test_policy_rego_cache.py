"""The Rego decision cache: a deterministic policy's decision is kept by the pruned input it
read; a policy using time, randomness, the network or print is evaluated every time."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

import jwt
import pytest
from envoy.service.auth.v3 import external_auth_pb2

from authd.authz.pipeline import Authorizer, identity_document
from authd.check.input_document import input_document
from authd.check.model import (
    CheckContext,
    Decision,
    EnvoyResponse,
    Identities,
    PolicyTrace,
    Reason,
)
from authd.extauthz.grpc_servicer import context_from_check_request
from authd.policy.rego import RegoPolicy, prune_input
from authd.policy.rego_source import is_deterministic
from ca.spiffe_id import SpiffeId
from tests.support.authz import FixedIdentities

METHOD_AND_PATH = """\
package envoy.authz

import rego.v1

default allow := false

allow if {
    input.attributes.request.http.method == "GET"
    input.parsed_path[0] == "public"
}
"""

SECRET = "s" * 32
HS256_TOKEN = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")


def policy(text: str = METHOD_AND_PATH, **kw: Any) -> RegoPolicy:
    return RegoPolicy.from_sources({"authz.rego": text}, **kw)


def document(method: str = "GET", path: str = "/public/x", **headers: str) -> dict[str, Any]:
    return {
        "attributes": {"request": {"http": {"method": method, "path": path, "headers": headers}}},
        "parsed_path": path.strip("/").split("/"),
    }


# --- what is cached ---------------------------------------------------------------------------


def test_second_identical_input_is_a_hit_with_an_equal_decision() -> None:
    rego = policy()
    first = rego.evaluate_document(document())
    second = rego.evaluate_document(document())
    assert (rego.cache_hits, rego.cache_misses) == (1, 1)
    assert second == first
    assert second.allowed


def test_a_different_value_at_a_path_the_policy_reads_is_a_miss() -> None:
    rego = policy()
    assert rego.evaluate_document(document("GET")).allowed
    assert not rego.evaluate_document(document("POST")).allowed
    assert not rego.evaluate_document(document("GET", "/private")).allowed
    assert (rego.cache_hits, rego.cache_misses) == (0, 3)


def test_a_change_at_a_path_the_policy_does_not_read_is_a_hit() -> None:
    rego = policy()
    rego.evaluate_document(document(**{"x-request-id": "1"}))
    decision = rego.evaluate_document(document(**{"x-request-id": "2"}))
    assert decision.allowed
    assert (rego.cache_hits, rego.cache_misses) == (1, 1)


@pytest.mark.parametrize(
    "expression",
    [
        "time.now_ns() > 0",
        'rand.intn("x", 10) >= 0',
        'is_string(uuid.rfc4122("x"))',
        'print("checked")',
        f'io.jwt.decode_verify("{HS256_TOKEN}", {{"secret": "{SECRET}"}})[0]',
    ],
)
def test_policy_calling_a_nondeterministic_builtin_is_never_cached(expression: str) -> None:
    rego = policy(
        "package envoy.authz\n\nimport rego.v1\n\n"
        f'allow if {{\n    input.parsed_path[0] == "public"\n    {expression}\n}}\n'
    )
    assert not rego.deterministic
    for _ in range(3):
        rego.evaluate_document(document())
    assert (rego.cache_hits, rego.cache_misses) == (0, 0)


def test_a_time_dependent_result_is_computed_at_each_evaluation() -> None:
    rego = policy(
        "package envoy.authz\n\nimport rego.v1\n\n"
        'response := {"allowed": true, "dynamic_metadata": {"at": time.now_ns()}}\n',
        entrypoint="envoy/authz/response",
    )
    times = {rego.evaluate_document(document()).dynamic_metadata["at"] for _ in range(3)}
    assert len(times) == 3


def test_policy_reading_the_whole_input_is_not_cached() -> None:
    rego = policy(
        "package envoy.authz\n\nimport rego.v1\n\n"
        'allow if object.get(input, ["parsed_path", 0], "") == "public"\n'
    )
    assert rego.input_paths is None and rego.decision_cache_size == 0
    assert rego.evaluate_document(document()).allowed
    assert rego.evaluate_document(document()).allowed
    assert (rego.cache_hits, rego.cache_misses) == (0, 0)


def test_errors_are_not_cached() -> None:
    rego = policy(
        "package envoy.authz\n\nimport rego.v1\n\n"
        'allow := true if input.parsed_path[0] == "public"\n'
        'allow := false if input.attributes.request.http.method == "GET"\n'
    )
    for _ in range(2):
        with pytest.raises(Exception, match="multiple outputs"):
            rego.evaluate_document(document())
    assert (rego.cache_hits, rego.cache_misses) == (0, 2)


def test_a_cache_of_zero_entries_is_off() -> None:
    rego = policy(decision_cache=0)
    rego.evaluate_document(document())
    rego.evaluate_document(document())
    assert (rego.cache_hits, rego.cache_misses) == (0, 0)


# --- bounds and lifetime ------------------------------------------------------------------------


def test_cache_holds_at_most_its_size_and_forgets_the_oldest_first() -> None:
    rego = policy(decision_cache=3)
    for path in ("/a", "/b", "/c", "/d"):  # "/a" is forgotten to make room for "/d"
        rego.evaluate_document(document("GET", path))
    rego.evaluate_document(document("GET", "/d"))
    assert (rego.cache_hits, rego.cache_misses) == (1, 4)
    rego.evaluate_document(document("GET", "/a"))
    assert (rego.cache_hits, rego.cache_misses) == (1, 5)


def test_a_reloaded_policy_starts_with_an_empty_cache() -> None:
    rego = policy()
    rego.evaluate_document(document())
    rego.evaluate_document(document())
    reloaded = policy()
    assert (reloaded.cache_hits, reloaded.cache_misses) == (0, 0)
    assert reloaded.evaluate_document(document()).allowed
    assert (reloaded.cache_hits, reloaded.cache_misses) == (0, 1)


def test_small_cache_decides_correctly_from_several_threads_at_once() -> None:
    rego = policy(decision_cache=2)  # constant eviction
    failures: list[str] = []

    def worker(path: str, expected: bool) -> None:
        for _ in range(300):
            if rego.evaluate_document(document("GET", path)).allowed is not expected:
                failures.append(path)

    paths = ("/public/a", "/private", "/public/b", "/other")
    threads = [threading.Thread(target=worker, args=(p, p.startswith("/public"))) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- a cached decision cannot be changed by a caller ---------------------------------------------


def test_changing_a_returned_decision_does_not_change_the_cached_one() -> None:
    rego = policy(
        "package envoy.authz\n\nimport rego.v1\n\n"
        "response := {\n"
        '    "allowed": true,\n'
        '    "headers": {"x-a": "1"},\n'
        '    "request_headers_to_remove": ["authorization"],\n'
        '    "dynamic_metadata": metadata,\n'
        "}\n\n"
        'metadata := {"user": {"name": "alice"}} if input.parsed_path[0] == "public"\n',
        entrypoint="envoy/authz/response",
    )
    for _ in range(2):  # a miss, then a hit
        decision = rego.evaluate_document(document())
        expected = rego.evaluate_document(document())
        decision.reason = Reason.MISSING_CREDENTIALS
        decision.headers["x-b"] = "2"
        decision.request_headers_to_remove.append("x-api-key")
        decision.dynamic_metadata["user"]["name"] = "mallory"
        assert rego.evaluate_document(document()) == expected
        assert expected.dynamic_metadata == {"user": {"name": "alice"}}


def test_a_deny_rewritten_for_an_anonymous_caller_stays_a_policy_deny_for_a_known_one() -> None:
    # The pipeline turns a deny for a caller with no identity into missing_credentials by
    # changing the decision it was given; the cached decision must not remember that.
    rego = policy()
    ctx = CheckContext(method="POST", host="api.example.com", path="/public/x", headers={})
    known = Identities(peer=SpiffeId.parse("spiffe://example.org/ns/prod/sa/web"))
    anonymous = Authorizer(resolver=FixedIdentities(Identities()), policy=lambda: rego)
    authenticated = Authorizer(resolver=FixedIdentities(known), policy=lambda: rego)
    first = asyncio.run(anonymous.check(ctx))
    second = asyncio.run(authenticated.check(ctx))
    assert (first.status, first.decision.reason) == (401, Reason.MISSING_CREDENTIALS)
    assert (second.status, second.decision.reason) == (403, Reason.POLICY_DENIED)
    assert rego.cache_hits == 1


def test_decision_copy_knows_every_field_of_decision() -> None:
    # The cache copies decisions field by field; a new Decision field must be copied too.
    from authd.policy.rego import _copy_decision

    original = Decision(
        allowed=True,
        reason=Reason.ALLOWED,
        rule="r",
        http_status=201,
        headers={"a": "1"},
        response_headers_to_add={"b": "2"},
        request_headers_to_remove=["c"],
        query_parameters_to_set={"d": "4"},
        query_parameters_to_remove=["e"],
        body="f",
        dynamic_metadata={"g": {"h": 1}},
        txn_scope=("pay",),
        envoy=EnvoyResponse(headers=(("i", "9"),)),
        trace=PolicyTrace({"allowed": True}, 5),
    )
    fields = {field.name for field in dataclasses.fields(Decision)}
    assert fields == {
        "allowed",
        "reason",
        "rule",
        "http_status",
        "headers",
        "response_headers_to_add",
        "request_headers_to_remove",
        "query_parameters_to_set",
        "query_parameters_to_remove",
        "body",
        "dynamic_metadata",
        "txn_scope",
        "envoy",
        "trace",
    }, "Decision changed: update _copy_decision in authd/policy/rego.py and this test"
    copied = _copy_decision(original)
    assert copied == original
    for name in fields:
        value = getattr(original, name)
        if isinstance(value, dict | list):
            assert getattr(copied, name) is not value, name
    assert copied.dynamic_metadata["g"] is not original.dynamic_metadata["g"]


# --- which policies are deterministic ---------------------------------------------------------


def test_deploy_example_policy_is_deterministic() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "deploy/policy/authz.rego").read_text()
    assert is_deterministic([text])


@pytest.mark.parametrize(
    "body",
    [
        "x := time.now_ns()",
        'x := rand.intn("k", 5)',
        'x := uuid.rfc4122("k")',
        'x := http.send({"method": "GET", "url": "http://a"})',
        'x := net.lookup_ip_addr("example.org")',
        "x := opa.runtime()",
        'x := io.jwt.decode_verify(t, {"cert": c})',
        'x := io.jwt.encode_sign({"alg": "ES256"}, {}, k)',
        "x := crypto.x509.parse_and_verify_certificates(c)",
        'print("x")',
        'trace("x")',
        'x := $"now {time.now_ns()}"',
    ],
)
def test_clock_random_network_runtime_and_output_builtins_are_not_deterministic(
    body: str,
) -> None:
    assert not is_deterministic([f"package p\n\nallow if {{\n    {body}\n}}\n"])


@pytest.mark.parametrize(
    "body",
    [
        "# time.now_ns() in a comment\n    true",
        'x := "time.now_ns() in a string"',
        "x := `print(raw string)`",
        'x := uuid.parse("00000000-0000-0000-0000-000000000000")',
        'x := io.jwt.decode("a.b.c")',
        'x := time.parse_rfc3339_ns("2024-01-01T00:00:00+00:00")',
        "x := data.time.now_ns",
        "x := input.print",
        "x := printer",
    ],
)
def test_other_code_and_names_in_comments_or_strings_are_deterministic(body: str) -> None:
    assert is_deterministic([f"package p\n\nallow if {{\n    {body}\n}}\n"])


# --- the input a check hands Rego ---------------------------------------------------------------


class PartsOnly:
    """An input document that gives only parts (as the pipeline's does); all of it fails."""

    def __init__(self, whole: dict[str, Any]) -> None:
        self.whole = whole
        self.asked: list[Any] = []

    def __call__(self) -> dict[str, Any]:
        raise AssertionError("the whole input document was built")

    def pruned(self, paths: Any) -> dict[str, Any]:
        self.asked.append(paths)
        return prune_input(self.whole, paths)


def test_rego_asks_an_input_document_that_can_for_just_the_paths_it_reads() -> None:
    rego = policy()
    ctx = CheckContext(method="GET", host="", path="/public/x", headers={})
    allowed = PartsOnly(document())
    assert asyncio.run(rego.evaluate(ctx, Identities(), allowed)).allowed
    assert allowed.asked == [rego.input_paths]
    assert not asyncio.run(rego.evaluate(ctx, Identities(), PartsOnly(document("POST")))).allowed


def test_rego_reading_the_whole_input_builds_all_of_it_and_a_plain_callable_still_works() -> None:
    whole_reader = policy(
        "package envoy.authz\n\nimport rego.v1\n\n"
        'allow if object.get(input, ["parsed_path", 0], "") == "public"\n'
    )
    ctx = CheckContext(method="GET", host="", path="/public/x", headers={})
    with pytest.raises(AssertionError, match="whole input document"):
        asyncio.run(whole_reader.evaluate(ctx, Identities(), PartsOnly(document())))
    assert asyncio.run(whole_reader.evaluate(ctx, Identities(), document)).allowed
    assert asyncio.run(policy().evaluate(ctx, Identities(), document)).allowed


def test_a_grpc_check_hits_the_decision_cached_for_its_whole_input_document() -> None:
    # The parts the pipeline builds make the same cache key as pruning the whole document.
    rego = RegoPolicy.from_sources(
        {
            "authz.rego": (
                Path(__file__).resolve().parents[3] / "deploy/policy/authz.rego"
            ).read_text()
        }
    )
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.address.socket_address.address = "10.0.0.7"
    request.attributes.request.time.FromSeconds(1_790_000_000)
    http = request.attributes.request.http
    http.method, http.path, http.host = "GET", "/orders/7?expand=items", "api.example.com"
    http.headers.update({"x-request-id": "r-1", "user-agent": "curl/8"})
    ctx = context_from_check_request(request)
    identities = Identities(peer=SpiffeId.parse("spiffe://example.org/ns/prod/sa/web"))
    whole = input_document(ctx)
    whole["authd"] = identity_document(identities)
    assert rego.evaluate_document(whole).allowed
    authorizer = Authorizer(resolver=FixedIdentities(identities), policy=lambda: rego)
    assert asyncio.run(authorizer.check(ctx)).allowed
    assert (rego.cache_hits, rego.cache_misses) == (1, 1)

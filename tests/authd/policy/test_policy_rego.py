"""Rego through regopy: OPA-Envoy policies run unchanged, results map to decisions, and
compile or evaluation problems are reported with file and line."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from authd.authz.pipeline import identity_document
from authd.check.errors import MalformedRequest
from authd.check.input_document import input_document
from authd.check.model import (
    CheckContext,
    Decision,
    Identities,
    Reason,
    TxnToken,
    UserIdentity,
)
from authd.policy import rego
from authd.policy.base import PolicyError
from authd.policy.rego import RegoPolicy
from ca.spiffe_id import SpiffeId

REPO = Path(__file__).resolve().parents[3]

OPA_ENVOY_POLICY = """\
package envoy.authz

import rego.v1

default allow := false

allow if {
    input.attributes.request.http.method == "GET"
    input.parsed_path[0] == "public"
}
"""


def write(tmp_path: Path, text: str, name: str = "authz.rego") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, entrypoint: str = "envoy/authz/allow", **kw: Any) -> RegoPolicy:
    return RegoPolicy.load([write(tmp_path, text)], entrypoint, **kw)


def document(
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    identities: Identities | None = None,
) -> dict[str, Any]:
    """The input the pipeline hands a policy: OPA-Envoy's document plus input.authd."""
    ctx = CheckContext(method=method, host="api.example.com", path=path, headers=headers or {})
    doc = input_document(ctx)
    doc["authd"] = identity_document(identities or Identities())
    return doc


def result_policy(tmp_path: Path, result: str) -> RegoPolicy:
    text = f"package envoy.authz\n\nimport rego.v1\n\nresponse := {result}\n"
    return load(tmp_path, text, "envoy/authz/response")


# --- OPA-Envoy policies -----------------------------------------------------------------


def test_opa_envoy_policy_allows_get_on_a_public_path(tmp_path: Path) -> None:
    policy = load(tmp_path, OPA_ENVOY_POLICY)
    decision = policy.evaluate_document(document("GET", "/public/index.html"))
    assert decision.allowed
    assert decision.reason is Reason.ALLOWED
    assert decision.rule == "envoy/authz/allow"


@pytest.mark.parametrize(("method", "path"), [("POST", "/public/x"), ("GET", "/private/x")])
def test_opa_envoy_policy_false_is_policy_denied(tmp_path: Path, method: str, path: str) -> None:
    decision = load(tmp_path, OPA_ENVOY_POLICY).evaluate_document(document(method, path))
    assert not decision.allowed
    assert decision.reason is Reason.POLICY_DENIED
    assert decision.rule == "envoy/authz/allow"


def test_evaluate_builds_the_input_through_the_pipelines_callable(tmp_path: Path) -> None:
    policy = load(tmp_path, OPA_ENVOY_POLICY)
    calls: list[bool] = []

    def input_doc() -> dict[str, Any]:
        calls.append(True)
        return document("GET", "/public/a")

    ctx = CheckContext(method="GET", host="h", path="/public/a", headers={})
    decision = asyncio.run(policy.evaluate(ctx, Identities(), input_doc))
    assert decision.allowed
    assert calls == [True]


def test_verified_identities_are_visible_as_input_authd(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        "package envoy.authz\n\nimport rego.v1\n\n"
        'allow if startswith(input.authd.caller, "spiffe://example.org/ns/prod/")\n',
    )
    prod = Identities(peer=SpiffeId.parse("spiffe://example.org/ns/prod/sa/web"))
    staging = Identities(peer=SpiffeId.parse("spiffe://example.org/ns/staging/sa/web"))
    assert policy.evaluate_document(document(identities=prod)).allowed
    assert not policy.evaluate_document(document(identities=staging)).allowed


TXN_POLICY = """\
package envoy.authz

import rego.v1

default response := {"allowed": false}

response := {"allowed": true, "txn_scope": "pay"} if {
    input.authd.txn_token.req_wl == "spiffe://example.org/gateway"
    input.authd.peer == "spiffe://example.org/orders"
    "pay" in input.authd.txn_token.scope
}
"""


def test_a_verified_txn_token_is_input_authd_txn_token_and_txn_scope_narrows(
    tmp_path: Path,
) -> None:
    policy = load(tmp_path, TXN_POLICY, "envoy/authz/response")
    token = TxnToken(
        txn="t1",
        sub="alice",
        scope=("orders:read", "pay"),
        req_wl="spiffe://example.org/gateway",
        tctx={"method": "GET"},
        rctx={"authn": "oidc"},
        iat=1,
        exp=2,
        aud="spiffe://example.org",
    )
    orders = SpiffeId.parse("spiffe://example.org/orders")
    decision = policy.evaluate_document(
        document(identities=Identities(peer=orders, txn_token=token))
    )
    assert (decision.allowed, decision.txn_scope) == (True, ("pay",))
    assert not policy.evaluate_document(document(identities=Identities(peer=orders))).allowed
    assert document()["authd"]["txn_token"] is None


def test_io_jwt_decode_reads_the_claims_of_a_bearer_token(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """\
package envoy.authz

import rego.v1

default allow := false

token := payload if {
    [_, encoded] := split(input.attributes.request.http.headers.authorization, " ")
    [_, payload, _] := io.jwt.decode(encoded)
}

allow if {
    token.sub == "alice"
    "admins" in token.groups
}
""",
    )
    key = ec.generate_private_key(ec.SECP256R1())
    admin = jwt.encode({"sub": "alice", "groups": ["admins"]}, key, algorithm="ES256")
    other = jwt.encode({"sub": "alice", "groups": ["dev"]}, key, algorithm="ES256")
    assert policy.evaluate_document(document(headers={"authorization": f"Bearer {admin}"})).allowed
    assert not policy.evaluate_document(
        document(headers={"authorization": f"Bearer {other}"})
    ).allowed


def test_data_document_is_visible_as_data(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        "package envoy.authz\n\nimport rego.v1\n\n"
        "allow if input.parsed_path[0] in data.authd.open_prefixes\n",
        data={"authd": {"open_prefixes": ["docs", "public"]}},
    )
    assert policy.evaluate_document(document(path="/docs/x")).allowed
    assert not policy.evaluate_document(document(path="/admin")).allowed


def test_undefined_result_denies_and_says_undefined(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        'package envoy.authz\n\nimport rego.v1\n\nallow if input.parsed_path[0] == "public"\n',
    )
    decision = policy.evaluate_document(document(path="/private"))
    assert not decision.allowed
    assert decision.reason is Reason.POLICY_DENIED
    assert decision.rule == "envoy/authz/allow (undefined)"


def test_entrypoint_may_be_written_with_dots_or_data_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, OPA_ENVOY_POLICY)
    for entrypoint in ("envoy.authz.allow", "data.envoy.authz.allow", "/envoy/authz/allow"):
        policy = RegoPolicy.load([path], entrypoint)
        assert policy.entrypoint == "envoy/authz/allow"
        assert policy.evaluate_document(document("GET", "/public/x")).allowed


def test_directory_loads_every_rego_file_below_it(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    write(
        tmp_path / "lib", 'package lib\n\nimport rego.v1\n\nopen_prefix := "public"\n', "lib.rego"
    )
    write(
        tmp_path,
        "package envoy.authz\n\nimport rego.v1\n\n"
        "allow if input.parsed_path[0] == data.lib.open_prefix\n",
    )
    policy = RegoPolicy.load([tmp_path])
    assert policy.evaluate_document(document(path="/public")).allowed


def test_loaded_policy_does_not_change_when_its_file_does(tmp_path: Path) -> None:
    path = write(tmp_path, OPA_ENVOY_POLICY)
    policy = RegoPolicy.load([path])
    path.write_text(OPA_ENVOY_POLICY.replace('"public"', '"other"'))
    assert policy.evaluate_document(document("GET", "/public/x")).allowed


def test_policy_evaluates_correctly_from_several_threads_at_once(tmp_path: Path) -> None:
    policy = load(tmp_path, OPA_ENVOY_POLICY, decision_cache=0)  # every check runs Rego
    failures: list[str] = []

    def worker(method: str, expected: bool) -> None:
        for _ in range(200):
            if policy.evaluate_document(document(method, "/public/x")).allowed is not expected:
                failures.append(method)

    threads = [
        threading.Thread(target=worker, args=(method, method == "GET"))
        for method in ("GET", "POST", "GET", "PUT")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_example_policy_in_deploy_compiles_and_decides_as_documented() -> None:
    path = REPO / "deploy/policy/authz.rego"
    allow = RegoPolicy.load([path])
    response = RegoPolicy.load([path], "envoy/authz/response")
    prod = Identities(peer=SpiffeId.parse("spiffe://example.org/ns/prod/sa/web"))
    reader = Identities(user=UserIdentity("https://idp", "alice", {"scope": "orders:read"}))
    assert allow.evaluate_document(document("GET", "/public/x")).allowed
    assert allow.evaluate_document(document("POST", "/orders/1", identities=prod)).allowed
    assert allow.evaluate_document(document("GET", "/orders/1", identities=reader)).allowed
    assert not allow.evaluate_document(document("GET", "/orders/1")).allowed
    allowed = response.evaluate_document(document("POST", "/orders/1", identities=prod))
    assert allowed.headers == {"x-authd-caller": "spiffe://example.org/ns/prod/sa/web"}
    assert allowed.request_headers_to_remove == ["authorization"]
    denied = response.evaluate_document(document("GET", "/orders/1"))
    assert (denied.allowed, denied.http_status, denied.body) == (False, 403, "denied by policy")


# --- result objects ---------------------------------------------------------------------


def test_object_result_maps_every_opa_envoy_field(tmp_path: Path) -> None:
    # The parts are rules of their own because of a regopy bug with large constant objects
    # (see test_regopy_large_constant_object_bug_surfaces_as_policy_error).
    policy = load(
        tmp_path,
        """\
package envoy.authz

import rego.v1

response := {
    "allowed": true,
    "headers": {"x-user": "alice", "x-groups": ["a", "b"]},
    "response_headers_to_add": {"x-served-by": "authd"},
    "request_headers_to_remove": ["authorization"],
    "query_parameters_to_set": {"tenant": "acme"},
    "query_parameters_to_remove": ["debug"],
    "dynamic_metadata": metadata,
}

metadata := {"user": "alice", "tier": 2}
""",
        "envoy/authz/response",
    )
    decision = policy.evaluate_document(document())
    assert decision == Decision(
        allowed=True,
        reason=Reason.ALLOWED,
        rule="envoy/authz/response",
        headers={"x-user": "alice", "x-groups": "a, b"},
        response_headers_to_add={"x-served-by": "authd"},
        request_headers_to_remove=["authorization"],
        query_parameters_to_set={"tenant": "acme"},
        query_parameters_to_remove=["debug"],
        dynamic_metadata={"user": "alice", "tier": 2},
    )


def test_regopy_large_constant_object_bug_surfaces_as_policy_error(tmp_path: Path) -> None:
    # regopy 1.5.2 fails to evaluate this constant; the module docstring documents it. If this
    # test starts failing, regopy fixed it: drop the note there and this test.
    policy = result_policy(tmp_path, "{" + ", ".join(f'"k{i}": {i}' for i in range(7)) + "}")
    with pytest.raises(PolicyError) as info:
        policy.evaluate_document(document())
    assert "evaluating envoy/authz/response failed: bundle verify: raw index" in str(info.value)


def test_denying_object_carries_status_headers_and_body(tmp_path: Path) -> None:
    policy = result_policy(
        tmp_path,
        '{"allowed": false, "http_status": 302, "headers": {"location": "/login"}, '
        '"body": "log in first"}',
    )
    decision = policy.evaluate_document(document())
    assert not decision.allowed
    assert decision.reason is Reason.POLICY_DENIED
    assert (decision.http_status, decision.headers, decision.body) == (
        302,
        {"location": "/login"},
        "log in first",
    )


def test_headers_may_be_given_as_a_list_of_objects(tmp_path: Path) -> None:
    policy = result_policy(
        tmp_path, '{"allowed": true, "headers": [{"x-a": "1"}, {"x-b": "2"}, {"x-a": "3"}]}'
    )
    assert policy.evaluate_document(document()).headers == {"x-a": "1, 3", "x-b": "2"}


@pytest.mark.parametrize(
    ("result", "why"),
    [
        ('"yes"', "result must be a boolean or an object, not string"),
        ('{"headers": {}}', "result object has no 'allowed' key"),
        ('{"allowed": "true"}', "'allowed' must be a boolean, not string"),
        ('{"allowed": false, "http_status": 999}', "'http_status' 999 is not a known HTTP status"),
        ('{"allowed": false, "http_status": "403"}', "'http_status' must be a number"),
        ('{"allowed": true, "headers": {"x-a": 1}}', "header 'x-a' must be a string"),
        ('{"allowed": true, "headers": "x"}', "'headers' must be an object"),
        ('{"allowed": true, "body": 1}', "'body' must be a string"),
        ('{"allowed": true, "dynamic_metadata": []}', "'dynamic_metadata' must be an object"),
        ('{"allowed": true, "request_headers_to_remove": "a"}', "must be an array of strings"),
        ('{"allowed": true, "query_parameters_to_set": {"a": ["1", "2"]}}', "must be one string"),
        (
            '{"allowed": false, "headers": {"set-cookie": ["a=1", "b=2"]}}',
            "several set-cookie values",
        ),
    ],
)
def test_malformed_result_is_a_policy_error(tmp_path: Path, result: str, why: str) -> None:
    policy = result_policy(tmp_path, result)
    with pytest.raises(PolicyError) as info:
        policy.evaluate_document(document())
    assert str(info.value).startswith("envoy/authz/response: ")
    assert why in str(info.value)


# --- errors -----------------------------------------------------------------------------


def test_compile_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "package envoy.authz\n\nimport rego.v1\n\nallow if {\n    input.x ==\n}\n",
    )
    with pytest.raises(PolicyError) as info:
        RegoPolicy.load([path])
    assert str(info.value) == f"{path}:6:13: Invalid boolean operator"


def test_compile_error_in_one_of_several_files_names_that_file(tmp_path: Path) -> None:
    good = write(tmp_path, OPA_ENVOY_POLICY, "good.rego")
    bad = write(tmp_path, "package envoy.authz\n\nx := [1,\n", "bad.rego")
    with pytest.raises(PolicyError) as info:
        RegoPolicy.load([good, bad])
    assert str(info.value).startswith(f"{bad}:3:")


def test_conflicting_rules_across_files_are_refused_with_the_line(tmp_path: Path) -> None:
    first = write(tmp_path, OPA_ENVOY_POLICY, "a.rego")
    second = write(tmp_path, "package envoy.authz\n\ndefault allow := true\n", "b.rego")
    with pytest.raises(PolicyError) as info:
        RegoPolicy.load([first, second])
    assert str(info.value) == f"{second}:3:18: Multiple default rules"


def test_entrypoint_no_module_defines_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load(tmp_path, OPA_ENVOY_POLICY, "envoy/authz/alow")
    assert str(info.value) == (
        "entrypoint 'envoy/authz/alow' is not defined by any module (packages: envoy.authz)"
    )


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"absent\.rego: cannot read policy"):
        RegoPolicy.load([tmp_path / "absent.rego"])


def test_evaluation_error_raises_policy_error_not_a_deny(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        "package envoy.authz\n\nimport rego.v1\n\n"
        'allow := true if input.parsed_path[0] == "a"\n'
        'allow := false if input.attributes.request.http.method == "GET"\n',
    )
    assert policy.evaluate_document(document("POST", "/a")).allowed
    with pytest.raises(PolicyError) as info:
        policy.evaluate_document(document("GET", "/a"))
    assert "evaluating envoy/authz/allow failed" in str(info.value)
    assert "complete rules must not produce multiple outputs" in str(info.value)


@pytest.mark.parametrize(
    "expression",
    [
        'net.cidr_contains("10.0.0.0/8", "10.1.2.3")',
        'http.send({"method": "GET", "url": "http://127.0.0.1:1/"}).status_code == 200',
        'time.parse_rfc3339_ns("2024-01-01T00:00:00Z") > 0',
    ],
)
def test_builtins_regopy_lacks_make_the_rule_undefined_so_it_fails_closed(
    tmp_path: Path, expression: str
) -> None:
    policy = load(
        tmp_path,
        "package envoy.authz\n\nimport rego.v1\n\ndefault allow := false\n\n"
        f"allow if {expression}\n",
    )
    decision = policy.evaluate_document(document())
    assert not decision.allowed
    assert decision.reason is Reason.POLICY_DENIED


def test_crypto_x509_parse_certificates_reads_envoys_url_encoded_peer_certificate(
    tmp_path: Path,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://example.org/w")]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    policy = load(
        tmp_path,
        "package envoy.authz\n\nimport rego.v1\n\n"
        "allow if {\n"
        "    certs := crypto.x509.parse_certificates(urlquery.decode(input.cert))\n"
        '    certs[0].URIStrings == ["spiffe://example.org/w"]\n'
        "}\n",
    )
    doc = document()
    doc["cert"] = quote(pem, safe="")
    assert policy.evaluate_document(doc).allowed


# --- handing Rego only the input it reads ---------------------------------------------------


def test_static_input_paths_are_found_and_dynamic_indexes_keep_the_subtree() -> None:
    from authd.policy.rego_source import referenced_input_paths

    source = """package p
    # input.in_a_comment is not a reference
    allow if {
        input.attributes.request.http.method == "GET"
        input.attributes.request.http.headers[name]
        input.attributes.request.http.headers["x-tenant"] == "acme"
        input.parsed_path[0] == "orders"
        input["authd"].caller
    }"""
    assert referenced_input_paths([source]) == (
        ("attributes", "request", "http", "headers"),
        ("attributes", "request", "http", "method"),
        ("authd", "caller"),
        ("parsed_path",),
    )


def test_any_bare_use_of_input_gives_rego_the_whole_document() -> None:
    from authd.policy.rego_source import referenced_input_paths

    for body in (
        'object.get(input, "a", 1)',
        "walk(input, [p, v])",
        'x := "input"',
        "allow with input as {}",
    ):
        assert referenced_input_paths([f"package p\nallow if {{ {body} }}"]) is None, body


def test_pruned_input_decides_like_the_whole_input() -> None:
    from authd.policy.rego import prune_input

    policy = RegoPolicy.from_sources(
        {
            "p.rego": """package envoy.authz
import rego.v1
default allow := false
allow if {
    input.attributes.request.http.method == "GET"
    input.attributes.request.http.headers["x-tenant"] == "acme"
    input.parsed_path[0] == "orders"
}"""
        }
    )
    assert policy.input_paths is not None
    for method, tenant, path, allowed in (
        ("GET", "acme", "orders", True),
        ("POST", "acme", "orders", False),
        ("GET", "other", "orders", False),
        ("GET", "acme", "users", False),
    ):
        document = {
            "attributes": {
                "request": {"http": {"method": method, "headers": {"x-tenant": tenant}}},
                "source": {"principal": "spiffe://example.org/web"},
            },
            "parsed_path": [path, "7"],
            "parsed_query": {"big": ["x" * 1000]},
        }
        pruned = prune_input(document, policy.input_paths)
        assert "parsed_query" not in pruned and "source" not in pruned["attributes"]
        assert policy.evaluate_document(document).allowed is allowed


# --- holding the GIL: rego-cpp called directly, as regopy would ----------------------------------

LARGE_CONSTANT = "{" + ", ".join(f'"k{i}": {i}' for i in range(7)) + "}"  # the regopy bug


@pytest.mark.parametrize(
    ("source", "entrypoint", "doc"),
    [
        (OPA_ENVOY_POLICY, "envoy/authz/allow", document("GET", "/public/x")),  # allow
        (OPA_ENVOY_POLICY, "envoy/authz/allow", document("POST", "/public/x")),  # deny
        (  # undefined
            'package envoy.authz\n\nimport rego.v1\n\nallow if input.parsed_path[0] == "a"\n',
            "envoy/authz/allow",
            document("GET", "/b"),
        ),
        (  # an object result with every field
            "package envoy.authz\n\nimport rego.v1\n\n"
            'response := {"allowed": false, "http_status": 418, "body": "no", '
            '"headers": {"x-a": ["1", "2"]}, "dynamic_metadata": m}\n\n'
            'm := {"path": input.parsed_path, "n": 1.5, "none": null}\n',
            "envoy/authz/response",
            document("GET", "/a/b"),
        ),
        (  # an evaluation error: the output is not ok
            "package envoy.authz\n\nimport rego.v1\n\n"
            'allow := true if input.parsed_path[0] == "a"\n'
            'allow := false if input.attributes.request.http.method == "GET"\n',
            "envoy/authz/allow",
            document("GET", "/a"),
        ),
        (  # an "ok" output that is not JSON
            f"package envoy.authz\n\nimport rego.v1\n\nresponse := {LARGE_CONSTANT}\n",
            "envoy/authz/response",
            document(),
        ),
        (  # a malformed result
            'package envoy.authz\n\nimport rego.v1\n\nresponse := "yes"\n',
            "envoy/authz/response",
            document(),
        ),
        (  # an input Rego cannot take
            'package envoy.authz\n\nimport rego.v1\n\nallow if input.x == "a"\n',
            "envoy/authz/allow",
            {"x": b"bytes"},
        ),
    ],
)
def test_holding_the_gil_decides_and_fails_exactly_as_regopy_does(
    monkeypatch: pytest.MonkeyPatch, source: str, entrypoint: str, doc: dict[str, Any]
) -> None:
    sources = {"authz.rego": source}
    holding = RegoPolicy.from_sources(sources, entrypoint, name="p", decision_cache=0)
    monkeypatch.setattr(rego, "_GIL_HOLDING_CALLS", None)  # as if the library lacked a symbol
    through_regopy = RegoPolicy.from_sources(sources, entrypoint, name="p", decision_cache=0)
    assert holding.holds_gil and not through_regopy.holds_gil
    assert outcome(holding, doc) == outcome(through_regopy, doc)


def test_holding_the_gil_reports_a_query_rego_cpp_refuses_as_regopy_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bundle without the entrypoint: rego-cpp returns no output at all.
    import regopy  # here, so that authd.policy.rego loads it first (see its docstring)

    sources = {"authz.rego": OPA_ENVOY_POLICY}
    interpreter = regopy.Interpreter()
    interpreter.add_module("authz.rego", OPA_ENVOY_POLICY)
    bundle = interpreter.build(None, ["envoy/authz/allow"])
    holding = RegoPolicy(bundle, "envoy/authz/other", "p", sources)
    monkeypatch.setattr(rego, "_GIL_HOLDING_CALLS", None)
    through_regopy = RegoPolicy(bundle, "envoy/authz/other", "p", sources)
    expected = ("error", "p: evaluating envoy/authz/other failed: entrypoint not found")
    assert outcome(holding, document()) == outcome(through_regopy, document()) == expected


def test_evaluations_do_not_grow_memory_in_a_process_that_loaded_grpc_first() -> None:
    # Every output must be freed (one costs ~1.2 kB). And in the daemon grpc loads libstdc++
    # before regopy, which lost ~1 kB per evaluation until rego.py shared libstdc++'s symbols.
    script = """
import os, grpc
from authd.policy.rego import RegoPolicy

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

policy = RegoPolicy.load(["deploy/policy/authz.rego"], decision_cache=0)
assert policy.holds_gil
doc = {
    "attributes": {"request": {"http": {"method": "GET", "headers": {"x-a": "1"}}}},
    "parsed_path": ["orders", "1"],
    "authd": {"caller": "spiffe://example.org/ns/prod/sa/web", "user": None},
}
for _ in range(1000):
    policy.evaluate_document(doc)
before = resident()
for _ in range(15000):
    policy.evaluate_document(doc)
print(resident() - before)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) < 4 * 2**20  # a leak would add ~15 MB


def outcome(policy: RegoPolicy, doc: dict[str, Any]) -> tuple[str, Any]:
    try:
        return ("decision", policy.evaluate_document(doc))
    except (PolicyError, MalformedRequest) as exc:
        return ("error", str(exc))

"""The OPA-Envoy input document: the shape existing OPA-Envoy policies rely on."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from authd.authz.pipeline import identity_document
from authd.check.input_document import (
    PARTIAL_BODY_HEADER,
    input_document,
    parsed_path,
    pruned_input_document,
)
from authd.check.model import CheckContext, Identities, UserIdentity
from authd.extauthz.grpc_servicer import context_from_check_request
from authd.policy.rego import prune_input
from authd.policy.rego_source import referenced_input_paths
from ca.spiffe_id import SpiffeId


def check_request(**http: object) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    attributes = request.attributes
    attributes.source.address.socket_address.address = "10.0.0.7"
    attributes.source.address.socket_address.port_value = 51000
    attributes.source.principal = "spiffe://example.org/web"
    attributes.destination.address.socket_address.address = "10.0.0.8"
    attributes.destination.address.socket_address.port_value = 8080
    attributes.context_extensions["policy"] = "gateway"
    attributes.request.time.FromSeconds(1_790_000_000)
    h = attributes.request.http
    h.id = "req-1"
    h.method = "POST"
    h.path = "/orders/a%20b/7?expand=items&expand=buyer&q="
    h.host = "api.example.com"
    h.scheme = "https"
    h.protocol = "HTTP/1.1"
    h.headers.update({"content-type": "application/json", "x-tenant": "acme"})
    h.body = '{"qty": 2}'
    h.size = 10
    for key, value in http.items():
        setattr(h, key, value)
    return request


def test_attributes_match_protojson_of_the_check_request() -> None:
    request = check_request()
    document = input_document(context_from_check_request(request))
    expected = MessageToDict(request.attributes)  # protojson, camelCase, zero values omitted
    assert document["attributes"] == expected


def test_parsed_path_query_and_json_body() -> None:
    document = input_document(context_from_check_request(check_request()))
    assert document["parsed_path"] == ["orders", "a b", "7"]
    assert document["parsed_query"] == {"expand": ["items", "buyer"], "q": [""]}
    assert document["parsed_body"] == {"qty": 2}
    assert document["truncated_body"] is False
    assert document["version"] == {"encoding": "protojson", "ext_authz": "v3"}
    json.dumps(document)  # a Rego engine gets plain JSON values


def test_form_body_is_parsed_and_other_bodies_are_not() -> None:
    form = check_request(body="a=1&a=2&b=")
    form.attributes.request.http.headers["content-type"] = "application/x-www-form-urlencoded"
    assert input_document(context_from_check_request(form))["parsed_body"] == {
        "a": ["1", "2"],
        "b": [""],
    }
    text = check_request(body="hello")
    text.attributes.request.http.headers["content-type"] = "text/plain"
    assert "parsed_body" not in input_document(context_from_check_request(text))
    broken = check_request(body="{not json")
    assert "parsed_body" not in input_document(context_from_check_request(broken))


def test_truncated_body_is_flagged_and_not_parsed() -> None:
    request = check_request()
    request.attributes.request.http.headers["x-envoy-auth-partial-body"] = "true"
    document = input_document(context_from_check_request(request))
    assert document["truncated_body"] is True
    assert "parsed_body" not in document


def test_root_path_parses_like_opa_envoy() -> None:
    assert parsed_path("/") == [""]
    assert parsed_path("/a/b/?x=1") == ["a", "b", ""]


def test_http_mode_context_gives_the_same_request_shape() -> None:
    ctx = CheckContext(
        method="GET",
        host="api.example.com",
        path="/orders/7?x=1",
        headers={"x-tenant": "acme"},
        source_principal="spiffe://example.org/web",
        transport="http",
    )
    document = input_document(ctx)
    http = document["attributes"]["request"]["http"]
    assert http["method"] == "GET"
    assert http["path"] == "/orders/7?x=1"
    assert http["headers"] == {"x-tenant": "acme"}
    assert document["attributes"]["source"]["principal"] == "spiffe://example.org/web"
    assert document["parsed_path"] == ["orders", "7"]
    assert document["parsed_query"] == {"x": ["1"]}


def test_metadata_context_as_envoy_sends_it() -> None:
    request = check_request()
    request.attributes.metadata_context.SetInParent()  # Envoy always sets it, often empty
    request.attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].update(
        {"sub": "alice"}
    )
    document = input_document(context_from_check_request(request))
    assert document["attributes"] == MessageToDict(request.attributes)
    assert document["attributes"]["metadataContext"] == {
        "filterMetadata": {"envoy.filters.http.jwt_authn": {"sub": "alice"}}
    }


# --- only the parts a policy reads ---------------------------------------------------------


def bare_request() -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.method = "GET"
    request.attributes.request.http.path = "/"
    return request


def header_map_request() -> external_auth_pb2.CheckRequest:
    request = bare_request()
    http = request.attributes.request.http
    http.path = "/upload?name=a%2Fb"
    http.header_map.headers.add(key="content-type", value="application/json")
    http.header_map.headers.add(key="x-raw", raw_value=b"raw\xff")
    http.raw_body = b'{"n": [1, 2]}'
    http.size = 13
    return request


def rich_request() -> external_auth_pb2.CheckRequest:
    request = check_request(query="a=1", fragment="top")
    attributes = request.attributes
    attributes.source.certificate = "-----BEGIN%20CERTIFICATE-----"
    attributes.source.service = "web"
    attributes.source.labels["zone"] = "a"
    attributes.destination.principal = "spiffe://example.org/api"
    attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].update(
        {"sub": "alice", "scope": "orders:read"}
    )
    attributes.route_metadata_context.SetInParent()
    attributes.tls_session.sni = "api.example.com"
    return request


def form_request() -> external_auth_pb2.CheckRequest:
    request = check_request(body="a=1&a=2&b=")
    request.attributes.request.http.headers["content-type"] = "application/x-www-form-urlencoded"
    request.attributes.metadata_context.SetInParent()  # as Envoy sends it: set, empty
    return request


def truncated_request() -> external_auth_pb2.CheckRequest:
    request = check_request()
    request.attributes.request.http.headers[PARTIAL_BODY_HEADER] = "true"
    request.attributes.ClearField("source")
    request.attributes.source.principal = "spiffe://example.org/only-principal"
    return request


def http_mode(**kw: Any) -> CheckContext:
    fields: dict[str, Any] = {
        "method": "GET",
        "host": "",
        "path": "/",
        "headers": {},
        "transport": "http",
    }
    return CheckContext(**(fields | kw))


CONTEXTS = {
    "grpc-bare": context_from_check_request(bare_request()),
    "grpc-headers-body-peers-time": context_from_check_request(check_request()),
    "grpc-header-map-raw-body": context_from_check_request(header_map_request()),
    "grpc-metadata-tls-query": context_from_check_request(rich_request()),
    "grpc-form-body": context_from_check_request(form_request()),
    "grpc-truncated-body": context_from_check_request(truncated_request()),
    "http-bare": http_mode(),
    "http-rich": http_mode(
        method="POST",
        host="api.example.com",
        path="/orders/a%20b?x=1&x=2&y=",
        headers={"content-type": "application/json", "x-tenant": "acme"},
        body=b'{"qty": 2}',
        source_principal="spiffe://example.org/web",
        source_certificate="-----BEGIN%20CERTIFICATE-----",
        context_extensions={"policy": "gateway"},
        protocol="HTTP/2",
        scheme="https",
        request_id="req-9",
    ),
    "http-form-truncated": http_mode(
        method="POST",
        headers={"content-type": "application/x-www-form-urlencoded"},
        body=b"a=1",
        truncated_body=True,
        source_certificate="-----BEGIN%20CERTIFICATE-----",
    ),
}

IDENTITIES = {
    "anonymous": Identities(),
    "caller-and-user": Identities(
        peer=SpiffeId.parse("spiffe://example.org/ns/prod/sa/web"),
        user=UserIdentity("https://idp", "alice", {"scope": "orders:read"}),
    ),
}

DEPLOY_POLICY_PATHS = referenced_input_paths(
    [(Path(__file__).resolve().parents[3] / "deploy/policy/authz.rego").read_text()]
)

PATH_SETS: dict[str, tuple[tuple[str, ...], ...]] = {
    "deploy/policy/authz.rego": DEPLOY_POLICY_PATHS or (),
    "all attributes": (("attributes",),),
    "headers": (("attributes", "request", "http", "headers"),),
    "one header": (("attributes", "request", "http", "headers", "x-tenant"),),
    "two headers": (
        ("attributes", "request", "http", "headers", "content-type"),
        ("attributes", "request", "http", "headers", "x-raw"),
    ),
    "method and path": (
        ("attributes", "request", "http", "method"),
        ("attributes", "request", "http", "path"),
    ),
    "request": (("attributes", "request"),),
    "http": (("attributes", "request", "http"),),
    "time, size, raw body": (
        ("attributes", "request", "time"),
        ("attributes", "request", "http", "size"),
        ("attributes", "request", "http", "rawBody"),
        ("attributes", "request", "http", "body"),
    ),
    "peers": (("attributes", "source"), ("attributes", "destination")),
    "peer parts": (
        ("attributes", "source", "principal"),
        ("attributes", "source", "address", "socketAddress", "portValue"),
        ("attributes", "source", "labels", "zone"),
        ("attributes", "destination", "principal"),
    ),
    "extensions, metadata, tls": (
        ("attributes", "contextExtensions"),
        ("attributes", "metadataContext"),
        ("attributes", "routeMetadataContext"),
        ("attributes", "tlsSession", "sni"),
    ),
    "metadata claim": (
        ("attributes", "metadataContext", "filterMetadata", "envoy.filters.http.jwt_authn", "sub"),
    ),
    "parsed": (
        ("parsed_path",),
        ("parsed_query",),
        ("parsed_body",),
        ("truncated_body",),
        ("version",),
    ),
    "parsed parts": (
        ("parsed_query", "x"),
        ("parsed_body", "qty"),
        ("parsed_body", "a"),
        ("version", "encoding"),
    ),
    "authd": (("authd",),),
    "authd parts": (("authd", "caller"), ("authd", "user", "claims", "scope")),
    "missing keys": (
        ("nope",),
        ("attributes", "nope"),
        ("attributes", "request", "nope", "deeper"),
        ("attributes", "request", "http", "headers", "absent"),
        ("authd", "nope"),
    ),
    "through non-objects": (
        ("attributes", "request", "http", "method", "deeper"),
        ("parsed_path", "0"),
        ("truncated_body", "x"),
        ("authd", "caller", "x"),
        ("authd", "user", "subject"),
    ),
    "a path and one below it": (
        ("attributes", "request", "http"),
        ("attributes", "request", "http", "method"),
    ),
    "a path and one above it": (
        ("authd", "caller"),
        ("authd",),
        ("attributes", "request", "http", "headers", "x-tenant"),
        ("attributes",),
    ),
}


def whole_document(ctx: CheckContext, identities: Identities) -> dict[str, Any]:
    document = input_document(ctx)
    document["authd"] = identity_document(identities)
    return document


def direct(ctx: CheckContext, identities: Identities, paths: Any) -> dict[str, Any]:
    return pruned_input_document(ctx, paths, {"authd": lambda: identity_document(identities)})


def every_path(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path into ``value`` that ends at a member of an object."""
    if not isinstance(value, dict):
        return []
    paths = []
    for key, member in value.items():
        paths.append((*prefix, key))
        paths.extend(every_path(member, (*prefix, key)))
    return paths


@pytest.mark.parametrize("identities", IDENTITIES.values(), ids=IDENTITIES.keys())
@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
def test_pruned_document_is_what_pruning_the_whole_document_keeps(
    ctx: CheckContext, identities: Identities
) -> None:
    whole = whole_document(ctx, identities)
    for name, paths in PATH_SETS.items():
        expected = prune_input(whole, paths)
        assert direct(ctx, identities, paths) == expected, name
        assert direct(ctx, identities, paths[::-1]) == expected, name


@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
def test_every_single_path_and_random_sets_of_paths_prune_alike(ctx: CheckContext) -> None:
    identities = IDENTITIES["caller-and-user"]
    whole = whole_document(ctx, identities)
    paths = every_path(whole)
    paths += [(*path, "missing") for path in paths]
    for path in paths:
        assert direct(ctx, identities, [path]) == prune_input(whole, [path]), path
    rng = random.Random(7)
    for _ in range(200):
        chosen = rng.sample(paths, rng.randint(1, 6))
        assert direct(ctx, identities, chosen) == prune_input(whole, chosen), chosen


def test_pruned_document_of_a_grpc_check_equals_protojson_of_what_it_keeps() -> None:
    request = rich_request()
    paths = [("attributes", "request", "http", "headers"), ("attributes", "source")]
    pruned = pruned_input_document(context_from_check_request(request), paths)
    protojson = MessageToDict(request.attributes)
    assert pruned == {
        "attributes": {
            "request": {"http": {"headers": protojson["request"]["http"]["headers"]}},
            "source": protojson["source"],
        }
    }


class WatchedMessage:
    """A protobuf message that records which of its fields are read (and HasField asks)."""

    def __init__(self, message: Message, name: str, reads: list[str]) -> None:
        self._message = message
        self._name = name
        self._reads = reads

    def __getattr__(self, field: str) -> Any:
        name = f"{self._name}.{field}"
        self._reads.append(name)
        value = getattr(self._message, field)
        return WatchedMessage(value, name, self._reads) if isinstance(value, Message) else value

    def HasField(self, field: str) -> bool:
        self._reads.append(f"{self._name}.{field}?")
        return self._message.HasField(field)


def watched_context(reads: list[str]) -> CheckContext:
    ctx = context_from_check_request(rich_request())
    ctx.check_request = WatchedMessage(ctx.check_request, "request", reads)
    return ctx


def no_authd() -> dict[str, Any]:
    raise AssertionError("input.authd was built though no path starts with it")


def on_the_way_to(field: str, read: str) -> bool:
    """Whether ``read`` (a field name, '?' for a HasField) is ``field``, above it or in it."""
    read = read.removesuffix("?")
    return read == field or field.startswith(read + ".") or read.startswith(field + ".")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("attributes", "request", "http", "method"), "request.attributes.request.http.method"),
        (
            ("attributes", "request", "http", "headers", "x-tenant"),
            "request.attributes.request.http.headers",
        ),
        (("attributes", "request", "time"), "request.attributes.request.time"),
        (("attributes", "source", "principal"), "request.attributes.source"),
        (("attributes", "tlsSession", "sni"), "request.attributes.tls_session"),
        (("parsed_path",), None),
        (("parsed_query", "x"), None),
        (("version",), None),
    ],
)
def test_pruned_document_reads_only_the_fields_on_the_way_to_its_paths(
    path: tuple[str, ...], field: str | None
) -> None:
    seen: list[str] = []
    ctx = context_from_check_request(rich_request())
    whole = input_document(ctx)
    ctx.check_request = WatchedMessage(ctx.check_request, "request", seen)
    pruned = pruned_input_document(ctx, [path], {"authd": no_authd})
    assert pruned == prune_input(whole, [path])
    if field is None:
        assert seen == []
    else:
        assert any(read.removesuffix("?") == field for read in seen)
        assert [read for read in seen if not on_the_way_to(field, read)] == []


def test_a_member_several_paths_read_is_computed_once() -> None:
    calls: list[int] = []

    def authd() -> dict[str, Any]:
        calls.append(1)
        return identity_document(IDENTITIES["caller-and-user"])

    paths = [("authd", "caller"), ("authd", "user", "claims", "scope"), ("authd",)]
    pruned_input_document(CONTEXTS["http-bare"], paths, {"authd": authd})
    assert len(calls) == 1

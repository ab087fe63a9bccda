"""The OPA-Envoy input document: the shape existing OPA-Envoy policies rely on."""

from __future__ import annotations

import json

from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.json_format import MessageToDict

from authd.authz.grpc_service import context_from_check_request
from authd.authz.input_document import input_document, parsed_path
from authd.authz.model import CheckContext


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

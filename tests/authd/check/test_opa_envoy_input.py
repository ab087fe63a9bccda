"""The input members as the OPA-Envoy plugin parses them (envoyauth/request.go)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authd.check.errors import MalformedRequest
from authd.check.input_document import input_document
from authd.check.model import CheckContext
from authd.check.opa_envoy_input import check_parsable


def ctx(path: str = "/", body: bytes = b"", **headers: str) -> CheckContext:
    return CheckContext(method="POST", host="h", path=path, headers=dict(headers), body=body)


def doc(c: CheckContext) -> dict[str, object]:
    return input_document(c, opa_envoy=True)


def test_parsed_path_is_the_raw_path_decoded_whole_then_split() -> None:
    # url.PathUnescape then strings.Split: %2F splits, "..", "." and "+" stay.
    assert doc(ctx("//a/../b%2Fc/d+e?x=1"))["parsed_path"] == ["a", "..", "b", "c", "d+e"]
    assert doc(ctx("/"))["parsed_path"] == [""]


def test_parsed_query_is_a_map_of_lists_with_plus_as_space() -> None:
    assert doc(ctx("/p?a=1&a=2&b=x+y&c&&d="))["parsed_query"] == {
        "a": ["1", "2"],
        "b": ["x y"],
        "c": [""],
        "d": [""],
    }


@pytest.mark.parametrize("path", ["/a%zz", "/a?b=%zz", "/a?b=1;c=2"])
def test_what_go_cannot_parse_is_malformed(path: str) -> None:
    with pytest.raises(MalformedRequest):
        check_parsable(ctx(path))


def test_parsed_body_json_form_and_others() -> None:
    json_doc = doc(ctx(body=b'{"a": [1]}', **{"content-type": "application/json; charset=utf-8"}))
    assert (json_doc["parsed_body"], json_doc["truncated_body"]) == ({"a": [1]}, False)
    form = doc(ctx(body=b"a=1&a=2", **{"content-type": "application/x-www-form-urlencoded"}))
    assert form["parsed_body"] == {"a": ["1", "2"]}
    text = doc(ctx(body=b"hi", **{"content-type": "text/plain"}))
    assert ("parsed_body", None) in text.items() and text["truncated_body"] is False
    # "+json" is not "application/json" for the plugin.
    assert (
        doc(ctx(body=b"{}", **{"content-type": "application/problem+json"}))["parsed_body"] is None
    )


def test_truncated_body_from_envoy_or_content_length() -> None:
    partial = doc(ctx(body=b"{", **{"x-envoy-auth-partial-body": "true"}))
    assert (partial["parsed_body"], partial["truncated_body"]) == (None, True)
    short = doc(ctx(body=b"{}", **{"content-type": "application/json", "content-length": "9"}))
    assert (short["parsed_body"], short["truncated_body"]) == (None, True)


def test_a_json_body_that_does_not_parse_is_malformed() -> None:
    with pytest.raises(MalformedRequest):
        check_parsable(ctx(body=b"{", **{"content-type": "application/json"}))


def test_source_principal_and_version() -> None:
    c = CheckContext(method="GET", host="h", path="/", headers={}, source_principal="spiffe://x/y")
    document = doc(c)
    assert document["source_principal"] == "spiffe://x/y"
    assert document["version"] == {"encoding": "protojson", "ext_authz": "v3"}


@given(
    path=st.text(max_size=200),
    body=st.binary(max_size=300),
    content_type=st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "text/plain", ""]
    ),
    length=st.text(max_size=8),
)
def test_hostile_input_is_parsed_or_malformed_never_an_error(
    path: str, body: bytes, content_type: str, length: str
) -> None:
    c = ctx(path, body, **{"content-type": content_type, "content-length": length})
    try:
        check_parsable(c)
    except MalformedRequest:
        return
    doc(c)

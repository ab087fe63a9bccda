"""The path policies see: one spelling per resource, and no spelling with two meanings."""

from __future__ import annotations

import pytest

from authd.check.errors import MalformedRequest
from authd.check.model import CheckContext
from authd.check.request_path import normalize_path


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/orders/1", "/orders/1"),
        ("/public/../orders/1", "/orders/1"),
        ("/public/%2e%2e/orders/1", "/orders/1"),
        ("/public/%2E%2E/orders/1", "/orders/1"),
        ("/public/.%2e/orders/1", "/orders/1"),
        ("/./orders/./1", "/orders/1"),
        ("/../../orders", "/orders"),
        ("//orders///1", "/orders/1"),
        ("/%6Frders/%31", "/orders/1"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/", "/"),
        ("", "/"),
        ("orders/../admin", "/admin"),
    ],
)
def test_path_is_normalised_by_remove_dot_segments_and_unreserved_decoding(
    raw: str, normalized: str
) -> None:
    assert normalize_path(raw) == normalized


def test_escapes_of_reserved_characters_are_kept_with_upper_case_hex() -> None:
    assert normalize_path("/a%3fb/c%20d/%25") == "/a%3Fb/c%20d/%25"


def test_a_double_encoded_dot_is_not_a_dot_segment() -> None:
    assert normalize_path("/public/%252e%252e/orders") == "/public/%252e%252e/orders"


@pytest.mark.parametrize(
    "raw", ["/public/..%2forders/1", "/public/..%2Forders", "/a%5cb", "/a%5Cb", "/a\\b", "/%2F"]
)
def test_encoded_slash_or_backslash_is_refused(raw: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        normalize_path(raw)
    assert info.value.rule == "path"


@pytest.mark.parametrize(
    "raw", ["/public/..;/orders", "/public/..;x=1/orders", "/public/%2e%2e;/orders", "/a/.;/b"]
)
def test_a_dot_segment_with_parameters_is_refused(raw: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        normalize_path(raw)
    assert info.value.rule == "path"


def test_parameters_on_other_segments_are_kept() -> None:
    assert normalize_path("/public/a;v=1/b") == "/public/a;v=1/b"
    assert normalize_path("/public/...;/b") == "/public/...;/b"


def test_context_normalises_the_path_without_its_query_and_keeps_the_raw_path() -> None:
    ctx = CheckContext(
        method="GET", host="h", path="/public/../orders?next=/public/..%2f", headers={}
    )
    assert ctx.normalized_path == "/orders"
    assert ctx.path_only == "/public/../orders"
    assert ctx.query == {"next": ["/public/../"]}  # the query string is parsed as before

"""JSON from outside authd is parsed within bounds, and every failure is a ValueError."""

from __future__ import annotations

import pytest

from authd.check.bounded_json import MAX_JSON_DEPTH, JsonLimitError, loads_bounded, nesting_depth


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_json_within_the_bounds_parses() -> None:
    assert loads_bounded(nested(MAX_JSON_DEPTH)) is not None
    assert loads_bounded(b'{"keys": [1, 2.5, "x", null, true]}') == {
        "keys": [1, 2.5, "x", None, True]
    }


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 100_000])
def test_json_nested_beyond_the_limit_is_a_value_error_never_a_recursion_error(
    depth: int,
) -> None:
    with pytest.raises(JsonLimitError, match="nests deeper"):
        loads_bounded(nested(depth))
    with pytest.raises(JsonLimitError, match="nests deeper"):
        loads_bounded("[" * depth + "]" * depth)


def test_json_longer_than_the_limit_is_refused_before_parsing() -> None:
    with pytest.raises(JsonLimitError, match="longer than 10 bytes"):
        loads_bounded(b'"' + b"x" * 20 + b'"', max_bytes=10)


@pytest.mark.parametrize("text", ["NaN", '{"exp": Infinity}', "-Infinity", "{", "\xff", "9" * 5000])
def test_text_that_is_not_standard_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        loads_bounded(text)


def test_nan_is_accepted_only_when_asked_for() -> None:
    value = loads_bounded('{"exp": NaN}', allow_nan=True)
    assert value["exp"] != value["exp"]


def test_nesting_depth_counts_levels_and_stops_past_the_limit() -> None:
    assert nesting_depth(1) == 0
    assert nesting_depth({"a": [1, {"b": []}]}) == 4
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    assert nesting_depth(deep, limit=10) == 11

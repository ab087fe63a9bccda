"""URL-encoded forms read as Go's url.ParseQuery reads them."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authd.check.form_body import FormError, parse_form


def test_names_map_to_lists_of_values_in_order() -> None:
    assert parse_form("a=1&b=two+words&a=%33&c&=e&&") == {
        "a": ["1", "3"],
        "b": ["two words"],
        "c": [""],
        "": ["e"],
    }


@pytest.mark.parametrize("text", ["a=1;b=2", "a=%zz", "a=%4", "%=1"])
def test_what_go_refuses_is_a_form_error(text: str) -> None:
    with pytest.raises(FormError):
        parse_form(text)


def test_more_fields_than_the_bound_are_refused() -> None:
    assert len(parse_form("&".join(["a=1"] * 10))["a"]) == 10
    with pytest.raises(FormError, match="more than 9 fields"):
        parse_form("&".join(["a=1"] * 10), max_fields=9)


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.lists(st.tuples(_TEXT, _TEXT), max_size=20))
def test_an_encoded_form_reads_back(pairs: list[tuple[str, str]]) -> None:
    expected: dict[str, list[str]] = {}
    for name, value in pairs:
        expected.setdefault(name, []).append(value)
    assert parse_form(urlencode(pairs)) == expected


@given(st.text(max_size=300))
def test_any_text_is_a_form_or_a_form_error(text: str) -> None:
    try:
        parsed = parse_form(text)
    except FormError:
        return
    assert all(isinstance(v, list) and v for v in parsed.values())

"""Media types read as Go's mime.ParseMediaType reads them (cases from its behaviour)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authd.check.media_type import MediaTypeError, parse_media_type


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("multipart/form-data; boundary=abc", ("multipart/form-data", {"boundary": "abc"})),
        ("Multipart/Form-Data; BOUNDARY=AbC", ("multipart/form-data", {"boundary": "AbC"})),
        (
            'form-data; name="a b"; filename="x.txt"',
            ("form-data", {"name": "a b", "filename": "x.txt"}),
        ),
        ('form-data; name="C:\\dev\\x"', ("form-data", {"name": "C:\\dev\\x"})),  # MSIE paths
        ('form-data; name="say \\"hi\\""', ("form-data", {"name": 'say "hi"'})),
        ("text/plain;", ("text/plain", {})),  # a trailing semicolon is no error
        ("text/plain ; charset = utf-8", ("text/plain", {"charset": "utf-8"})),
        ("attachment; filename*=utf-8''na%C3%AFve", ("attachment", {"filename": "naïve"})),
        ("attachment; filename*0=a; filename*1=b", ("attachment", {"filename": "ab"})),
        ("attachment; filename*0*=utf-8''%41; filename*1*=%42", ("attachment", {"filename": "AB"})),
        ("attachment; filename*=bogus''x", ("attachment", {})),  # undecodable: dropped
        ("x; a=1; a=1", ("x", {"a": "1"})),  # a repeated equal value is allowed
        ("token", ("token", {})),
    ],
)
def test_go_reads_these_media_types(value: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_media_type(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "/plain",
        "text/",
        "text/plain/x",
        "text plain",
        "x; a=1; a=2",  # duplicate parameter name
        "x; a",
        "x; =b",
        'x; a="unterminated',
        "x; a=b c",
        'x; a="line\nbreak"',
    ],
)
def test_go_refuses_these_media_types(value: str) -> None:
    with pytest.raises(MediaTypeError):
        parse_media_type(value)


@given(st.text(max_size=200))
def test_any_text_is_a_media_type_or_a_media_type_error(value: str) -> None:
    try:
        media_type, params = parse_media_type(value)
    except MediaTypeError:
        return
    assert media_type == media_type.strip()
    assert all(name == name.lower() for name in params)


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-+.!#$&^_", min_size=1, max_size=12)


@given(
    _TOKEN,
    _TOKEN,
    st.dictionaries(_TOKEN.filter(lambda t: "*" not in t), st.text(max_size=20), max_size=5),
)
def test_quoted_parameters_read_back(first: str, second: str, params: dict[str, str]) -> None:
    def quote(value: str) -> str:
        escaped = "".join("\\" + c if c in '"\\' else c for c in value)
        return f'"{escaped}"'

    if any("\r" in v or "\n" in v for v in params.values()):
        return
    text = f"{first}/{second}" + "".join(f"; {k}={quote(v)}" for k, v in params.items())
    assert parse_media_type(text) == (f"{first}/{second}", params)

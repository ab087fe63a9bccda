"""multipart/form-data read as Go's mime/multipart reader reads it (the OPA-Envoy plugin's
``parsed_body``: form name → list of values, JSON parts parsed)."""

from __future__ import annotations

import quopri

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authd.check.multipart_body import (
    MultipartError,
    decode_quoted_printable,
    parse_multipart,
)


def form(*parts: tuple[str, bytes], boundary: str = "XyZ", nl: bytes = b"\r\n") -> bytes:
    """``parts`` as (headers, body), headers separated by ``|``."""
    out = b""
    for headers, body in parts:
        out += b"--" + boundary.encode() + nl
        for header in headers.split("|"):
            out += header.encode() + nl
        out += nl + body + nl
    return out + b"--" + boundary.encode() + b"--" + nl


def field(name: str, body: bytes, *extra: str) -> tuple[str, bytes]:
    return ("|".join([f'Content-Disposition: form-data; name="{name}"', *extra]), body)


def test_fields_map_to_lists_of_values_and_json_parts_are_parsed() -> None:
    body = form(
        field("a", b"1"),
        field("doc", b'{"x": [1, 2]}', "Content-Type: application/json"),
        field("a", b"two\r\nlines"),
        ('Content-Disposition: form-data; name="f"; filename="f.txt"', b"file text"),
    )
    assert parse_multipart(body, "XyZ") == {
        "a": ["1", "two\r\nlines"],
        "doc": [{"x": [1, 2]}],
        "f": ["file text"],
    }


def test_parts_without_a_form_data_name_are_skipped() -> None:
    body = form(
        ("Content-Disposition: attachment; name=a", b"1"),
        ("Content-Type: text/plain", b"2"),
        ("Content-Disposition: form-data", b"3"),
        ("Content-Disposition: form-data; name=b; x", b"4"),  # unreadable: no name
        field("c", b"5"),
    )
    assert parse_multipart(body, "XyZ") == {"c": ["5"]}


def test_preamble_and_epilogue_are_ignored_and_an_empty_form_is_empty() -> None:
    body = b"preamble line\r\nmore\r\n" + form(field("a", b"1")) + b"epilogue"
    assert parse_multipart(body, "XyZ") == {"a": ["1"]}
    assert parse_multipart(b"--XyZ--", "XyZ") == {}
    assert parse_multipart(b"--XyZ--  \t", "XyZ") == {}


def test_a_bare_newline_after_the_first_boundary_switches_to_newline_line_ends() -> None:
    assert parse_multipart(form(field("a", b"1"), field("b", b""), nl=b"\n"), "XyZ") == {
        "a": ["1"],
        "b": [""],
    }


def test_only_a_full_delimiter_ends_a_part() -> None:
    tricky = b"x--XyZ\r\n--XyZy\r\n--XyZ-a"
    assert parse_multipart(form(field("a", tricky)), "XyZ") == {"a": [tricky.decode()]}
    # A delimiter followed by white space still is one; the line then must be clean.
    body = b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\nv\r\n--XyZ \t\r\n'
    body += b'Content-Disposition: form-data; name="b"\r\n\r\nw\r\n--XyZ--\r\n'
    assert parse_multipart(body, "XyZ") == {"a": ["v"], "b": ["w"]}


def test_header_continuation_lines_and_case_insensitive_names() -> None:
    body = form(('content-disposition: form-data;\r\n name="a"', b"1"))
    assert parse_multipart(body, "XyZ") == {"a": ["1"]}


def test_quoted_printable_parts_are_decoded() -> None:
    body = form(
        field("a", b"caf=C3=A9 =\r\nau lait=3D", "Content-Transfer-Encoding: Quoted-Printable")
    )
    assert parse_multipart(body, "XyZ") == {"a": ["café au lait="]}


@pytest.mark.parametrize(
    "body",
    [
        b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n1',  # no closing boundary
        b"no boundary at all\r\n",
        b"--XyZ\r\nno colon here\r\n\r\n1\r\n--XyZ--",
        b"--XyZ\r\n Content-Disposition: form-data; name=a\r\n\r\n1\r\n--XyZ--",
        b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--XyZ junk\r\n",
        b"--XyZ\r\nContent-Disposition: form-data; name=a\r\nX: \x01\r\n\r\n1\r\n--XyZ--",
        b"--XyZ\r\nContent-Disposition: form-data; name=a",  # EOF in headers
        b"x" * 5000 + b"\r\n--XyZ--",  # a preamble line longer than Go's buffer
    ],
)
def test_what_gos_reader_fails_on_is_a_multipart_error(body: bytes) -> None:
    with pytest.raises(MultipartError):
        parse_multipart(body, "XyZ")


def test_a_json_part_that_is_not_json_is_an_error() -> None:
    body = form(field("a", b"{nope", "Content-Type: application/json"))
    with pytest.raises(MultipartError, match="not JSON"):
        parse_multipart(body, "XyZ")


def test_bounds_on_parts_depth_and_boundary() -> None:
    body = form(*[field(f"f{i}", b"v") for i in range(5)])
    assert len(parse_multipart(body, "XyZ")) == 5
    with pytest.raises(MultipartError, match="more than 4 parts"):
        parse_multipart(body, "XyZ", max_parts=4)
    deep = form(field("a", b"[" * 70 + b"]" * 70, "Content-Type: application/json"))
    with pytest.raises(MultipartError):
        parse_multipart(deep, "XyZ")
    with pytest.raises(MultipartError, match="boundary"):
        parse_multipart(b"--", "b" * 1001)
    with pytest.raises(MultipartError, match="empty"):
        parse_multipart(b"--\r\n", "")


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        (b"a=3Db", b"a=b"),
        (b"a=3db", b"a=b"),  # lower-case hex accepted
        (b"soft=\nbreak", b"softbreak"),
        (b"trailing   \r\nspace", b"trailing\r\nspace"),
        (b"lone = sign", b"lone = sign"),  # = not before two hex digits, not at line end
        (b"end=", b"end"),  # a soft break at the very end
        (b"\xc3\xa9", b"\xc3\xa9"),  # 8-bit passes
    ],
)
def test_quoted_printable_as_go_decodes_it(encoded: bytes, decoded: bytes) -> None:
    assert decode_quoted_printable(encoded) == decoded


@pytest.mark.parametrize("encoded", [b"=", b"a= \r\nb", b"bad\x01byte", b"a=\rb\n", b"x" * 5000])
def test_quoted_printable_go_refuses(encoded: bytes) -> None:
    with pytest.raises(MultipartError):
        decode_quoted_printable(encoded)


@given(st.binary(max_size=2000))
def test_quoted_printable_round_trips(data: bytes) -> None:
    assert decode_quoted_printable(quopri.encodestring(data.replace(b"\r", b""))) == data.replace(
        b"\r", b""
    )


_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=10)
_VALUE = st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace"))


@given(st.lists(st.tuples(_NAME, _VALUE), max_size=10))
def test_an_encoded_form_reads_back(fields: list[tuple[str, str]]) -> None:
    boundary = "b0undary-7d"
    values = [v for _, v in fields]
    if any(boundary in v for v in values):
        return
    body = form(*[field(n, v.encode()) for n, v in fields], boundary=boundary)
    expected: dict[str, list[str]] = {}
    for name, value in fields:
        expected.setdefault(name, []).append(value)
    assert parse_multipart(body, boundary) == expected


_PIECES = st.sampled_from(
    [
        b"--XyZ",
        b"--XyZ--",
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b"Content-Disposition: form-data; name=a",
        b"Content-Type: application/json",
        b"Content-Transfer-Encoding: quoted-printable",
        b"=",
        b"=4",
        b"{}",
        b"x",
        b":",
    ]
)


@given(st.one_of(st.binary(max_size=500), st.lists(_PIECES, max_size=40).map(b"".join)))
def test_any_bytes_are_a_form_or_a_multipart_error(data: bytes) -> None:
    try:
        parsed = parse_multipart(data, "XyZ")
    except MultipartError:
        return
    assert all(isinstance(v, list) and v for v in parsed.values())


def _go_reader_oracle(raw: bytes) -> bytes | None:
    """Go's quotedprintable.Reader transcribed line by line (slow, obviously so): the bytes,
    or None where Go returns an error. The decoder under test works on the whole buffer."""
    out = bytearray()
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos, pos + 4096)
        if end < 0 and len(raw) - pos >= 4096:
            return None  # bufio.ErrBufferFull
        at_eof = end < 0
        whole = raw[pos:] if at_eof else raw[pos : end + 1]
        pos = len(raw) if at_eof else end + 1
        line = whole.rstrip(b" \t\r\n")
        if line.endswith(b"="):
            rest = whole[len(line) :]
            line = line[:-1]
            if not (rest.startswith((b"\n", b"\r\n")) or (not rest and line and at_eof)):
                return None
        elif whole.endswith(b"\n"):
            line += b"\r\n" if whole.endswith(b"\r\n") else b"\n"
        i = 0
        while i < len(line):
            b = line[i]
            if b == 0x3D:
                pair = line[i + 1 : i + 3]
                if len(pair) == 2 and all(c in b"0123456789ABCDEFabcdef" for c in pair):
                    out.append(int(pair, 16))
                    i += 3
                    continue
                if len(line) - i >= 2 and line[i + 1] not in b"\r\n":
                    out.append(b)
                    i += 1
                    continue
                return None
            if b in b"\t\r\n" or b >= 0x80 or 0x20 <= b <= 0x7E:
                out.append(b)
                i += 1
                continue
            return None
    return bytes(out)


_QP_PIECES = st.sampled_from(
    [
        b"=",
        b"==",
        b"=4",
        b"=41",
        b"=4g",
        b"=a",
        b"\r",
        b"\n",
        b"\r\n",
        b" ",
        b"\t",
        b"x",
        b"\x01",
        b"\xc3",
    ]
)


@given(st.one_of(st.lists(_QP_PIECES, max_size=30).map(b"".join), st.binary(max_size=60)))
def test_quoted_printable_decodes_as_gos_reader_line_by_line(raw: bytes) -> None:
    expected = _go_reader_oracle(raw)
    if expected is None:
        with pytest.raises(MultipartError):
            decode_quoted_printable(raw)
    else:
        assert decode_quoted_printable(raw) == expected


def test_quoted_printable_lines_must_fit_gos_buffer() -> None:
    # bufio's 4096-byte buffer: a line of 4096 bytes with its newline fits, one more does not.
    fits = b"x" * 4095 + b"\n"
    assert _go_reader_oracle(fits) == decode_quoted_printable(fits) == fits
    longer = b"x" * 4096 + b"\n"
    assert _go_reader_oracle(longer) is None
    with pytest.raises(MultipartError):
        decode_quoted_printable(longer)

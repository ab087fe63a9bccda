"""``multipart/form-data`` bodies, read as the OPA-Envoy plugin reads them with Go's
``mime/multipart`` reader, over the whole body held in memory.

The plugin's value is a map of form name to the list of its parts' values, in order: a part
whose ``Content-Type`` contains ``application/json`` gives its parsed JSON, any other its
text. Parts without a ``form-data`` disposition or without a name are skipped. Go's reading
rules kept here: lines before the first ``--boundary`` are skipped (each at most 4096 bytes,
its buffer); a first boundary line ending in a bare ``\\n`` switches the reader to ``\\n``
line ends; a part's body ends at ``CRLF--boundary`` followed by white space, a line end,
``--`` or the end; ``--boundary--`` ends the form; headers are MIME headers (continuation
lines; a key with a space is kept, not canonicalised); ``Content-Transfer-Encoding:
quoted-printable`` is decoded as Go's ``quotedprintable`` does. Anything Go's reader fails
on raises ``MultipartError``, as do authd's bounds: more than ``max_parts`` parts or
``MAX_HEADERS`` header fields in the form (the bounds Go's ``ReadForm`` keeps), a boundary
longer than ``MAX_BOUNDARY``.
"""

from __future__ import annotations

import binascii
import re
from typing import Any, Final

from authd.check.bounded_json import MAX_JSON_DEPTH, loads_bounded
from authd.check.media_type import MediaTypeError, MediaTypeLimitError, parse_media_type

MAX_PARTS: Final = 1_000  # Go's multipartmaxparts (its ReadForm's bound)
MAX_HEADERS: Final = 10_000  # Go's multipartmaxheaders, over the whole form as ReadForm counts
MAX_BOUNDARY: Final = 1_000  # RFC 2046 allows 70; Go's 4096-byte line buffer breaks far above
_LINE_BUFFER: Final = 4096  # bufio's default size: a longer line is ErrBufferFull
# A line after the first that fills the buffer without a newline (literal first: fast).
_LONG_LINE: Final = re.compile(rb"\n[^\n]{%d}" % _LINE_BUFFER)


def _long_line(data: bytes, start: int, end: int) -> bool:
    """Whether a line of ``data[start:end]`` (``start`` at a line start) fills Go's buffer."""
    first = data.find(b"\n", start, end)
    if (end if first < 0 else first) - start >= _LINE_BUFFER:
        return True
    return first >= 0 and _LONG_LINE.search(data, first, end) is not None


class MultipartError(ValueError):
    """The body is not a multipart form Go's reader reads."""


def _skip_lwsp(b: bytes) -> bytes:
    return b.lstrip(b" \t")


_BAD_VALUE_BYTE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # Go's validHeaderValueByte
_BAD_KEY_BYTE: Final = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z ]")  # tchar, or a space
_BLANK_LINE: Final = re.compile(rb"^\r?\n", re.MULTILINE)
_NO_COLON: Final = re.compile(rb"^(?![ \t])[^:\n]+$", re.MULTILINE)
_FOLD: Final = re.compile(rb"[ \t]*\r?\n[ \t]+")


def _canonical_key(key: bytes) -> str:
    """Go's CanonicalMIMEHeaderKey (a key with a space is kept as is); raises on a bad key."""
    if not key or _BAD_KEY_BYTE.search(key):
        raise MultipartError("malformed MIME header line")
    text = key.decode("ascii")
    if " " in text:
        return text
    return "-".join(word[:1].upper() + word[1:].lower() for word in text.split("-"))


class _Reader:
    """Go's multipart.Reader state over ``data``: position, line-end mode, parts read."""

    def __init__(self, data: bytes, boundary: str) -> None:
        self.data = data
        self.pos = 0
        b = boundary.encode("utf-8", "surrogateescape")
        self.nl = b"\r\n"
        self.nl_dash_boundary = b"\r\n--" + b
        self.dash_boundary_dash = b"--" + b + b"--"
        self.dash_boundary = b"--" + b
        self.parts_read = 0
        self.headers_read = 0
        self._delimiter: re.Pattern[bytes] | None = None
        self.max_headers = MAX_HEADERS
        # In the preamble (CRLF mode until a delimiter says otherwise): a delimiter line, or
        # the final boundary ending the line in CRLF or the data.
        escaped = re.escape(b)
        self._preamble_end = re.compile(
            rb"^--" + escaped + rb"(?:[ \t]*\r?\n|--[ \t]*(?:\r\n|\Z))", re.MULTILINE
        )

    # -- lines --------------------------------------------------------------------------------

    def _read_slice(self) -> tuple[bytes, str]:
        """bufio.ReadSlice('\\n'): the line and "" / "eof" / "full"."""
        end = self.data.find(b"\n", self.pos, self.pos + _LINE_BUFFER)
        if end >= 0:
            line = self.data[self.pos : end + 1]
            self.pos = end + 1
            return line, ""
        if len(self.data) - self.pos >= _LINE_BUFFER:
            line = self.data[self.pos : self.pos + _LINE_BUFFER]
            self.pos += _LINE_BUFFER
            return line, "full"
        line = self.data[self.pos :]
        self.pos = len(self.data)
        return line, "eof"

    def _skip_preamble(self) -> None:
        """Jump to the next line Go would not skip as preamble (a delimiter or the final
        boundary); the lines before it only have to fit Go's 4096-byte buffer."""
        found = self._preamble_end.search(self.data, self.pos)
        end = len(self.data) if found is None else found.start()
        if _long_line(self.data, self.pos, end):
            raise MultipartError("NextPart: buffer full")
        if found is None:
            raise MultipartError("NextPart: EOF")
        self.pos = end

    def _is_final_boundary(self, line: bytes) -> bool:
        if not line.startswith(self.dash_boundary_dash):
            return False
        rest = _skip_lwsp(line[len(self.dash_boundary_dash) :])
        return not rest or rest == self.nl

    def _is_delimiter_line(self, line: bytes) -> bool:
        if not line.startswith(self.dash_boundary):
            return False
        rest = _skip_lwsp(line[len(self.dash_boundary) :])
        if self.parts_read == 0 and rest == b"\n":
            self.nl = b"\n"
            self.nl_dash_boundary = self.nl_dash_boundary[1:]
        return rest == self.nl

    # -- parts --------------------------------------------------------------------------------

    def next_part(self) -> dict[str, list[str]] | None:
        """The next part's headers (its body starts at ``pos``), or None at the form's end."""
        expect_new_part = False
        while True:
            line, err = self._read_slice()
            if err == "eof" and self._is_final_boundary(line):
                return None
            if err:
                raise MultipartError("NextPart: " + ("EOF" if err == "eof" else "buffer full"))
            if self._is_delimiter_line(line):
                self.parts_read += 1
                return self._headers()
            if self._is_final_boundary(line):
                return None
            if expect_new_part:
                raise MultipartError("expecting a new Part")
            if self.parts_read == 0:
                self._skip_preamble()
                continue
            if line == self.nl:
                expect_new_part = True
                continue
            raise MultipartError("unexpected line in Next()")

    def _headers(self) -> dict[str, list[str]]:
        """textproto.ReadMIMEHeader at ``pos``: lines up to the first blank one, a line
        starting with a space or tab continuing the one before."""
        data = self.data
        if self.pos < len(data) and data[self.pos] in b" \t":
            raise MultipartError("malformed MIME header initial line")
        blank = _BLANK_LINE.search(data, self.pos)
        if blank is None:
            raise MultipartError("EOF in part headers")
        block = data[self.pos : blank.start()]
        self.pos = blank.end()
        if _NO_COLON.search(block):  # a field's first line must hold the colon
            raise MultipartError("malformed MIME header: missing colon")
        # Continuation lines joined with one space, each line trimmed of spaces and tabs.
        fields = _FOLD.sub(b" ", block).split(b"\n")[:-1]
        self.headers_read += len(fields)
        if self.headers_read > self.max_headers:
            raise MultipartError("message too large: too many headers")
        headers: dict[str, list[str]] = {}
        for field in fields:
            if field.endswith(b"\r"):
                field = field[:-1]
            key, _, value = field.strip(b" \t").partition(b":")
            name = _canonical_key(key)
            if _BAD_VALUE_BYTE.search(value):
                raise MultipartError("malformed MIME header line")
            text = value.lstrip(b" \t").decode("utf-8", "replace")
            headers.setdefault(name, []).append(text)
        return headers

    def body(self) -> bytes:
        """The current part's raw body (partReader's scanUntilBoundary, all data at hand)."""
        start = self.pos
        data = self.data
        scan = start
        if data.startswith(self.dash_boundary, start):
            if self._match_after(start, self.dash_boundary) > 0:
                return b""
            scan = start + len(self.dash_boundary)
        elif len(data) - start <= len(self.dash_boundary) and self.dash_boundary.startswith(
            data[start:]
        ):
            return b""
        if self._delimiter is None:  # the line-end mode is settled by now
            self._delimiter = re.compile(re.escape(self.nl_dash_boundary) + rb"(?:[ \t\r\n]|--|\Z)")
        found = self._delimiter.search(data, scan)
        if found is None:
            self.pos = len(data)
            return data[start:]
        self.pos = found.start()
        return data[start : found.start()]

    def _match_after(self, at: int, prefix: bytes) -> int:
        """Go's matchAfterPrefix at the end of input: +1 is a boundary, -1 is not."""
        after = at + len(prefix)
        if after == len(self.data):
            return 1
        c = self.data[after]
        if c in b" \t\r\n":
            return 1
        if c == ord("-"):
            if after + 1 == len(self.data):
                return -1
            if self.data[after + 1] == ord("-"):
                return 1
        return -1


def _header(headers: dict[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""


def _form_name(headers: dict[str, list[str]]) -> str:
    try:
        disposition, params = parse_media_type(_header(headers, "Content-Disposition"))
    except MediaTypeLimitError as exc:
        raise MultipartError(f"Content-Disposition: {exc}") from None
    except MediaTypeError:
        return ""
    return params.get("name", "") if disposition == "form-data" else ""


def parse_multipart(
    data: bytes,
    boundary: str,
    *,
    max_parts: int = MAX_PARTS,
    max_depth: int = MAX_JSON_DEPTH,
) -> dict[str, list[Any]]:
    """Every named part's value by name; raises ``MultipartError`` where Go's reader fails."""
    if not boundary:
        raise MultipartError("boundary is empty")
    if len(boundary) > MAX_BOUNDARY:
        raise MultipartError(f"boundary longer than {MAX_BOUNDARY} bytes")
    reader = _Reader(data, boundary)
    values: dict[str, list[Any]] = {}
    parts = 0
    while (headers := reader.next_part()) is not None:
        parts += 1
        if parts > max_parts:
            raise MultipartError(f"more than {max_parts} parts")
        raw = reader.body()
        name = _form_name(headers)
        if not name:
            continue
        if _header(headers, "Content-Transfer-Encoding").lower() == "quoted-printable":
            raw = decode_quoted_printable(raw)
        if "application/json" in _header(headers, "Content-Type"):
            try:
                text = raw.decode("utf-8", "replace")
                # The body's length is bounded by the caller; a part is no longer.
                value: Any = loads_bounded(text, max_bytes=len(data), max_depth=max_depth)
            except ValueError as exc:
                raise MultipartError("a JSON part is not JSON") from exc
        else:
            value = raw.decode("utf-8", "replace")
        values.setdefault(name, []).append(value)
    return values


# "=" neither starting an escape nor a soft line break: Go takes it literally.
_QP_LITERAL_EQUALS: Final = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r?\n)")
# Go's errors, each anywhere in the part: a line longer than the buffer; a byte that is
# neither printable, tab, CR, LF nor 8-bit; "=" then CR not ending the line; a soft line
# break with white space after the "=" (or two CRs); "=" last before a soft line break.
_QP_ERRORS: Final = tuple(
    re.compile(pattern)
    for pattern in (
        rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]",
        rb"=\r(?!\n)",
        rb"=(?=[ \t\r]*+\n)(?!\r?\n)",
        rb"==\r?\n",
    )
)
# Trailing white space of a line: dropped, the line end kept (CRLF if it was one).
_QP_TRAILING_CRLF: Final = re.compile(rb"(?<![ \t\r])[ \t\r]*\r\n")
_QP_TRAILING_LF: Final = re.compile(rb"(?<![ \t\r])[ \t\r]*[ \t]\n")
_QP_TRAILING_ANY: Final = (re.compile(rb"[ \t]\r?\n"), re.compile(rb"\r\r\n"))


def decode_quoted_printable(raw: bytes) -> bytes:
    """Go's quotedprintable.Reader: ``=XX``, soft breaks ``=\\r\\n`` and ``=\\n``, trailing
    white space dropped, a lone ``=`` not before a line end taken literally, a soft break
    allowed as the very last byte. Whole-buffer passes, so the time is linear."""
    if _long_line(raw, 0, len(raw)) or any(error.search(raw) for error in _QP_ERRORS):
        raise MultipartError("quoted-printable: invalid body")
    last = raw.rfind(b"\n") + 1
    tail = raw[last:]
    trimmed = tail.rstrip(b" \t\r")
    if trimmed.endswith(b"="):
        # A soft break at the end: only right after content, with nothing after it.
        if trimmed != tail or len(trimmed) < 2 or trimmed.endswith(b"=="):
            raise MultipartError("quoted-printable: invalid bytes after =")
        trimmed = trimmed[:-1]
    text = raw[:last]
    if any(
        trailing.search(text) for trailing in _QP_TRAILING_ANY
    ):  # the slower passes only where there is work
        text = _QP_TRAILING_LF.sub(b"\n", _QP_TRAILING_CRLF.sub(b"\r\n", text))
    text += trimmed
    # Now only escapes and soft breaks remain for binascii's decoder, which reads those as
    # Go does (its other habits, like "==", never meet it: literal "=" became "=3D").
    return binascii.a2b_qp(_QP_LITERAL_EQUALS.sub(b"=3D", text))

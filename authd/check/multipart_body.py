"""``multipart/form-data`` bodies, read as the OPA-Envoy plugin reads them with Go's
``mime/multipart`` reader, over the whole body held in memory.

The plugin's value is a map of form name to the list of its parts' values, in order: a part
whose ``Content-Type`` contains ``application/json`` gives its parsed JSON, any other its
text. Parts without a ``form-data`` disposition or without a name are skipped. Go's reading
rules kept here: lines before the first ``--boundary`` are skipped (each at most 4096 bytes,
its buffer); a first boundary line ending in a bare ``\\n`` switches the reader to ``\\n``
line ends; a part's body ends at ``CRLF--boundary`` followed by white space, a line end,
``--`` or the end; ``--boundary--`` ends the form; headers are MIME headers (continuation
lines, at most 10,000 per part); ``Content-Transfer-Encoding: quoted-printable`` is decoded as
Go's ``quotedprintable`` does. Anything Go's reader fails on raises ``MultipartError``, as
does passing ``max_parts`` parts or a boundary longer than ``MAX_BOUNDARY`` (bounds of ours).
"""

from __future__ import annotations

from typing import Any, Final

from authd.check.bounded_json import MAX_JSON_DEPTH, loads_bounded
from authd.check.media_type import MediaTypeError, MediaTypeLimitError, parse_media_type

MAX_PARTS: Final = 10_000
MAX_HEADERS_PER_PART: Final = 10_000  # Go's multipartmaxheaders
MAX_BOUNDARY: Final = 1_000  # RFC 2046 allows 70; Go's 4096-byte line buffer breaks far above
_LINE_BUFFER: Final = 4096  # bufio's default size: a longer line is ErrBufferFull
_TCHAR: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class MultipartError(ValueError):
    """The body is not a multipart form Go's reader reads."""


def _skip_lwsp(b: bytes) -> bytes:
    return b.lstrip(b" \t")


def _valid_header_value(value: bytes) -> bool:
    return all(c == 0x09 or 0x20 <= c <= 0x7E or c >= 0x80 for c in value)


def _canonical_key(key: bytes) -> str:
    """Go's CanonicalMIMEHeaderKey (a key with a space is kept as is); raises on a bad key."""
    if not key:
        raise MultipartError("malformed MIME header line")
    if any(c not in _TCHAR and c != 0x20 for c in key):
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

    def _read_line(self) -> bytes | None:
        """textproto's readLineSlice: a line without its end, None at the end of the data."""
        if self.pos >= len(self.data):
            return None
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            line = self.data[self.pos :]
            self.pos = len(self.data)
            return line
        line = self.data[self.pos : end]
        self.pos = end + 1
        return line[:-1] if line.endswith(b"\r") else line

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
                continue  # the preamble
            if line == self.nl:
                expect_new_part = True
                continue
            raise MultipartError("unexpected line in Next()")

    def _headers(self) -> dict[str, list[str]]:
        """textproto.ReadMIMEHeader at ``pos``."""
        headers: dict[str, list[str]] = {}
        if self.pos < len(self.data) and self.data[self.pos] in b" \t":
            raise MultipartError("malformed MIME header initial line")
        count = 0
        while True:
            line = self._read_line()
            if line is None:
                raise MultipartError("EOF in part headers")
            if not line:
                return headers
            if b":" not in line:
                raise MultipartError("malformed MIME header: missing colon")
            joined = [line.strip(b" \t")]
            while self.pos < len(self.data) and self.data[self.pos] in b" \t":
                while self.pos < len(self.data) and self.data[self.pos] in b" \t":
                    self.pos += 1
                more = self._read_line()
                if more is None:
                    break
                joined.append(more.strip(b" \t"))
            key, _, value = b" ".join(joined).partition(b":")
            name = _canonical_key(key)
            if not _valid_header_value(value):
                raise MultipartError("malformed MIME header line")
            count += 1
            if count > MAX_HEADERS_PER_PART:
                raise MultipartError("message too large")
            text = value.lstrip(b" \t").decode("utf-8", "replace")
            headers.setdefault(name, []).append(text)

    def body(self) -> bytes:
        """The current part's raw body (partReader's scanUntilBoundary, all data at hand)."""
        start = self.pos
        data = self.data
        scan = start
        rest = data[start:]
        if rest.startswith(self.dash_boundary):
            match = self._match_after(start, self.dash_boundary)
            if match > 0:
                return b""
            scan = start + len(self.dash_boundary)
        elif self.dash_boundary.startswith(rest):
            return b""
        while True:
            i = data.find(self.nl_dash_boundary, scan)
            if i < 0:
                self.pos = len(data)
                return data[start:]
            if self._match_after(i, self.nl_dash_boundary) > 0:
                self.pos = i
                return data[start:i]
            scan = i + len(self.nl_dash_boundary)

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
                raise MultipartError(f"part {name!r} is not JSON") from exc
        else:
            value = raw.decode("utf-8", "replace")
        values.setdefault(name, []).append(value)
    return values


def _hex(c: int) -> int:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x41 <= c <= 0x46:
        return c - 0x41 + 10
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


def decode_quoted_printable(raw: bytes) -> bytes:
    """Go's quotedprintable.Reader: ``=XX``, soft breaks ``=\\r\\n`` and ``=\\n``, trailing
    white space dropped, a lone ``=`` not before a line end taken literally."""
    out = bytearray()
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos, pos + _LINE_BUFFER)
        if end < 0 and len(raw) - pos >= _LINE_BUFFER:
            raise MultipartError("quoted-printable line longer than the buffer")
        at_eof = end < 0
        whole = raw[pos:] if at_eof else raw[pos : end + 1]
        pos = len(raw) if at_eof else end + 1
        line = whole.rstrip(b" \t\r\n")
        if line.endswith(b"="):
            stripped = whole[len(line) :]
            line = line[:-1]
            if not (
                stripped.startswith(b"\n")
                or stripped.startswith(b"\r\n")
                or (not stripped and line and at_eof)
            ):
                raise MultipartError("quoted-printable: invalid bytes after =")
        elif whole.endswith(b"\n"):
            line += b"\r\n" if whole.endswith(b"\r\n") else b"\n"
        i = 0
        while i < len(line):
            b = line[i]
            if b == 0x3D:  # "="
                if i + 2 < len(line) and _hex(line[i + 1]) >= 0 and _hex(line[i + 2]) >= 0:
                    out.append(_hex(line[i + 1]) * 16 + _hex(line[i + 2]))
                    i += 3
                    continue
                if len(line) - i >= 2 and line[i + 1] not in b"\r\n":
                    out.append(b)  # a literal "="
                    i += 1
                    continue
                raise MultipartError("quoted-printable: invalid escape")
            if b in b"\t\r\n" or b >= 0x80 or 0x20 <= b <= 0x7E:
                out.append(b)
                i += 1
                continue
            raise MultipartError("quoted-printable: invalid unescaped byte")
    return bytes(out)

"""Media types and their parameters (``Content-Type``, ``Content-Disposition``), read as
Go's ``mime.ParseMediaType`` reads them, since that is what the OPA-Envoy plugin uses.

The type is a token, optionally ``/`` and a second token; each parameter is ``; name=value``
with a token or quoted-string value (a backslash escapes a tspecial only, as MSIE sends
paths); RFC 2231 ``name*=charset'lang'%XX`` and ``name*0``/``name*1*`` continuations are
joined (``utf-8`` and ``us-ascii`` only; an undecodable one is dropped, not an error).
Duplicate names with different values, a bad type or an unreadable parameter raise
``MediaTypeError``; a trailing ``;`` is allowed. Names come back lower-cased.
"""

from __future__ import annotations

import re
from typing import Final

_TSPECIALS: Final = frozenset('()<>@,;:\\"/[]?=')
# Go's unicode.IsSpace for Latin-1; above it, the Unicode White_Space property.
_LATIN1_SPACE: Final = frozenset("\t\n\v\f\r \x85\xa0")
_HEX: Final = frozenset("0123456789abcdefABCDEF")


class MediaTypeError(ValueError):
    """The value is not a media type with readable parameters (Go's mime errors)."""


def _is_space(c: str) -> bool:
    return c in _LATIN1_SPACE or (c > "\xff" and c.isspace())


def _trim_left_space(s: str) -> str:
    i = 0
    while i < len(s) and _is_space(s[i]):
        i += 1
    return s[i:]


def _trim_space(s: str) -> str:
    s = _trim_left_space(s)
    end = len(s)
    while end > 0 and _is_space(s[end - 1]):
        end -= 1
    return s[:end]


def _is_token_char(c: str) -> bool:
    return " " < c < "\x7f" and c not in _TSPECIALS


def _consume_token(v: str) -> tuple[str, str]:
    i = 0
    while i < len(v) and _is_token_char(v[i]):
        i += 1
    return v[:i], v[i:]


def _consume_value(v: str) -> tuple[str, str]:
    if not v:
        return "", ""
    if v[0] != '"':
        return _consume_token(v)
    out: list[str] = []
    i = 1
    while i < len(v):
        c = v[i]
        if c == '"':
            return "".join(out), v[i + 1 :]
        if c == "\\" and i + 1 < len(v) and v[i + 1] in _TSPECIALS:
            out.append(v[i + 1])
            i += 2
            continue
        if c in "\r\n":
            return "", v
        out.append(c)
        i += 1
    return "", v  # no closing quote


def _consume_param(v: str) -> tuple[str, str, str]:
    """``(name, value, rest)``; ``name`` is empty when no parameter could be read."""
    rest = _trim_left_space(v)
    if not rest.startswith(";"):
        return "", "", v
    rest = _trim_left_space(rest[1:])
    name, rest = _consume_token(rest)
    name = name.lower()
    if not name:
        return "", "", v
    rest = _trim_left_space(rest)
    if not rest.startswith("="):
        return "", "", v
    rest = _trim_left_space(rest[1:])
    value, after = _consume_value(rest)
    if not value and after == rest:
        return "", "", v
    return name, value, after


def _go_lower(s: str) -> str:
    # Go lowers rune by rune, one rune for one (Python turns U+0130 into two).
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in s).replace("\u0130", "i")


def _check_type(media_type: str) -> None:
    first, rest = _consume_token(media_type)
    if not first:
        raise MediaTypeError("no media type")
    if not rest:
        return
    if not rest.startswith("/"):
        raise MediaTypeError("expected slash after first token")
    second, rest = _consume_token(rest[1:])
    if not second:
        raise MediaTypeError("expected token after slash")
    if rest:
        raise MediaTypeError("unexpected content after media subtype")


def _percent_unescape(s: str) -> str | None:
    i = 0
    while i < len(s):
        if s[i] != "%":
            i += 1
            continue
        if i + 2 >= len(s) or s[i + 1] not in _HEX or s[i + 2] not in _HEX:
            return None
        i += 3
    raw = s.encode("utf-8", "surrogateescape")
    decoded = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)
    return decoded.decode("utf-8", "replace")


def _decode_2231(v: str) -> str | None:
    parts = v.split("'", 2)
    if len(parts) != 3:
        return None
    charset = _go_lower(parts[0])
    if charset not in ("us-ascii", "utf-8"):
        return None
    return _percent_unescape(parts[2])


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``(type, params)`` of ``value``; raises ``MediaTypeError`` where Go's parser fails."""
    base = value.split(";", 1)[0]
    media_type = _trim_space(_go_lower(base))
    _check_type(media_type)
    params: dict[str, str] = {}
    continuations: dict[str, dict[str, str]] = {}
    v = value[len(base) :]
    while v:
        v = _trim_left_space(v)
        if not v:
            break
        name, param_value, rest = _consume_param(v)
        if not name:
            if _trim_space(rest) == ";":
                break  # a trailing semicolon
            raise MediaTypeError("invalid media parameter")
        target = params
        if "*" in name:
            target = continuations.setdefault(name.split("*", 1)[0], {})
        if target.get(name, param_value) != param_value:
            raise MediaTypeError("duplicate parameter name")
        target[name] = param_value
        v = rest
    for name, pieces in continuations.items():
        _stitch(name, pieces, params)
    return media_type, params


def _stitch(name: str, pieces: dict[str, str], params: dict[str, str]) -> None:
    single = pieces.get(name + "*")
    if single is not None:
        decoded = _decode_2231(single)
        if decoded is not None:
            params[name] = decoded
        return
    joined: list[str] = []
    valid = False
    n = 0
    while True:
        simple = f"{name}*{n}"
        if simple in pieces:
            valid = True
            joined.append(pieces[simple])
        elif simple + "*" in pieces:
            valid = True
            encoded = pieces[simple + "*"]
            decoded = _decode_2231(encoded) if n == 0 else _percent_unescape(encoded)
            joined.append(decoded or "")
        else:
            break
        n += 1
    if valid:
        params[name] = "".join(joined)

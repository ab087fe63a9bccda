"""Media types and their parameters (``Content-Type``, ``Content-Disposition``), read as
Go's ``mime.ParseMediaType`` reads them, since that is what the OPA-Envoy plugin uses.

The type is a token, optionally ``/`` and a second token; each parameter is ``; name=value``
with a token or quoted-string value (a backslash escapes a tspecial only, as MSIE sends
paths); RFC 2231 ``name*=charset'lang'%XX`` and ``name*0``/``name*1*`` continuations are
joined (``utf-8`` and ``us-ascii`` only; an undecodable one is dropped, not an error).
Duplicate names with different values, a bad type or an unreadable parameter raise
``MediaTypeError``; a trailing ``;`` is allowed. Names come back lower-cased. More than
``MAX_PARAMETERS`` parameters raise ``MediaTypeLimitError`` (authd's bound: Go has none).
"""

from __future__ import annotations

import re
from typing import Final

_TSPECIALS: Final = frozenset('()<>@,;:\\"/[]?=')
_HEX: Final = frozenset("0123456789abcdefABCDEF")


MAX_PARAMETERS: Final = 1000


class MediaTypeError(ValueError):
    """The value is not a media type with readable parameters (Go's mime errors)."""


class MediaTypeLimitError(MediaTypeError):
    """The value has more than ``MAX_PARAMETERS`` parameters (a bound of authd's, not Go's)."""


# Go's token: US-ASCII above space, not DEL, not a tspecial.
_TOKEN: Final = re.compile(
    "[" + re.escape("".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in _TSPECIALS)) + "]*"
)
_TSPECIAL_CLASS: Final = "[" + re.escape("".join(sorted(_TSPECIALS))) + "]"
# A quoted-string's content up to its closing quote: a backslash escapes a tspecial (MSIE
# sends paths with bare backslashes, so one before anything else is itself). Possessive:
# no backtracking on a long run of backslashes.
_QUOTED: Final = re.compile(r'"((?:[^"\\\r\n]++|\\' + _TSPECIAL_CLASS + r"|\\)*+)" + '"')
_ESCAPED: Final = re.compile(r"\\(" + _TSPECIAL_CLASS + ")")


# Go's unicode.IsSpace: the Latin-1 spaces and, above them, the White_Space property.
_SPACE_CHARS: Final = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)
_SPACES: Final = re.compile("[" + re.escape(_SPACE_CHARS) + "]*")


def _skip_space(s: str, i: int) -> int:
    match = _SPACES.match(s, i)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _trim_space(s: str) -> str:
    return s.strip(_SPACE_CHARS)


def _token_end(s: str, i: int) -> int:
    match = _TOKEN.match(s, i)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _consume_value(v: str, i: int) -> tuple[str, int]:
    """The token or quoted-string at ``v[i:]`` and the index after it; ``("", i)`` if none."""
    if i >= len(v):
        return "", i
    if v[i] != '"':
        end = _token_end(v, i)
        return v[i:end], end
    quoted = _QUOTED.match(v, i)
    if quoted is None:
        return "", i  # no closing quote, or a line break inside
    return _ESCAPED.sub(r"\1", quoted.group(1)), quoted.end()


def _consume_param(v: str, i: int) -> tuple[str, str, int]:
    """``(name, value, next index)``; ``name`` is empty (and the index ``i``) when no
    parameter could be read at ``v[i:]``."""
    j = _skip_space(v, i)
    if j >= len(v) or v[j] != ";":
        return "", "", i
    j = _skip_space(v, j + 1)
    end = _token_end(v, j)
    name = v[j:end].lower()
    if not name:
        return "", "", i
    j = _skip_space(v, end)
    if j >= len(v) or v[j] != "=":
        return "", "", i
    j = _skip_space(v, j + 1)
    value, after = _consume_value(v, j)
    if not value and after == j:
        return "", "", i
    return name, value, after


def _go_lower(s: str) -> str:
    # Go lowers rune by rune, one rune for one: U+0130 is "i" there (two runes in Python).
    return s.replace("\u0130", "i").lower()


def _check_type(media_type: str) -> None:
    end = _token_end(media_type, 0)
    if end == 0:
        raise MediaTypeError("no media type")
    if end == len(media_type):
        return
    if media_type[end] != "/":
        raise MediaTypeError("expected slash after first token")
    second = _token_end(media_type, end + 1)
    if second == end + 1:
        raise MediaTypeError("expected token after slash")
    if second != len(media_type):
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
    v, i, count = value, len(base), 0
    while i < len(v):
        i = _skip_space(v, i)
        if i >= len(v):
            break
        name, param_value, after = _consume_param(v, i)
        if not name:
            if _trim_space(v[i:]) == ";":
                break  # a trailing semicolon
            raise MediaTypeError("invalid media parameter")
        target = params
        if "*" in name:
            target = continuations.setdefault(name.split("*", 1)[0], {})
        if target.get(name, param_value) != param_value:
            raise MediaTypeError("duplicate parameter name")
        target[name] = param_value
        i = after
        count += 1
        if count > MAX_PARAMETERS:
            raise MediaTypeLimitError(f"more than {MAX_PARAMETERS} parameters")
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

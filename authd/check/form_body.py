"""URL-encoded forms (``application/x-www-form-urlencoded``) and query strings, read as
Go's ``url.ParseQuery`` reads them, since that is what the OPA-Envoy plugin uses.

Pairs are split on ``&``; a pair holding ``;`` is an error (Go 1.17+), an empty pair is
skipped, ``+`` is a space and ``%XX`` a byte (a ``%`` not followed by two hex digits is an
error); every name maps to the list of its values, in order. Bytes that are not UTF-8
become U+FFFD (Rego strings are UTF-8). ``FormError`` says what could not be read.
"""

from __future__ import annotations

import re
from typing import Final

# Go's urlmaxqueryparams bound: a form with more pairs than this is refused, not parsed.
MAX_FORM_FIELDS: Final = 10_000

_ESCAPE: Final = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")


class FormError(ValueError):
    """The text is not a URL-encoded form Go would read."""


def url_unescape(text: str, *, plus_is_space: bool) -> str:
    """Go's ``url.QueryUnescape`` (``plus_is_space``) or ``url.PathUnescape``."""
    raw = text.encode("utf-8", "surrogateescape")
    if _BAD_ESCAPE.search(raw):
        raise FormError("invalid URL escape")
    if plus_is_space:
        raw = raw.replace(b"+", b" ")
    decoded = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    return decoded.decode("utf-8", "replace")


def parse_form(text: str, *, max_fields: int | None = MAX_FORM_FIELDS) -> dict[str, list[str]]:
    """Every name of ``text`` with its values; ``max_fields`` bounds the ``&``-separated pairs."""
    if max_fields is not None and text.count("&") >= max_fields:
        raise FormError(f"more than {max_fields} fields")
    parsed: dict[str, list[str]] = {}
    for part in text.split("&"):
        if ";" in part:
            raise FormError("invalid semicolon separator in query")
        if not part:
            continue
        key, _, value = part.partition("=")
        key = url_unescape(key, plus_is_space=True)
        parsed.setdefault(key, []).append(url_unescape(value, plus_is_space=True))
    return parsed

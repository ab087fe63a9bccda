"""The request path as policy sees it: one spelling per resource.

Envoy hands authd the path as the client wrote it (undecoded, with the query string). A
policy comparing that text is fooled by other spellings of the same resource:
``/public/../orders/1``, ``/public/%2e%2e/orders/1``. So before any policy runs, the path
(without query string or fragment) is normalised:

1. an encoded ``/`` or ``\\`` (``%2F``, ``%5C``, any case) or a raw ``\\`` is refused: the
   check is denied with reason ``malformed_request`` (rule ``path``). Upstreams disagree on
   whether ``..%2F`` is a separator, so no normalisation could say which resource is meant;
2. ``%XX`` escapes of unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded, every
   other escape is kept, with upper-case hex digits (RFC 3986 6.2.2.1-2);
3. runs of ``/`` are merged into one;
4. ``.`` and ``..`` segments are removed (RFC 3986 5.2.4 remove_dot_segments; ``..`` never
   climbs above the root); a path ending in one of them keeps its trailing ``/``;
5. a path that does not start with ``/`` is read as if it did (so ``admin/x`` is ``/admin/x``);
6. a dot segment with parameters (``..;x``, ``.;``, also spelt ``%2e%2e;``) is refused like an
   encoded ``/``: Tomcat and Jetty drop the ``;x`` and climb, others take it as a name, so
   ``/public/..;/orders`` would mean two things. Envoy's normalisation removes a raw
   ``..;`` itself but forwards one it decoded from ``%2e%2e;``.

The query string is not touched. The raw path stays available beside the normalised one.
"""

from __future__ import annotations

import re
from typing import Final

from authd.check.errors import MalformedRequest

UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(r"/{2,}")
_AMBIGUOUS = re.compile(r"%(?:2[fF]|5[cC])|\\")


def path_without_query(path: str) -> str:
    """The path as sent, without query string or fragment."""
    return path.split("?", 1)[0].split("#", 1)[0]


def normalize_path(path: str) -> str:
    """The normalised form of a path without query (see the module docstring).

    Raises ``MalformedRequest`` for an encoded ``/`` or ``\\``, a raw ``\\``, or a dot
    segment with parameters.
    """
    if "%" in path or "\\" in path:
        if _AMBIGUOUS.search(path):
            raise MalformedRequest("path", "an encoded '/' or '\\' (or a raw '\\') is refused")
    elif path.startswith("/") and "//" not in path and "/." not in path:
        return path  # the usual case: nothing to normalise
    if not path.startswith("/"):
        path = "/" + path
    path = _SLASHES.sub("/", decode_unreserved(path))
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments[1:]:
        if ";" in segment and segment.split(";", 1)[0] in (".", ".."):
            raise MalformedRequest("path", "a dot segment with parameters ('..;') is refused")
        if segment == ".":
            continue
        if segment == "..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    normalized = "/" + "/".join(kept)
    if segments[-1] in (".", "..") and not normalized.endswith("/"):
        normalized += "/"
    return normalized


def decode_unreserved(text: str) -> str:
    """Decode the ``%XX`` escapes of unreserved characters; upper-case the others."""

    def decode(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT.sub(decode, text)

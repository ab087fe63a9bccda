"""Path patterns of the rules as Envoy's matcher sees them: the raw ``:path``, query included.

A rule's path pattern (``/orders``, ``/orders/{id}``, ``/static/*``; see
``authd.policy.rules``) is compared by authd with the *normalised* path, without the query.
Envoy's RBAC matcher reads the raw ``:path`` header instead, so each pattern becomes string
matchers that accept the path with or without ``?query``, and every path whose raw spelling
could normalise differently (an escape, a dot segment, ``//``, a backslash, no leading
``/``) is sent to ext_authz before any pattern is tried. What remains is compared the same
way on both sides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from authd.check.request_path import decode_unreserved

__all__ = [
    "UNSAFE_CONTAINS",
    "UNSAFE_REGEX",
    "UNSAFE_SUFFIXES",
    "PathPattern",
    "is_unsafe_path",
    "parse_path_pattern",
]

_TEMPLATE_VAR: Final = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
# RE2 reads "\" + punctuation as that character; letters and digits stay as they are.
_SEGMENT_CHAR: Final = r"[^/?#]"

# A raw path containing one of these (or ending with one of the suffixes) may normalise to
# another path than it spells, so ext_authz (which normalises) decides it.
UNSAFE_CONTAINS: Final = ("%", "\\", "//", "/./", "/../", "/.?", "/..?")
UNSAFE_SUFFIXES: Final = ("/.", "/..")


def _re2_literal(text: str) -> str:
    return "".join(c if c.isalnum() and c.isascii() else "\\" + c for c in text)


# The same test as one RE2 regex over the whole raw path (Envoy full-matches): one read of
# ``:path`` and one pass over it per request, not one copy and scan per substring.
UNSAFE_REGEX: Final = (
    r"[\s\S]*(?:"
    + "|".join(_re2_literal(text) for text in UNSAFE_CONTAINS)
    + r")[\s\S]*|[\s\S]*(?:"
    + "|".join(_re2_literal(text) for text in UNSAFE_SUFFIXES)
    + ")"
)


def is_unsafe_path(path: str) -> bool:
    """Could the raw ``path`` normalise to another path than it spells? (The definition.)"""
    return (
        not path.startswith("/")
        or any(text in path for text in UNSAFE_CONTAINS)
        or path.endswith(UNSAFE_SUFFIXES)
    )


@dataclass(frozen=True, slots=True)
class PathPattern:
    """One path pattern of a rule, classified: ``exact``, ``prefix`` or ``template``.

    ``value`` is the normalised exact path or prefix base (``""`` for ``/*``), or the
    template's RE2 regex over the raw ``:path``; ``segments`` are the pattern's segments
    (a template variable is ``None``), for telling two templates apart.
    """

    text: str
    kind: Literal["exact", "prefix", "template"]
    value: str
    segments: tuple[str | None, ...]
    open_ended: bool  # a template ending in "/*"

    @property
    def matches_everything(self) -> bool:
        return self.kind == "prefix" and self.value == ""

    def matches(self, path: str) -> bool:
        """Does the normalised ``path`` (no query) match? (As the rules engine decides.)"""
        if self.kind == "exact":
            return path == self.value
        if self.kind == "prefix":
            return path == self.value or path.startswith(self.value + "/")
        return re.fullmatch(self.value, path) is not None

    def under(self, prefix: str) -> bool:
        """Is every path this prefix pattern covers also below ``prefix`` (or equal to it)?"""
        return self.value == prefix or self.value.startswith(prefix + "/")

    def disjoint_from(self, other: PathPattern) -> bool:
        """True when no path can match both templates (different length or literal)."""
        a, b = self.segments, other.segments
        if len(a) != len(b) and not (self.open_ended or other.open_ended):
            return True
        return any(x is not None and y is not None and x != y for x, y in zip(a, b, strict=False))


def parse_path_pattern(text: str) -> PathPattern:
    """Classify a pattern the rules parser accepted (it has already refused bad ones)."""
    body, prefix = (text[:-2], True) if text.endswith("/*") else (text, False)
    raw_segments = body.split("/")[1:] if body else []
    segments = tuple(
        None if _TEMPLATE_VAR.fullmatch(s) else decode_unreserved(s) for s in raw_segments
    )
    if any(s is None for s in segments):
        regex = "".join(
            "/" + (_SEGMENT_CHAR + "+" if s is None else _re2_literal(s)) for s in segments
        )
        if prefix:
            regex += "(?:/[^?#]*)?"
        return PathPattern(text, "template", regex, segments, prefix)
    normalized = "".join("/" + s for s in segments if s is not None)
    if prefix:
        return PathPattern(text, "prefix", normalized, segments, False)
    return PathPattern(text, "exact", normalized or "/", segments, False)

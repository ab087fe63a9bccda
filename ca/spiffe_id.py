"""SPIFFE IDs and trust domains, parsed exactly as SPIFFE-ID.md requires.

``SpiffeId.parse(s)`` either returns a value or raises ``InvalidSpiffeId`` naming what is
wrong with ``s``. The hot path (ext_authz checks every request's principal) is one regex
match and a small cache; the detailed diagnosis runs only for bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from ca.errors import InvalidSpiffeId

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-_"
_PATH_CHARS = _TD_CHARS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VALID_ID = re.compile(r"spiffe://([a-z0-9._-]+)((?:/[a-zA-Z0-9._-]+)*)")
_VALID_TD = re.compile(r"[a-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class TrustDomain:
    """A trust domain name such as ``example.org``."""

    name: str

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Accept ``example.org`` or ``spiffe://example.org``."""
        if text.startswith(SCHEME_PREFIX) or "://" in text:
            spiffe_id = SpiffeId.parse(text)
            if spiffe_id.path:
                raise InvalidSpiffeId(f"{text!r}: a trust domain ID must not have a path")
            return spiffe_id.trust_domain
        _check_trust_domain(text, text)
        return cls(text)

    @property
    def id(self) -> SpiffeId:
        """The trust domain's own SPIFFE ID, ``spiffe://name`` (used on signing certificates)."""
        return SpiffeId(self, "")

    def spiffe_id(self, path: str) -> SpiffeId:
        """The SPIFFE ID of ``path`` in this trust domain (path must start with '/')."""
        return SpiffeId.parse(f"{SCHEME_PREFIX}{self.name}{path}")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed SPIFFE ID: a trust domain and a path ('' for the trust domain's own ID)."""

    trust_domain: TrustDomain
    path: str
    # The text, built once: a check turns the caller's ID into text several times.
    _text: str = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_text", f"{SCHEME_PREFIX}{self.trust_domain.name}{self.path}")

    @staticmethod
    def parse(text: str) -> SpiffeId:
        if not isinstance(text, str):  # also keeps unhashable values out of the cache
            raise InvalidSpiffeId(f"a SPIFFE ID must be a string, not {type(text).__name__}")
        return _parse_cached(text)

    def member_of(self, trust_domain: TrustDomain) -> bool:
        return self.trust_domain == trust_domain

    @property
    def is_workload(self) -> bool:
        """A workload (leaf) ID has a non-root path; a trust domain's own ID does not."""
        return bool(self.path)

    def __str__(self) -> str:
        return self._text


@lru_cache(maxsize=4096)
def _parse_cached(text: str) -> SpiffeId:
    match = _VALID_ID.fullmatch(text)
    if match is None or len(text) > MAX_ID_BYTES:  # valid IDs are ASCII: chars == bytes
        raise InvalidSpiffeId(_diagnose(text))
    if len(match.group(1)) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeId(
            f"{_show(text)}: trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
        )
    path = match.group(2)
    for segment in path.split("/")[1:]:
        if segment in (".", ".."):
            raise InvalidSpiffeId(f"{_show(text)}: path segment {segment!r} is not allowed")
    return SpiffeId(TrustDomain(match.group(1)), path)


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (JSON can carry one) is measured, then refused below.
    return text.encode("utf-8", "surrogatepass")


def _show(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _diagnose(text: str) -> str:
    """Say precisely why ``text`` is not a SPIFFE ID (only called for invalid input)."""
    shown = _show(text)
    if not text:
        return "SPIFFE ID is empty"
    if len(_utf8(text)) > MAX_ID_BYTES:
        return f"{shown}: SPIFFE ID is longer than {MAX_ID_BYTES} bytes"
    scheme, sep, rest = text.partition("://")
    if not sep:
        return f"{shown}: missing scheme, a SPIFFE ID starts with 'spiffe://'"
    if scheme != "spiffe":
        if scheme.lower() == "spiffe":
            return f"{shown}: scheme must be lowercase 'spiffe'"
        return f"{shown}: scheme must be 'spiffe', not {scheme!r}"
    for char, what in (("?", "a query"), ("#", "a fragment")):
        if char in rest:
            return f"{shown}: a SPIFFE ID must not contain {what} ({char!r})"
    authority, slash, path = rest.partition("/")
    _check_trust_domain(authority, text)
    if slash:
        for segment in path.split("/"):
            if segment == "":
                return f"{shown}: path has an empty segment (double or trailing '/')"
            if segment in (".", ".."):
                return f"{shown}: path segment {segment!r} is not allowed"
            for char in segment:
                if char not in _PATH_CHARS:
                    return (
                        f"{shown}: path character {char!r} in segment {segment!r} is not "
                        "allowed (letters, digits, '.', '-' and '_' only)"
                    )
    return f"{shown}: not a valid SPIFFE ID"


def _check_trust_domain(name: str, text: str) -> None:
    shown = _show(text)
    if not name:
        raise InvalidSpiffeId(f"{shown}: trust domain is missing")
    if _VALID_TD.fullmatch(name) and len(name) <= MAX_TRUST_DOMAIN_BYTES:
        return
    if "@" in name:
        raise InvalidSpiffeId(f"{shown}: trust domain must not contain userinfo ('@')")
    if ":" in name:
        raise InvalidSpiffeId(f"{shown}: trust domain must not contain a port (':')")
    if len(_utf8(name)) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeId(
            f"{shown}: trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
        )
    for char in name:
        if char not in _TD_CHARS:
            hint = " (must be lowercase)" if char.isupper() else ""
            raise InvalidSpiffeId(
                f"{shown}: trust domain character {char!r} is not allowed{hint}; "
                "use lowercase letters, digits, '.', '-' and '_'"
            )
    raise InvalidSpiffeId(f"{shown}: invalid trust domain")

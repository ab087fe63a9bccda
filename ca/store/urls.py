"""Store URLs, whatever the backend: which backend a URL names, and how to show one safely.

Nothing here connects or imports a driver, so configuration can check and print a store URL
without knowing the backends behind it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode

SQLITE_SCHEME = "sqlite"
REDIS_URL_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
STORE_URL_SCHEMES = (SQLITE_SCHEME, *REDIS_URL_SCHEMES)


def url_scheme(url: str) -> str:
    """The backend scheme of a store URL; a bare path (no ``scheme://``) is SQLite."""
    scheme, separator, _ = url.partition("://")
    return scheme if separator else SQLITE_SCHEME


def is_shared(url: str) -> bool:
    """True if ``url`` names a store several replicas share (Redis), which has a change feed."""
    return url_scheme(url) in REDIS_URL_SCHEMES


def redact_url(url: str) -> str:
    """``url`` with its password (in the userinfo or a ``password`` query option) as ``***``."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    netloc, tail = split_netloc(rest)
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***" if colon else "***"
    path, question, query = tail.partition("?")
    if question:
        fragment_cut = query.find("#")
        if fragment_cut >= 0:
            query = query[:fragment_cut]
        pairs = [
            (name, "***" if "password" in name.lower() else value)
            for name, value in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*:/")
    return f"{scheme}://{userinfo}{at}{hosts}{path}{question}{query}"


def url_secrets(url: str) -> list[str]:
    """The password spellings in ``url``, longest first, to scrub from any message that might
    echo them (as written and percent-decoded)."""
    secrets: list[str] = []
    netloc, tail = split_netloc(url.partition("://")[2])
    userinfo, at, _ = netloc.rpartition("@")
    if at:
        secrets += [userinfo.partition(":")[2] or userinfo]
    query = tail.partition("?")[2].partition("#")[0]
    secrets += [v for n, v in parse_qsl(query) if "password" in n.lower()]
    return sorted({s for raw in secrets if raw for s in (raw, unquote(raw))}, key=len, reverse=True)


def split_netloc(rest: str) -> tuple[str, str]:
    """The part of a URL after ``scheme://`` as (netloc, everything from the next / ? or #)."""
    match = re.match(r"([^/?#]*)(.*)", rest, re.DOTALL)
    assert match is not None  # both groups match the empty string
    return match.group(1), match.group(2)

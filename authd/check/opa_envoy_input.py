"""The members OPA-Envoy's plugin adds to ``attributes``, parsed exactly as it parses them.

Used when ``authz.policy_compat = "opa-envoy"`` (``envoyauth/request.go``): ``parsed_path``
is the raw path (query cut off) percent-decoded as a whole, leading slashes trimmed, split on
``/`` (so ``%2F`` splits and ``..`` stays); ``parsed_query`` is the query split on ``&``
with ``+`` as a space, every key a list of values; ``parsed_body`` is JSON when the
content type contains ``application/json``, form fields when it contains
``application/x-www-form-urlencoded``, else null; ``truncated_body`` is true when Envoy sent
part of the body (``x-envoy-auth-partial-body: true``) or ``content-length`` says more than
arrived. A path, query or body the plugin cannot parse is a ``MalformedRequest``: the plugin
denies it 400 too. ``source_principal`` repeats ``attributes.source.principal`` when set.
"""

from __future__ import annotations

import re
from typing import Any, Final

from authd.check.bounded_json import loads_bounded
from authd.check.errors import MalformedRequest
from authd.check.model import CheckContext

PARTIAL_BODY_HEADER: Final = "x-envoy-auth-partial-body"
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def _unescape(text: str, what: str, plus_is_space: bool) -> str:
    raw = text.encode("utf-8", "surrogateescape")
    if _BAD_ESCAPE.search(raw):
        raise MalformedRequest(what, "invalid URL escape")
    if plus_is_space:
        raw = raw.replace(b"+", b" ")
    decoded = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    return decoded.decode("utf-8", "replace")


def _split_path(path: str) -> tuple[str, str]:
    raw_path, _, raw_query = path.partition("?")
    return raw_path, raw_query


def opa_envoy_parsed_path(ctx: CheckContext) -> list[str]:
    raw_path, _ = _split_path(ctx.path)
    return _unescape(raw_path, "path", plus_is_space=False).lstrip("/").split("/")


def _parse_query(query: str, what: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in query.split("&"):
        if ";" in part:
            raise MalformedRequest(what, "invalid semicolon separator in query")
        if not part:
            continue
        key, _, value = part.partition("=")
        key = _unescape(key, what, plus_is_space=True)
        parsed.setdefault(key, []).append(_unescape(value, what, plus_is_space=True))
    return parsed


def opa_envoy_parsed_query(ctx: CheckContext) -> dict[str, list[str]]:
    _, raw_query = _split_path(ctx.path)
    return _parse_query(raw_query, "query")


def _truncated_by_length(ctx: CheckContext, length: int) -> bool:
    declared = ctx.headers.get("content-length")
    if declared is None:
        return False
    try:
        # Go's ParseInt: an optional sign, then decimal digits.
        if not re.fullmatch(r"[+-]?[0-9]+", declared):
            raise ValueError(declared)
        return int(declared) > length
    except ValueError:
        raise MalformedRequest("body", "content-length is not a number") from None


def opa_envoy_body(ctx: CheckContext) -> tuple[Any, bool]:
    """``(parsed_body, truncated_body)``, parsed once per check."""
    cached: tuple[Any, bool] | None = ctx.__dict__.get("_opa_envoy_body")
    if cached is None:
        cached = ctx.__dict__["_opa_envoy_body"] = _parsed_body(ctx)
    return cached


def _parsed_body(ctx: CheckContext) -> tuple[Any, bool]:
    if ctx.headers.get(PARTIAL_BODY_HEADER) == "true":
        return None, True
    content_type = ctx.headers.get("content-type")
    if content_type is None:
        return None, False
    json_body = "application/json" in content_type
    if not (json_body or "application/x-www-form-urlencoded" in content_type):
        return None, False
    if not ctx.body:
        return None, False
    if _truncated_by_length(ctx, len(ctx.body)):
        return None, True
    if json_body:
        try:
            return loads_bounded(ctx.body), False
        except (ValueError, UnicodeDecodeError):
            raise MalformedRequest("body", "the JSON body cannot be parsed") from None
    return _parse_query(ctx.body.decode("utf-8", "surrogateescape"), "body"), False


def check_parsable(ctx: CheckContext) -> None:
    """Raise ``MalformedRequest`` where the plugin fails to build its input (it always builds
    it, whatever the policy reads); the body is parsed once and kept for the document."""
    opa_envoy_parsed_path(ctx)
    opa_envoy_parsed_query(ctx)
    opa_envoy_body(ctx)

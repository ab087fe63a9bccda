"""The members OPA-Envoy's plugin adds to ``attributes``, parsed exactly as it parses them.

Used when ``authz.policy_compat = "opa-envoy"`` (``envoyauth/request.go``): ``parsed_path``
is the raw path (query cut off) percent-decoded as a whole, leading slashes trimmed, split on
``/`` (so ``%2F`` splits and ``..`` stays); ``parsed_query`` is the query split on ``&``
with ``+`` as a space, every key a list of values (``authd.check.form_body``).

``parsed_body`` and ``truncated_body`` (both absent with ``skip_request_body_parse``): when
Envoy sent part of the body (``x-envoy-auth-partial-body: true``) null and true; else by the
content type, tested in the plugin's order with "contains": ``application/json`` (JSON),
``application/grpc`` (the first message, decoded with the protoset, ``grpc_body``),
``application/x-www-form-urlencoded`` (``form_body``), ``multipart/form-data``
(``multipart_body``, the boundary from ``media_type``); anything else, or no body, null and
false. A JSON, form or multipart body shorter than ``content-length`` says is null and
truncated. A path, query or body the plugin cannot parse is a ``MalformedRequest``: the
plugin denies it 400 too; so is a body past one of authd's bounds (``BodyParsing``).
``source_principal`` repeats ``attributes.source.principal`` when set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from authd.check.bounded_json import MAX_JSON_BYTES, MAX_JSON_DEPTH, loads_bounded
from authd.check.errors import MalformedRequest
from authd.check.form_body import MAX_FORM_FIELDS, FormError, parse_form, url_unescape
from authd.check.grpc_body import TRUNCATED, GrpcBodyError, GrpcMessages
from authd.check.media_type import MediaTypeError, parse_media_type
from authd.check.model import CheckContext
from authd.check.multipart_body import MAX_PARTS, MultipartError, parse_multipart

PARTIAL_BODY_HEADER: Final = "x-envoy-auth-partial-body"
_INT64_MAX: Final = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class BodyParsing:
    """How request bodies become ``parsed_body``: the plugin's settings and authd's bounds."""

    skip: bool = False  # skip-request-body-parse: no parsed_body, no truncated_body
    grpc: GrpcMessages | None = None  # the protoset (the plugin's proto-descriptor)
    max_bytes: int = MAX_JSON_BYTES  # a longer body is refused, not parsed
    max_depth: int = MAX_JSON_DEPTH
    max_fields: int = MAX_FORM_FIELDS  # form pairs, values in a decoded gRPC message
    max_parts: int = MAX_PARTS  # multipart parts


DEFAULT_BODY_PARSING: Final = BodyParsing()


def _unescape(text: str, what: str, plus_is_space: bool) -> str:
    try:
        return url_unescape(text, plus_is_space=plus_is_space)
    except FormError as exc:
        raise MalformedRequest(what, str(exc)) from None


def _split_path(path: str) -> tuple[str, str]:
    raw_path, _, raw_query = path.partition("?")
    return raw_path, raw_query


def opa_envoy_parsed_path(ctx: CheckContext) -> list[str]:
    """Parsed once per check (``check_parsable`` first, the document after); not to be
    changed by the caller."""
    cached: list[str] | None = ctx.__dict__.get("_opa_envoy_parsed_path")
    if cached is None:
        raw_path, _ = _split_path(ctx.path)
        cached = _unescape(raw_path, "path", plus_is_space=False).lstrip("/").split("/")
        ctx.__dict__["_opa_envoy_parsed_path"] = cached
    return cached


def _parse_query(query: str, what: str, max_fields: int | None = None) -> dict[str, list[str]]:
    try:
        return parse_form(query, max_fields=max_fields)
    except FormError as exc:
        raise MalformedRequest(what, str(exc)) from None


def opa_envoy_parsed_query(ctx: CheckContext) -> dict[str, list[str]]:
    """Parsed once per check, as ``opa_envoy_parsed_path``."""
    cached: dict[str, list[str]] | None = ctx.__dict__.get("_opa_envoy_parsed_query")
    if cached is None:
        _, raw_query = _split_path(ctx.path)
        cached = _parse_query(raw_query, "query", MAX_FORM_FIELDS)
        ctx.__dict__["_opa_envoy_parsed_query"] = cached
    return cached


def _truncated_by_length(ctx: CheckContext, length: int) -> bool:
    declared = ctx.headers.get("content-length")
    if declared is None:
        return False
    # Go's ParseInt: an optional sign, then decimal digits, within int64.
    number = re.fullmatch(r"([+-]?)0*([0-9]*)", declared)
    if number is None or declared.strip("+-") == "" or len(number.group(2)) > 19:
        raise MalformedRequest("body", "content-length is not a number")
    value = int(number.group(1) + (number.group(2) or "0"))
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise MalformedRequest("body", "content-length is not a number")
    return value != -1 and value > length


_Body = tuple[Any, bool] | None  # (parsed_body, truncated_body), None when not parsed at all


def opa_envoy_body(ctx: CheckContext, parsing: BodyParsing = DEFAULT_BODY_PARSING) -> _Body:
    """``(parsed_body, truncated_body)``, parsed once per check (the first call's settings
    hold; the pipeline calls first); None with ``skip``."""
    if "_opa_envoy_body" not in ctx.__dict__:
        ctx.__dict__["_opa_envoy_body"] = None if parsing.skip else _parsed_body(ctx, parsing)
    cached: _Body = ctx.__dict__["_opa_envoy_body"]
    return cached


def _raw_body(ctx: CheckContext) -> bytes:
    """What the plugin's gRPC branch reads: ``raw_body`` only (Envoy's ``pack_as_bytes``)."""
    if ctx.check_request is None:
        return ctx.body  # HTTP service mode: the body as it came
    raw: bytes = ctx.check_request.attributes.request.http.raw_body
    return raw


def _parsed_body(ctx: CheckContext, parsing: BodyParsing) -> tuple[Any, bool]:
    if ctx.headers.get(PARTIAL_BODY_HEADER) == "true":
        return None, True
    content_type = ctx.headers.get("content-type")
    if content_type is None:
        return None, False
    if "application/json" in content_type:
        kind = "json"
    elif "application/grpc" in content_type:
        return _grpc_body(ctx, parsing)
    elif "application/x-www-form-urlencoded" in content_type:
        kind = "form"
    elif "multipart/form-data" in content_type:
        kind = "multipart"
    else:
        return None, False
    if not ctx.body:
        return None, False
    if _truncated_by_length(ctx, len(ctx.body)):
        return None, True
    if kind == "json":
        _check_size(ctx.body, parsing)
        try:
            # As Go's decoder: UTF-8 only (no BOM, no UTF-16), bad bytes in strings U+FFFD.
            text = ctx.body.decode("utf-8", "replace")
            return loads_bounded(
                text, max_bytes=parsing.max_bytes, max_depth=parsing.max_depth
            ), False
        except ValueError:
            raise MalformedRequest("body", "the JSON body cannot be parsed") from None
    if kind == "form":
        _check_size(ctx.body, parsing)
        text = ctx.body.decode("utf-8", "surrogateescape")
        return _parse_query(text, "body", parsing.max_fields), False
    return _multipart_body(ctx.body, content_type, parsing), False


def _check_size(body: bytes, parsing: BodyParsing) -> None:
    if len(body) > parsing.max_bytes:
        raise MalformedRequest("body", f"the body is longer than {parsing.max_bytes} bytes")


def _multipart_body(body: bytes, content_type: str, parsing: BodyParsing) -> Any:
    try:
        _, params = parse_media_type(content_type)
    except MediaTypeError as exc:
        raise MalformedRequest("body", f"content-type: {exc}") from None
    boundary = params.get("boundary")
    if boundary is None:
        return None
    _check_size(body, parsing)
    try:
        return parse_multipart(
            body, boundary, max_parts=parsing.max_parts, max_depth=parsing.max_depth
        )
    except MultipartError as exc:
        raise MalformedRequest("body", f"multipart: {exc}") from None


def _grpc_body(ctx: CheckContext, parsing: BodyParsing) -> tuple[Any, bool]:
    if parsing.grpc is None:
        return None, False
    raw = _raw_body(ctx)
    if not raw:
        return None, False
    parsed_path = opa_envoy_parsed_path(ctx)
    if len(parsed_path) != 2:
        raise MalformedRequest("body", "invalid parsed path")
    try:
        result = parsing.grpc.decode(
            raw,
            parsed_path,
            max_depth=parsing.max_depth,
            max_bytes=parsing.max_bytes,
            max_fields=parsing.max_fields,
        )
    except GrpcBodyError as exc:
        raise MalformedRequest("body", f"gRPC: {exc}") from None
    if result is TRUNCATED:
        return None, True
    return result.value, False


def check_parsable(ctx: CheckContext, parsing: BodyParsing = DEFAULT_BODY_PARSING) -> None:
    """Raise ``MalformedRequest`` where the plugin fails to build its input (it always builds
    it, whatever the policy reads); the body is parsed once and kept for the document."""
    opa_envoy_parsed_path(ctx)
    opa_envoy_parsed_query(ctx)
    opa_envoy_body(ctx, parsing)

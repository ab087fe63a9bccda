"""The OPA-Envoy input document, so that existing OPA-Envoy Rego policies run unchanged.

Shape (as OPA's Envoy plugin gives it): ``attributes`` in protojson camelCase (zero values
omitted, int64 as strings), ``parsed_path``, ``parsed_query``, ``parsed_body`` (JSON and form
bodies), ``truncated_body`` and ``version``. Built by hand, not with MessageToDict: that
costs five times as much, and the document is built only when a policy asks for it.

The document is described member by member (``_CHECK_REQUEST_DOCUMENT`` for a check that came
over gRPC, ``_CONTEXT_DOCUMENT`` for one that came over HTTP), each member computed by its own
getter. ``input_document`` builds every member; ``pruned_input_document`` only those at the
paths a Rego policy reads, so that a policy reading ``input.attributes.request.http.method``
never has the headers, peers, time or metadata converted from the CheckRequest.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, unquote

from authd.check.bounded_json import loads_bounded
from authd.check.model import CheckContext
from authd.check.opa_envoy_input import (
    opa_envoy_body,
    opa_envoy_parsed_path,
    opa_envoy_parsed_query,
)

VERSION = {"encoding": "protojson", "ext_authz": "v3"}
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"


def parsed_path(path: str) -> list[str]:
    """'/orders/42?x=1' → ['orders', '42'] (segments URL-decoded, as OPA-Envoy does).

    The document gives it the normalised path (``CheckContext.normalized_path``), so
    ``/public/../orders`` is ``['orders']``; ``attributes.request.http.path`` stays as sent.
    """
    path_only = path.split("?", 1)[0].split("#", 1)[0]
    return [unquote(segment) for segment in path_only.lstrip("/").split("/")]


def parsed_body(ctx: CheckContext) -> Any:
    """The body as JSON or form fields when its content type says so, else None.

    JSON is parsed within ``bounded_json``'s limits: a body too large, too deeply nested or
    not JSON gives None, as OPA-Envoy gives no ``parsed_body`` for a body it cannot parse.
    """
    if not ctx.body or ctx.truncated_body:
        return None
    content_type = ctx.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    try:
        if content_type == "application/json" or content_type.endswith("+json"):
            return loads_bounded(ctx.body)
        if content_type == "application/x-www-form-urlencoded":
            return parse_qs(ctx.body.decode("utf-8"), keep_blank_values=True)
    except (ValueError, UnicodeDecodeError):
        return None
    return None


@dataclass(frozen=True, slots=True)
class _Object:
    """A member that is a JSON object, always present, with members of its own.

    ``source`` turns the parent's source (a CheckContext, a CheckRequest's attributes, ...) into
    the one this object's getters read.
    """

    source: Callable[[Any], Any]
    members: _Members


# Each member's getter gives its value from the source, or None when the member is absent.
_Members = Mapping[str, Callable[[Any], Any] | _Object]


# A getter's value for a member that is present and JSON null (None means absent).
NULL: Final[Any] = object()


def _build(members: _Members, source: Any) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, member in members.items():
        if isinstance(member, _Object):
            document[name] = _build(member.members, member.source(source))
        else:
            value = member(source)
            if value is not None:
                document[name] = None if value is NULL else value
    return document


def _same(source: Any) -> Any:
    return source


# --- from an envoy.service.auth.v3.CheckRequest (protojson: zero values are absent) ----------


def _address(address: Any) -> dict[str, Any]:
    socket_address = address.socket_address
    result: dict[str, Any] = {}
    if socket_address.address:
        result["address"] = socket_address.address
    if socket_address.port_value:
        result["portValue"] = socket_address.port_value
    return {"socketAddress": result} if result else {}


def _peer(peer: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if peer.HasField("address"):
        result["address"] = _address(peer.address)
    if peer.service:
        result["service"] = peer.service
    if peer.labels:
        result["labels"] = dict(peer.labels)
    if peer.principal:
        result["principal"] = peer.principal
    if peer.certificate:
        result["certificate"] = peer.certificate
    return result


def _metadata(metadata: Any) -> dict[str, Any]:
    if not metadata.filter_metadata:
        return {}
    from google.protobuf.json_format import MessageToDict

    return {"filterMetadata": MessageToDict(metadata)["filterMetadata"]}


def check_request_headers(http: Any) -> dict[str, str] | None:
    """The request's headers: ``headers``, else ``header_map`` (raw values as UTF-8); or None."""
    if http.headers:
        return dict(http.headers)
    if http.HasField("header_map"):
        return {
            h.key: h.value or h.raw_value.decode("utf-8", "replace")
            for h in http.header_map.headers
        }
    return None


_CHECK_REQUEST_HTTP: _Members = {
    "id": lambda http: http.id or None,
    "method": lambda http: http.method or None,
    "path": lambda http: http.path or None,
    "host": lambda http: http.host or None,
    "scheme": lambda http: http.scheme or None,
    "query": lambda http: http.query or None,
    "fragment": lambda http: http.fragment or None,
    "protocol": lambda http: http.protocol or None,
    "body": lambda http: http.body or None,
    "headers": check_request_headers,
    "size": lambda http: str(http.size) if http.size else None,
    "rawBody": lambda http: (
        base64.b64encode(http.raw_body).decode("ascii") if http.raw_body else None
    ),
}

_CHECK_REQUEST_ATTRIBUTES: _Members = {
    "request": _Object(
        lambda attributes: attributes.request,
        {
            "http": _Object(lambda request: request.http, _CHECK_REQUEST_HTTP),
            "time": lambda request: (
                request.time.ToJsonString() if request.HasField("time") else None
            ),
        },
    ),
    "source": lambda a: _peer(a.source) if a.HasField("source") else None,
    "destination": lambda a: _peer(a.destination) if a.HasField("destination") else None,
    "contextExtensions": lambda a: dict(a.context_extensions) or None,
    # Envoy always sets it, often empty.
    "metadataContext": lambda a: (
        _metadata(a.metadata_context) if a.HasField("metadata_context") else None
    ),
    "routeMetadataContext": lambda a: (
        _metadata(a.route_metadata_context) if a.HasField("route_metadata_context") else None
    ),
    "tlsSession": lambda a: (
        {"sni": a.tls_session.sni} if a.HasField("tls_session") and a.tls_session.sni else None
    ),
}


# --- from a CheckContext, for a check that came over HTTP service mode -----------------------


def _context_source(ctx: CheckContext) -> dict[str, Any] | None:
    source: dict[str, Any] = {}
    if ctx.source_principal:
        source["principal"] = ctx.source_principal
    if ctx.source_certificate:
        source["certificate"] = ctx.source_certificate
    return source or None


_CONTEXT_HTTP: _Members = {
    "method": lambda ctx: ctx.method,
    "path": lambda ctx: ctx.path,
    "headers": lambda ctx: dict(ctx.headers),
    "host": lambda ctx: ctx.host or None,
    "id": lambda ctx: ctx.request_id or None,
    "protocol": lambda ctx: ctx.protocol or None,
    "scheme": lambda ctx: ctx.scheme or None,
    "body": lambda ctx: ctx.body.decode("utf-8", "replace") if ctx.body else None,
    "size": lambda ctx: str(len(ctx.body)) if ctx.body else None,
}

_CONTEXT_ATTRIBUTES: _Members = {
    "request": _Object(_same, {"http": _Object(_same, _CONTEXT_HTTP)}),
    "metadataContext": lambda ctx: {},
    "source": _context_source,
    "contextExtensions": lambda ctx: dict(ctx.context_extensions) or None,
}


# --- the whole document ---------------------------------------------------------------------

_PARSED: _Members = {
    "parsed_path": lambda ctx: parsed_path(ctx.normalized_path),
    "parsed_query": lambda ctx: ctx.query,
    "truncated_body": lambda ctx: ctx.truncated_body,
    "version": lambda ctx: VERSION,
    "parsed_body": parsed_body,
}
_CHECK_REQUEST_DOCUMENT: _Members = {
    "attributes": _Object(lambda ctx: ctx.check_request.attributes, _CHECK_REQUEST_ATTRIBUTES),
    **_PARSED,
}
_CONTEXT_DOCUMENT: _Members = {"attributes": _Object(_same, _CONTEXT_ATTRIBUTES), **_PARSED}

# authz.policy_compat = "opa-envoy": the members as the plugin parses them.
_OPA_ENVOY_PARSED: _Members = {
    "parsed_path": opa_envoy_parsed_path,
    "parsed_query": opa_envoy_parsed_query,
    "parsed_body": lambda ctx: _body_member(ctx, 0),
    "truncated_body": lambda ctx: _body_member(ctx, 1),
    "version": lambda ctx: VERSION,
    "source_principal": lambda ctx: ctx.source_principal or None,
}
_OPA_ENVOY_CHECK_REQUEST_DOCUMENT: _Members = {
    **_CHECK_REQUEST_DOCUMENT,
    **_OPA_ENVOY_PARSED,
}
_OPA_ENVOY_CONTEXT_DOCUMENT: _Members = {**_CONTEXT_DOCUMENT, **_OPA_ENVOY_PARSED}


def _body_member(ctx: CheckContext, index: int) -> Any:
    """``parsed_body`` (0) or ``truncated_body`` (1); absent when body parsing is skipped."""
    body = opa_envoy_body(ctx)
    return None if body is None else _null(body[index])


def _null(value: Any) -> Any:
    return NULL if value is None else value


def _document_members(ctx: CheckContext, opa_envoy: bool = False) -> _Members:
    if opa_envoy:
        if ctx.check_request is None:
            return _OPA_ENVOY_CONTEXT_DOCUMENT
        return _OPA_ENVOY_CHECK_REQUEST_DOCUMENT
    return _CONTEXT_DOCUMENT if ctx.check_request is None else _CHECK_REQUEST_DOCUMENT


def attributes_from_check_request(request: Any) -> dict[str, Any]:
    """``input.attributes`` from an envoy.service.auth.v3.CheckRequest."""
    return _build(_CHECK_REQUEST_ATTRIBUTES, request.attributes)


def attributes_from_context(ctx: CheckContext) -> dict[str, Any]:
    """``input.attributes`` for a check that came over HTTP service mode (no CheckRequest)."""
    return _build(_CONTEXT_ATTRIBUTES, ctx)


def input_document(ctx: CheckContext, opa_envoy: bool = False) -> dict[str, Any]:
    """The whole OPA-Envoy input for ``ctx`` (``opa_envoy``: parsed as the plugin does)."""
    return _build(_document_members(ctx, opa_envoy), ctx)


# --- only the parts at given paths ----------------------------------------------------------

_MISSING: Final[Any] = object()


def pruned_input_document(
    ctx: CheckContext,
    paths: Sequence[tuple[str, ...]],
    extra: Mapping[str, Callable[[], Any]] | None = None,
    opa_envoy: bool = False,
) -> dict[str, Any]:
    """What ``prune_input(whole, paths)`` gives, computing only that.

    ``whole`` is ``input_document(ctx)`` with each ``extra`` member set to what its function
    returns (the pipeline adds ``authd`` so); a function is called only if a path starts with
    its name. Only the members on the way to ``paths`` are computed, each once; a path
    through a missing key or a non-object is left out, as there.
    """
    return _assemble(paths, _Lookup(ctx, extra or {}, opa_envoy).value_at)


def prune_input(document: Mapping[str, Any], paths: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    """The parts of ``document`` at ``paths`` (and nothing else), in the same nesting."""
    return _assemble(paths, lambda path: _walk(document, path, 0))


def _assemble(
    paths: Sequence[tuple[str, ...]], value_at: Callable[[tuple[str, ...]], Any]
) -> dict[str, Any]:
    """The values at ``paths`` (those not ``_MISSING``), nested as the paths say."""
    pruned: dict[str, Any] = {}
    for path in paths:
        value = value_at(path)
        if value is _MISSING:
            continue
        target = pruned
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return pruned


class _Lookup:
    """Values at paths of one document, computing only the members on the way, each once."""

    __slots__ = ("_computed", "_ctx", "_extra", "_members")

    def __init__(
        self, ctx: CheckContext, extra: Mapping[str, Callable[[], Any]], opa_envoy: bool
    ) -> None:
        self._ctx = ctx
        self._extra = extra
        self._members = _document_members(ctx, opa_envoy)
        self._computed: dict[tuple[str, ...], Any] = {}  # getter results by member path

    def value_at(self, path: tuple[str, ...]) -> Any:
        """The whole document's value at ``path``, or ``_MISSING`` where it has none."""
        extra = self._extra.get(path[0])
        if extra is not None:
            return _walk(self._compute(path[:1], extra), path, 1)
        members, source = self._members, self._ctx
        for depth, name in enumerate(path):
            member = members.get(name)
            if member is None:
                return _MISSING
            if not isinstance(member, _Object):
                value = self._compute(path[: depth + 1], member, source)
                if value is NULL:
                    return None if depth + 1 == len(path) else _MISSING
                return _MISSING if value is None else _walk(value, path, depth + 1)
            members, source = member.members, member.source(source)
        return _build(members, source)  # the path ends at an object: all of it

    def _compute(self, key: tuple[str, ...], getter: Callable[..., Any], *source: Any) -> Any:
        value = self._computed.get(key, _MISSING)
        if value is _MISSING:
            value = self._computed[key] = getter(*source)
        return value


def _walk(value: Any, path: tuple[str, ...], depth: int) -> Any:
    """The value at ``path[depth:]`` below ``value``, or ``_MISSING``, as prune_input walks."""
    for key in path[depth:]:
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value

"""The OPA-Envoy input document, so that existing OPA-Envoy Rego policies run unchanged.

Shape (as OPA's Envoy plugin gives it): ``attributes`` in protojson camelCase (zero values
omitted, int64 as strings), ``parsed_path``, ``parsed_query``, ``parsed_body`` (JSON and form
bodies), ``truncated_body`` and ``version``. Built by hand, not with MessageToDict: that
costs five times as much, and the document is built only when a policy asks for it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, unquote

from authd.authz.model import CheckContext

VERSION = {"encoding": "protojson", "ext_authz": "v3"}
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"


def parsed_path(path: str) -> list[str]:
    """'/orders/42?x=1' → ['orders', '42'] (segments URL-decoded, as OPA-Envoy does)."""
    path_only = path.split("?", 1)[0].split("#", 1)[0]
    return [unquote(segment) for segment in path_only.lstrip("/").split("/")]


def parsed_body(ctx: CheckContext) -> Any:
    """The body as JSON or form fields when its content type says so, else None."""
    if not ctx.body or ctx.truncated_body:
        return None
    content_type = ctx.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    try:
        if content_type == "application/json" or content_type.endswith("+json"):
            return json.loads(ctx.body)
        if content_type == "application/x-www-form-urlencoded":
            return parse_qs(ctx.body.decode("utf-8"), keep_blank_values=True)
    except (ValueError, UnicodeDecodeError):
        return None
    return None


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


def attributes_from_check_request(request: Any) -> dict[str, Any]:
    """``input.attributes`` from an envoy.service.auth.v3.CheckRequest."""
    attributes = request.attributes
    http = attributes.request.http
    http_doc: dict[str, Any] = {}
    for name in ("id", "method", "path", "host", "scheme", "query", "fragment", "protocol", "body"):
        value = getattr(http, name)
        if value:
            http_doc[name] = value
    if http.headers:
        http_doc["headers"] = dict(http.headers)
    elif http.HasField("header_map"):
        http_doc["headers"] = {
            h.key: h.value or h.raw_value.decode("utf-8", "replace")
            for h in http.header_map.headers
        }
    if http.size:
        http_doc["size"] = str(http.size)
    if http.raw_body:
        import base64

        http_doc["rawBody"] = base64.b64encode(http.raw_body).decode("ascii")
    request_doc: dict[str, Any] = {"http": http_doc}
    if attributes.request.HasField("time"):
        request_doc["time"] = attributes.request.time.ToJsonString()
    doc: dict[str, Any] = {"request": request_doc}
    if attributes.HasField("source"):
        doc["source"] = _peer(attributes.source)
    if attributes.HasField("destination"):
        doc["destination"] = _peer(attributes.destination)
    if attributes.context_extensions:
        doc["contextExtensions"] = dict(attributes.context_extensions)
    if attributes.HasField("metadata_context"):  # Envoy always sets it, often empty
        doc["metadataContext"] = _metadata(attributes.metadata_context)
    if attributes.HasField("route_metadata_context"):
        doc["routeMetadataContext"] = _metadata(attributes.route_metadata_context)
    if attributes.HasField("tls_session") and attributes.tls_session.sni:
        doc["tlsSession"] = {"sni": attributes.tls_session.sni}
    return doc


def attributes_from_context(ctx: CheckContext) -> dict[str, Any]:
    """``input.attributes`` for a check that came over HTTP service mode (no CheckRequest)."""
    http: dict[str, Any] = {"method": ctx.method, "path": ctx.path, "headers": dict(ctx.headers)}
    if ctx.host:
        http["host"] = ctx.host
    if ctx.request_id:
        http["id"] = ctx.request_id
    if ctx.protocol:
        http["protocol"] = ctx.protocol
    if ctx.scheme:
        http["scheme"] = ctx.scheme
    if ctx.body:
        http["body"] = ctx.body.decode("utf-8", "replace")
        http["size"] = str(len(ctx.body))
    source: dict[str, Any] = {}
    if ctx.source_principal:
        source["principal"] = ctx.source_principal
    if ctx.source_certificate:
        source["certificate"] = ctx.source_certificate
    doc: dict[str, Any] = {"request": {"http": http}, "metadataContext": {}}
    if source:
        doc["source"] = source
    if ctx.context_extensions:
        doc["contextExtensions"] = dict(ctx.context_extensions)
    return doc


def input_document(ctx: CheckContext) -> dict[str, Any]:
    """The whole OPA-Envoy input for ``ctx``."""
    if ctx.check_request is not None:
        attributes = attributes_from_check_request(ctx.check_request)
    else:
        attributes = attributes_from_context(ctx)
    document: dict[str, Any] = {
        "attributes": attributes,
        "parsed_path": parsed_path(ctx.path),
        "parsed_query": ctx.query,
        "truncated_body": ctx.truncated_body,
        "version": VERSION,
    }
    body = parsed_body(ctx)
    if body is not None:
        document["parsed_body"] = body
    return document

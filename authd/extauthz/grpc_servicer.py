"""ext_authz over gRPC: envoy.service.auth.v3.Authorization/Check as a thin adapter.

CheckRequest → CheckContext → Authorizer → CheckResponse. A failure inside the handler never
looks like a deny: it is logged with its traceback, counted, and answered as a gRPC error so
Envoy's ``status_on_error`` / ``failure_mode_allow`` decide.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from authd.authz.metrics import AuthzMetrics
from authd.authz.pipeline import UNAUTHENTICATED, Authorizer
from authd.check.header_values import is_field_value, is_token
from authd.check.input_document import check_request_headers
from authd.check.model import CheckContext, EnvoyResponse, Outcome
from authd.policy.base import PolicyError

log = logging.getLogger(__name__)

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK = status_pb2.Status(code=code_pb2.OK)
_DENIED = status_pb2.Status(code=code_pb2.PERMISSION_DENIED)
_UNAUTHENTICATED = status_pb2.Status(code=code_pb2.UNAUTHENTICATED)


_NO_EXTENSIONS: Mapping[str, str] = {}


def context_from_check_request(request: Any) -> CheckContext:
    attributes = request.attributes
    http = attributes.request.http
    source = attributes.source
    address = source.address.socket_address
    # The message's own map (a read-only Mapping to everything after): not copied per check.
    headers: Mapping[str, str] = http.headers
    if not headers:
        headers = check_request_headers(http) or {}
    body = http.raw_body or http.body.encode("utf-8")
    # Most routes set none: a plain empty dict then answers the pipeline's few lookups
    # faster than the message's map.
    extensions: Mapping[str, str] = attributes.context_extensions or _NO_EXTENSIONS
    return CheckContext(
        method=http.method,
        host=http.host,
        path=http.path,
        headers=headers,
        body=body,
        truncated_body=headers.get("x-envoy-auth-partial-body") == "true",
        source_principal=source.principal,
        source_certificate=source.certificate,
        source_address=f"{address.address}:{address.port_value}" if address.address else "",
        destination_principal=attributes.destination.principal,
        context_extensions=extensions,
        protocol=http.protocol,
        scheme=http.scheme,
        request_id=http.id,
        transport="grpc",
        check_request=request,
    )


_HEADER_CACHE_SIZE = 1024
# Header options seen recently (the caller's SPIFFE ID, say), built once: a message is copied
# into the response, so sharing one is safe. Unique values (decision ids) are not kept.
_header_options: dict[tuple[str, str], base_pb2.HeaderValueOption] = {}


def _header_option(key: str, value: str) -> base_pb2.HeaderValueOption:
    # The pipeline made every header sendable (authd.check.header_values.sendable_outcome),
    # the same bytes as HTTP mode sends.
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )


def _headers(headers: dict[str, str], unique: str = "") -> list[base_pb2.HeaderValueOption]:
    options = []
    for key, value in headers.items():
        if value == unique:
            options.append(_header_option(key, value))
            continue
        option = _header_options.get((key, value))
        if option is None:
            if len(_header_options) >= _HEADER_CACHE_SIZE:
                _header_options.clear()
            option = _header_options[(key, value)] = _header_option(key, value)
        options.append(option)
    return options


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    """``values`` as a Struct; strings are set directly (Struct.update is slower)."""
    struct = struct_pb2.Struct()
    fields = struct.fields
    rest = {}
    for key, value in values.items():
        if type(value) is str:
            fields[key].string_value = value
        else:
            rest[key] = value
    if rest:
        struct.update(rest)
    return struct


def _plain_options(
    pairs: tuple[tuple[str, str], ...],
) -> list[base_pb2.HeaderValueOption]:
    """Header options as the OPA-Envoy plugin builds them: no append action (Envoy adds)."""
    options = []
    for key, value in pairs:
        if not (is_token(key) and is_field_value(value)):
            raise ValueError(f"unsendable header {key[:64]!r}")
        options.append(
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
        )
    return options


def _opa_envoy_check_response(
    outcome: Outcome, envoy: EnvoyResponse
) -> external_auth_pb2.CheckResponse:
    """The CheckResponse the OPA-Envoy plugin sends, plus the extras authd was asked for."""
    response = external_auth_pb2.CheckResponse(
        status=_OK if outcome.allowed else _DENIED,
        dynamic_metadata=_struct(outcome.dynamic_metadata),
    )
    extras = outcome.upstream_headers if outcome.allowed else outcome.deny_headers
    if envoy.form == "boolean" and not extras and not outcome.remove_headers:
        return response  # no ok_response / denied_response: Envoy's defaults (403 on deny)
    if outcome.allowed:
        ok = response.ok_response
        ok.SetInParent()
        ok.headers.extend(_plain_options(envoy.headers))
        ok.headers.extend(_headers(extras, outcome.decision_id))
        ok.headers_to_remove.extend([*envoy.request_headers_to_remove, *outcome.remove_headers])
        ok.response_headers_to_add.extend(_plain_options(envoy.response_headers_to_add))
        ok.query_parameters_to_set.extend(
            base_pb2.QueryParameter(key=k, value=v) for k, v in envoy.query_parameters_to_set
        )
        ok.query_parameters_to_remove.extend(envoy.query_parameters_to_remove)
        return response
    denied = response.denied_response
    denied.status.code = outcome.status
    denied.headers.extend(_plain_options(envoy.headers))
    denied.headers.extend(_headers(extras, outcome.decision_id))
    denied.body = outcome.deny_body
    return response


_RESPONSE_CACHE_SIZE = 256
# The allow answers seen recently, by all they hold but the decision id (the caller, the rule,
# the names to remove): built once, then copied with the check's own decision id set in.
_allow_responses: dict[tuple[Any, ...], external_auth_pb2.CheckResponse] = {}


def _allow_key(outcome: Outcome) -> tuple[Any, ...] | None:
    """What an allow answer is made of, but its decision id; None when it is not the usual
    shape: the decision id the first header and the first metadata value and nowhere else,
    every other metadata value a string authd set (no policy metadata, no dry run), no
    Txn-Token, no response headers or query changes from the policy."""
    decision = outcome.decision
    if (
        outcome.txn
        or decision.dynamic_metadata
        or decision.response_headers_to_add
        or decision.query_parameters_to_set
        or decision.query_parameters_to_remove
    ):
        return None
    decision_id = outcome.decision_id
    headers = tuple(outcome.upstream_headers.items())
    metadata = tuple(outcome.dynamic_metadata.items())
    if (
        not headers
        or headers[0][1] != decision_id
        or metadata[:1] != (("decision_id", decision_id),)
        or "dry_run_would_deny" in outcome.dynamic_metadata
        or decision_id in tuple(outcome.upstream_headers.values())[1:]
    ):
        return None
    return headers[0][0], headers[1:], tuple(outcome.remove_headers), metadata[1:]


def _cached_allow(outcome: Outcome) -> external_auth_pb2.CheckResponse:
    """``check_response`` of an allow, from the template of its key when there is one."""
    key = _allow_key(outcome)
    if key is None:
        return _check_response(outcome)
    template = _allow_responses.get(key)
    if template is None:
        if len(_allow_responses) >= _RESPONSE_CACHE_SIZE:
            _allow_responses.clear()
        template = _allow_responses[key] = _check_response(outcome)
    response = external_auth_pb2.CheckResponse()
    response.CopyFrom(template)
    decision_id = outcome.decision_id
    response.ok_response.headers[0].header.value = decision_id
    response.dynamic_metadata.fields["decision_id"].string_value = decision_id
    return response


def check_response(outcome: Outcome) -> external_auth_pb2.CheckResponse:
    if outcome.allowed and outcome.envoy is None:
        return _cached_allow(outcome)
    return _check_response(outcome)


def _check_response(outcome: Outcome) -> external_auth_pb2.CheckResponse:
    if outcome.envoy is not None:
        return _opa_envoy_check_response(outcome, outcome.envoy)
    metadata = _struct(outcome.dynamic_metadata)
    decision = outcome.decision
    if outcome.allowed:
        ok = external_auth_pb2.OkHttpResponse(
            headers=_headers(outcome.upstream_headers, outcome.decision_id),
            headers_to_remove=outcome.remove_headers,
        )
        if decision.response_headers_to_add:
            ok.response_headers_to_add.extend(_headers(decision.response_headers_to_add))
        if decision.query_parameters_to_set:
            ok.query_parameters_to_set.extend(
                base_pb2.QueryParameter(key=k, value=v)
                for k, v in decision.query_parameters_to_set.items()
            )
        if decision.query_parameters_to_remove:
            ok.query_parameters_to_remove.extend(decision.query_parameters_to_remove)
        return external_auth_pb2.CheckResponse(
            status=_OK, ok_response=ok, dynamic_metadata=metadata
        )
    return external_auth_pb2.CheckResponse(
        status=_UNAUTHENTICATED if outcome.status == UNAUTHENTICATED else _DENIED,
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=outcome.status),
            headers=_headers(outcome.deny_headers, outcome.decision_id),
            body=outcome.deny_body,
        ),
        dynamic_metadata=metadata,
    )


class ExtAuthzService(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, authorizer: Authorizer, metrics: AuthzMetrics | None = None) -> None:
        self._authorizer = authorizer
        self._metrics = metrics

    async def Check(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> external_auth_pb2.CheckResponse:
        try:
            outcome = await self._authorizer.check(context_from_check_request(request))
            return check_response(outcome)
        except Exception as exc:
            # A PolicyError (OPA unreachable, say) says all there is to say in one line.
            log.error("ext_authz check failed: %s", exc, exc_info=not isinstance(exc, PolicyError))
            if self._metrics is not None:
                self._metrics.error("grpc")
            await context.abort(
                grpc.StatusCode.INTERNAL, f"authd could not decide: {type(exc).__name__}"
            )
            raise

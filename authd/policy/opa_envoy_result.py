"""Policy results read exactly as the OPA-Envoy plugin reads them (``envoyauth/response.go``).

Used when ``authz.policy_compat = "opa-envoy"``. Unlike ``authd.policy.result`` nothing is
joined or refused that the plugin would send: every header value stays its own header
option, a query parameter may be set several times, and a field is read (and its type
checked) only where the plugin reads it: ``headers`` and ``dynamic_metadata`` always,
``request_headers_to_remove``, ``response_headers_to_add`` and the query mutations on allow,
``body`` and ``http_status`` on deny. A field of the wrong type, or an ``http_status`` that
is not in Envoy's ``type.v3.StatusCode`` enum, is an error for the plugin (its ``Check``
returns a gRPC error, which Envoy answers with ``status_on_error``, 403 by default); here it
is a ``PolicyError``, which the adapters answer the same way.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from envoy.type.v3 import http_status_pb2

from authd.check.model import Decision, EnvoyResponse, Reason
from authd.policy.base import PolicyError
from authd.policy.result import UNDEFINED
from authd.policy.result import json_type_name as _kind

# Envoy's StatusCode enum (0, "Empty", aside); the plugin also requires a status Go names.
_ENVOY_STATUS_CODES = frozenset(code for code in http_status_pb2.StatusCode.values() if code)
_KNOWN_STATUS_CODES = frozenset(status.value for status in HTTPStatus) | {306, 418, 425}
_BOOLEAN_ALLOW = EnvoyResponse(form="boolean")
_BOOLEAN_DENY = EnvoyResponse(form="boolean")

Pairs = tuple[tuple[str, str], ...]


def opa_envoy_decision(result: Any, rule: str) -> Decision:
    """Map a result to a ``Decision`` whose ``envoy`` says what the plugin sends."""
    if result is UNDEFINED:  # the plugin's "undefined decision" error
        raise PolicyError(f"{rule}: undefined decision")
    if isinstance(result, bool):
        reason = Reason.ALLOWED if result else Reason.POLICY_DENIED
        envoy = _BOOLEAN_ALLOW if result else _BOOLEAN_DENY
        return Decision(result, reason, rule=rule, envoy=envoy)
    if not isinstance(result, dict):
        raise PolicyError(f"{rule}: illegal value for policy evaluation result: {_kind(result)}")
    if "allowed" not in result:
        raise PolicyError(f'{rule}: missing "allowed" key in the result')
    allowed = result["allowed"]
    if not isinstance(allowed, bool):
        raise PolicyError(f"{rule}: expected allowed to be a boolean, got {_kind(allowed)}")
    headers = _headers(result, "headers", rule)
    metadata = result.get("dynamic_metadata", {})
    if not isinstance(metadata, dict):
        raise PolicyError(
            f"{rule}: expected dynamic_metadata to be an object, got {_kind(metadata)}"
        )
    decision = Decision(allowed, Reason.ALLOWED if allowed else Reason.POLICY_DENIED, rule=rule)
    if metadata:
        decision.dynamic_metadata = dict(metadata)
    if allowed:
        envoy = EnvoyResponse(
            headers=headers,
            response_headers_to_add=_headers(result, "response_headers_to_add", rule),
            request_headers_to_remove=_strings(result, "request_headers_to_remove", rule),
            query_parameters_to_set=_query_parameters(result, rule),
            query_parameters_to_remove=_strings(result, "query_parameters_to_remove", rule),
        )
    else:
        body = result.get("body", "")
        if not isinstance(body, str):
            raise PolicyError(f"{rule}: expected body to be a string, got {_kind(body)}")
        envoy = EnvoyResponse(headers=headers, body=body, http_status=_http_status(result, rule))
        decision.body = body
        decision.http_status = envoy.http_status
    decision.envoy = envoy
    decision.headers = _joined(headers)
    decision.response_headers_to_add = _joined(envoy.response_headers_to_add)
    decision.request_headers_to_remove = list(envoy.request_headers_to_remove)
    decision.query_parameters_to_set = dict(envoy.query_parameters_to_set)
    decision.query_parameters_to_remove = list(envoy.query_parameters_to_remove)
    return decision


def _joined(pairs: Pairs) -> dict[str, str]:
    """The pairs as one value per name (for the decision log and ``policy eval``)."""
    joined: dict[str, list[str]] = {}
    for name, value in pairs:
        joined.setdefault(name, []).append(value)
    return {name: ", ".join(values) for name, values in joined.items()}


def _headers(result: dict[str, Any], field: str, rule: str) -> Pairs:
    """An object of string or string-array values, or an array of such objects."""
    if field not in result:
        return ()
    value = result[field]
    objects = value if isinstance(value, list) else [value]
    pairs: list[tuple[str, str]] = []
    for headers in objects:
        if not isinstance(headers, dict):
            raise PolicyError(f"{rule}: expected {field} to be an object, got {_kind(headers)}")
        for name, item in headers.items():
            values = item if isinstance(item, list) else [item]
            for one in values:
                if not isinstance(one, str):
                    raise PolicyError(
                        f"{rule}: invalid value type {_kind(one)} for {field} header {name!r}"
                    )
                pairs.append((name, one))
    return tuple(pairs)


def _strings(result: dict[str, Any], field: str, rule: str) -> tuple[str, ...]:
    value = result.get(field)
    if value is None and field not in result:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"{rule}: expected {field} to be an array of strings")
    return tuple(value)


def _query_parameters(result: dict[str, Any], rule: str) -> Pairs:
    if "query_parameters_to_set" not in result:
        return ()
    value = result["query_parameters_to_set"]
    if not isinstance(value, dict):
        raise PolicyError(
            f"{rule}: expected query_parameters_to_set to be an object, got {_kind(value)}"
        )
    pairs: list[tuple[str, str]] = []
    for name, item in value.items():
        values = item if isinstance(item, list) else [item]
        if not all(isinstance(one, str) for one in values):
            raise PolicyError(
                f"{rule}: query_parameters_to_set value of {name!r} must be a string or an "
                "array of strings"
            )
        pairs.extend((name, one) for one in values)
    return tuple(pairs)


def _http_status(result: dict[str, Any], rule: str) -> int:
    if "http_status" not in result:
        return 403
    value = result["http_status"]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{rule}: expected http_status to be a number, got {_kind(value)}")
    if value not in _KNOWN_STATUS_CODES or value not in _ENVOY_STATUS_CODES:
        raise PolicyError(f"{rule}: invalid HTTP status code {value}")
    return value

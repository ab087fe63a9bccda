"""OPA-Envoy policy results (a boolean, or an object) turned into a ``Decision``.

One mapping for the embedded Rego engine and for an OPA server, so a policy written for
OPA-Envoy means the same thing in both. The object form follows OPA-Envoy's
``envoyauth/response.go``: ``allowed`` (required boolean), ``headers`` and
``response_headers_to_add`` (an object of string or list-of-string values, or a list of such
objects), ``request_headers_to_remove`` and ``query_parameters_to_remove`` (lists of strings),
``query_parameters_to_set`` (an object of strings), ``http_status`` (a known HTTP status),
``body`` (a string) and ``dynamic_metadata`` (an object); and authd's own ``txn_scope`` (a
space-separated string or an array of strings: the narrower scope of the Txn-Token sent
upstream on allow). Other keys are ignored, as OPA-Envoy
does. A malformed result is a ``PolicyError``: the policy is broken, not the request.

``Decision`` holds one value per header, so a header given several values is joined with
", " (RFC 9110 5.3), except ``set-cookie``, which cannot be joined and is refused; a query
parameter given several values is refused for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from authd.check.model import Decision, Reason
from authd.policy.base import PolicyError

# A policy result (or UNDEFINED) and its entrypoint → a Decision: this module's mapping, or
# OPA-Envoy's exact one (authd.policy.opa_envoy_result).
ResultMapping = Callable[[Any, str], Decision]
# Given to a ResultMapping when the entrypoint is undefined for the input.
UNDEFINED: Any = object()

_STATUS_CODES = frozenset(status.value for status in HTTPStatus)


def undefined_decision(rule: str) -> Decision:
    """The deny for a policy whose entrypoint is undefined for this input."""
    return Decision(False, Reason.POLICY_DENIED, rule=f"{rule} (undefined)")


def decision_from_result(result: Any, rule: str) -> Decision:
    """Map an OPA-Envoy result to a ``Decision``; ``rule`` names the entrypoint."""
    if result is UNDEFINED:
        return undefined_decision(rule)
    if isinstance(result, bool):
        return Decision(result, Reason.ALLOWED if result else Reason.POLICY_DENIED, rule=rule)
    if not isinstance(result, dict):
        raise PolicyError(
            f"{rule}: result must be a boolean or an object, not {json_type_name(result)}"
        )
    if "allowed" not in result:
        raise PolicyError(f"{rule}: result object has no 'allowed' key")
    allowed = result["allowed"]
    if not isinstance(allowed, bool):
        raise PolicyError(f"{rule}: 'allowed' must be a boolean, not {json_type_name(allowed)}")
    decision = Decision(allowed, Reason.ALLOWED if allowed else Reason.POLICY_DENIED, rule=rule)
    if "headers" in result:
        decision.headers = _headers(result["headers"], "headers", rule)
    if "response_headers_to_add" in result:
        decision.response_headers_to_add = _headers(
            result["response_headers_to_add"], "response_headers_to_add", rule
        )
    if "request_headers_to_remove" in result:
        decision.request_headers_to_remove = _strings(
            result["request_headers_to_remove"], "request_headers_to_remove", rule
        )
    if "query_parameters_to_remove" in result:
        decision.query_parameters_to_remove = _strings(
            result["query_parameters_to_remove"], "query_parameters_to_remove", rule
        )
    if "query_parameters_to_set" in result:
        decision.query_parameters_to_set = _query_parameters(
            result["query_parameters_to_set"], rule
        )
    if "http_status" in result:
        decision.http_status = _http_status(result["http_status"], rule)
    if "body" in result:
        body = result["body"]
        if not isinstance(body, str):
            raise PolicyError(f"{rule}: 'body' must be a string, not {json_type_name(body)}")
        decision.body = body
    if "dynamic_metadata" in result:
        metadata = result["dynamic_metadata"]
        if not isinstance(metadata, dict):
            raise PolicyError(
                f"{rule}: 'dynamic_metadata' must be an object, not {json_type_name(metadata)}"
            )
        decision.dynamic_metadata = metadata
    if "txn_scope" in result:
        scope = result["txn_scope"]
        if isinstance(scope, str):
            scope = scope.split()
        decision.txn_scope = tuple(_strings(scope, "txn_scope", rule))
    return decision


def json_type_name(value: Any) -> str:
    """The JSON type of a policy's value, as OPA names it in its messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _headers(value: Any, field: str, rule: str) -> dict[str, str]:
    objects = value if isinstance(value, list) else [value]
    collected: dict[str, list[str]] = {}
    for headers in objects:
        if not isinstance(headers, dict):
            raise PolicyError(
                f"{rule}: {field!r} must be an object (or an array of objects), "
                f"not {json_type_name(headers)}"
            )
        for name, header_value in headers.items():
            values = header_value if isinstance(header_value, list) else [header_value]
            for item in values:
                if not isinstance(item, str):
                    raise PolicyError(
                        f"{rule}: {field!r} header {name!r} must be a string or an array of "
                        f"strings, not {json_type_name(item)}"
                    )
            collected.setdefault(name, []).extend(values)
    joined: dict[str, str] = {}
    for name, values in collected.items():
        if len(values) > 1 and name.lower() == "set-cookie":
            raise PolicyError(
                f"{rule}: {field!r} gives several set-cookie values; only one is supported"
            )
        joined[name] = ", ".join(values)
    return joined


def _strings(value: Any, field: str, rule: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"{rule}: {field!r} must be an array of strings")
    return list(value)


def _query_parameters(value: Any, rule: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise PolicyError(
            f"{rule}: 'query_parameters_to_set' must be an object, not {json_type_name(value)}"
        )
    parameters: dict[str, str] = {}
    for name, item in value.items():
        if isinstance(item, list) and len(item) == 1:
            item = item[0]
        if not isinstance(item, str):
            raise PolicyError(
                f"{rule}: 'query_parameters_to_set' value of {name!r} must be one string, "
                f"not {json_type_name(item)}"
            )
        parameters[name] = item
    return parameters


def _http_status(value: Any, rule: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{rule}: 'http_status' must be a number, not {json_type_name(value)}")
    if value not in _STATUS_CODES:
        raise PolicyError(f"{rule}: 'http_status' {value} is not a known HTTP status")
    return value

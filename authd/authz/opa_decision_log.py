"""A decision event in OPA's format (OPA's ``EventV1``), as the OPA-Envoy plugin logs it.

Keys in OPA's order: ``labels`` (``id``, ``version`` and the configured ones),
``decision_id``, ``bundles`` (``{name: {"revision": ...}}`` when known), ``path`` (the
entrypoint, ``envoy/authz/allow``), ``input``, ``result`` (what the policy returned; absent
with ``error``), ``erased``/``masked`` (added by masking), ``error``, ``requested_by``,
``timestamp`` (RFC 3339 with nanoseconds, as Go writes it) and ``metrics`` (``timer_*_ns``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

__all__ = ["decision_event", "mask_input", "rfc3339_nanos"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def rfc3339_nanos(unix_ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction dropped."""
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    moment = _EPOCH + dt.timedelta(seconds=seconds)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


def decision_event(
    *,
    decision_id: str,
    path: str,
    input_document: Any,
    result: Any,
    timestamp_ns: int,
    labels: Mapping[str, str],
    bundles: Mapping[str, str] | None = None,
    requested_by: str = "",
    error: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The event before masking and metrics (what ``system.log.drop`` and ``mask`` see)."""
    event: dict[str, Any] = {"labels": dict(labels), "decision_id": decision_id}
    if bundles:
        event["bundles"] = {name: {"revision": rev} for name, rev in bundles.items()}
    if path:
        event["path"] = path
    event["input"] = input_document
    if error is not None:
        event["error"] = dict(error)
    else:
        event["result"] = result
    if requested_by:
        event["requested_by"] = requested_by
    event["timestamp"] = rfc3339_nanos(timestamp_ns)
    return event


def mask_input(event: Mapping[str, Any]) -> dict[str, Any]:
    """What the drop and mask rules get as ``input``: the event as OPA gives it to them,
    without metrics and error (OPA adds those after deciding to keep the event)."""
    return {k: v for k, v in event.items() if k not in ("metrics", "error")}


def with_metrics(event: dict[str, Any], metrics: Mapping[str, int]) -> dict[str, Any]:
    """The event with its ``metrics``, keys in OPA's order (after ``timestamp``)."""
    if metrics:
        event["metrics"] = dict(metrics)
    order = (
        "labels",
        "decision_id",
        "bundles",
        "path",
        "input",
        "result",
        "erased",
        "masked",
        "error",
        "requested_by",
        "timestamp",
        "metrics",
    )
    return {key: event[key] for key in order if key in event}

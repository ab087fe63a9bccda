"""[decision_logs]: decision logs in OPA's format, and the same settings from an OPA config.

``DecisionLogSettings`` is what the OPA-format decision logger (``authd.authz.opa_log_sink``)
runs on. It comes from authd's own ``[decision_logs]`` section (``authd.config.keys``) or,
through ``decision_log_settings_from_opa``, from the ``decision_logs`` section of the config
file an operator runs OPA with (with its ``services``), following OPA's own defaults and
refusals (plugins/logs ``validateAndInjectDefaults``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authd.config.errors import ConfigError

__all__ = [
    "DEFAULT_RESOURCE",
    "DecisionLogSettings",
    "decision_log_settings_from_opa",
    "parse_data_path",
    "parse_labels",
    "parse_service_url",
]

DEFAULT_RESOURCE = "/logs"
_OPA_SOURCE = "OPA config"
_UPLOAD_LIMIT = 32768  # OPA's default
_BUFFER_LIMIT = 16 * 1024 * 1024  # OPA's is unlimited; every buffer here has a bound


@dataclass(frozen=True, slots=True)
class DecisionLogSettings:
    """Where OPA-format decision events go, how they are batched, and which rules mask them.

    Delays are seconds, sizes bytes. A bound of every buffer is always set: OPA's unlimited
    default buffer becomes ``buffer_size_limit_bytes`` here.
    """

    file: str = ""  # JSON lines, one event each, file mode 0600; "" writes none
    console: bool = False  # each event also on standard output, as OPA's console logger
    service_url: str = ""  # the log service's base URL; "" uploads nothing
    # Headers on every upload (a bearer token from the service's credentials): never logged.
    service_headers: tuple[tuple[str, str], ...] = ()
    service_token_path: str = ""  # a file whose content is the bearer token, read at start
    service_token_scheme: str = "Bearer"  # noqa: S105 (a scheme name, not a secret)
    resource: str = DEFAULT_RESOURCE
    min_delay_seconds: float = 300.0
    max_delay_seconds: float = 600.0
    upload_size_limit_bytes: int = _UPLOAD_LIMIT  # gzip-compressed size of one POST
    buffer_size_limit_bytes: int = _BUFFER_LIMIT  # compressed chunks waiting for upload
    queue_size: int = 10000  # decided checks waiting for the log writer
    max_decisions_per_second: float = 0.0  # 0: no rate limit
    mask_decision: str = "system/log/mask"
    drop_decision: str = "system/log/drop"
    labels: tuple[tuple[str, str], ...] = ()  # besides id and version

    @property
    def enabled(self) -> bool:
        return bool(self.file or self.console or self.service_url)

    @property
    def upload_url(self) -> str:
        """The URL events are POSTed to: the service URL joined with the resource, as OPA."""
        if not self.service_url:
            return ""
        return self.service_url.rstrip("/") + "/" + self.resource.lstrip("/")

    def problem(self) -> tuple[str, str] | None:
        """The (key, why) of the first rule relating several keys that does not hold."""
        if self.max_delay_seconds < self.min_delay_seconds:
            return "decision_logs.max_delay_seconds", "must be >= min_delay_seconds"
        if self.buffer_size_limit_bytes < self.upload_size_limit_bytes:
            return "decision_logs.buffer_size_limit_bytes", "must be >= upload_size_limit_bytes"
        return None


def parse_labels(value: object) -> tuple[tuple[str, str], ...]:
    """A table of string labels (``id`` and ``version`` are authd's own)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a table of strings, not {type(value).__name__}")
    labels = []
    for name, text in value.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise ValueError(f"label {name!r} must be a string")
        if name in ("id", "version"):
            raise ValueError(f"label {name!r} is set by authd")
        labels.append((name, text))
    return tuple(labels)


def parse_service_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    if value and not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, not {value!r}")
    return value


def parse_data_path(value: object) -> str:
    """``/system/log/mask``, ``system/log/mask`` or ``data.system.log.mask``, as a path."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    text = value.strip()
    if text.startswith("data.") or (text and "/" not in text and "." in text):
        text = text.removeprefix("data.").replace(".", "/")
    parts = [p for p in text.split("/") if p]
    if not parts or not all(p.replace("_", "a").isalnum() for p in parts):
        raise ValueError(f"must be a data path such as /system/log/mask, not {value!r}")
    return "/".join(parts)


def _number(section: Mapping[str, Any], key: str, *, integer: bool) -> float | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"decision_logs.reporting.{key}", "must be a number", _OPA_SOURCE)
    if integer and value != int(value):
        raise ConfigError(f"decision_logs.reporting.{key}", "must be an integer", _OPA_SOURCE)
    return float(value)


def _services(services: Any) -> dict[str, Mapping[str, Any]]:
    """OPA's ``services``: a map of name to service, or a list of services with ``name``."""
    if services is None:
        return {}
    if isinstance(services, Mapping):
        items = list(services.items())
    elif isinstance(services, list):
        items = [(s.get("name", ""), s) for s in services if isinstance(s, Mapping)]
    else:
        raise ConfigError("services", "must be a map or a list", _OPA_SOURCE)
    named: dict[str, Mapping[str, Any]] = {}
    for name, service in items:
        if not isinstance(name, str) or not isinstance(service, Mapping):
            raise ConfigError("services", f"service {name!r} must be an object", _OPA_SOURCE)
        named[name] = service
    return named


def _service_access(name: str, service: Mapping[str, Any]) -> dict[str, Any]:
    key = f"services.{name}"
    try:
        url = parse_service_url(service.get("url", ""))
    except ValueError as exc:
        raise ConfigError(f"{key}.url", str(exc), _OPA_SOURCE) from None
    if not url:
        raise ConfigError(f"{key}.url", "is required", _OPA_SOURCE)
    headers = service.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError(f"{key}.headers", "must be a map of strings", _OPA_SOURCE)
    access: dict[str, Any] = {"service_url": url, "service_headers": tuple(headers.items())}
    credentials = service.get("credentials") or {}
    if not isinstance(credentials, Mapping):
        raise ConfigError(f"{key}.credentials", "must be an object", _OPA_SOURCE)
    for kind, value in credentials.items():
        if kind != "bearer":
            why = f"{kind!r} credentials are not supported for decision logs (bearer only)"
            raise ConfigError(f"{key}.credentials", why, _OPA_SOURCE)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}.credentials.bearer", "must be an object", _OPA_SOURCE)
        scheme = value.get("scheme", "Bearer")
        token, token_path = value.get("token", ""), value.get("token_path", "")
        if not all(isinstance(v, str) for v in (scheme, token, token_path)):
            raise ConfigError(f"{key}.credentials.bearer", "must hold strings", _OPA_SOURCE)
        access["service_token_scheme"] = scheme
        if token_path:
            access["service_token_path"] = token_path
        elif token:
            access["service_headers"] += (("authorization", f"{scheme} {token}"),)
    return access


def decision_log_settings_from_opa(
    mapping: dict[str, Any],
    services: dict[str, Any],
    *,
    labels: Mapping[str, str] | None = None,
) -> DecisionLogSettings:
    """The settings an OPA config's ``decision_logs`` section (with its ``services``) means.

    As OPA: with no ``service`` the first service is used unless ``console`` is on, a named
    service must exist, ``min_delay_seconds`` and ``max_delay_seconds`` come together,
    ``partition_name`` makes the resource ``/logs/<name>``. OPA's top-level ``labels`` may
    be given as ``labels``. What authd cannot do (``plugin``, ``trigger: manual``,
    credentials other than a bearer token) is refused with a ConfigError naming the key.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError("decision_logs", "must be an object", _OPA_SOURCE)
    named = _services(services)
    if mapping.get("plugin") is not None:
        why = "custom decision log plugins are not supported"
        raise ConfigError("decision_logs.plugin", why, _OPA_SOURCE)
    console = mapping.get("console", False)
    if not isinstance(console, bool):
        raise ConfigError("decision_logs.console", "must be true or false", _OPA_SOURCE)
    values: dict[str, Any] = {"console": console}
    service = mapping.get("service", "")
    if not isinstance(service, str):
        raise ConfigError("decision_logs.service", "must be a string", _OPA_SOURCE)
    if not service and named and not console:
        service = next(iter(named))
    if service:
        if service not in named:
            why = f"invalid service name {service!r} in decision_logs"
            raise ConfigError("decision_logs.service", why, _OPA_SOURCE)
        values.update(_service_access(service, named[service]))
    reporting = mapping.get("reporting") or {}
    if not isinstance(reporting, Mapping):
        raise ConfigError("decision_logs.reporting", "must be an object", _OPA_SOURCE)
    trigger = reporting.get("trigger", "periodic")
    if trigger != "periodic":
        why = f"trigger {trigger!r} is not supported (periodic only)"
        raise ConfigError("decision_logs.reporting.trigger", why, _OPA_SOURCE)
    low = _number(reporting, "min_delay_seconds", integer=True)
    high = _number(reporting, "max_delay_seconds", integer=True)
    if (low is None) != (high is None):
        missing = "max_delay_seconds" if high is None else "min_delay_seconds"
        why = f"reporting configuration missing {missing!r} in decision_logs"
        raise ConfigError(f"decision_logs.reporting.{missing}", why, _OPA_SOURCE)
    if low is not None and high is not None:
        if high < low or low < 0:
            why = "max reporting delay must be >= min reporting delay in decision_logs"
            raise ConfigError("decision_logs.reporting.max_delay_seconds", why, _OPA_SOURCE)
        values["min_delay_seconds"], values["max_delay_seconds"] = low, high
    buffer_type = reporting.get("buffer_type", "size")
    if buffer_type not in ("size", "event"):
        why = f"invalid buffer type {buffer_type!r}, expected 'event' or 'size'"
        raise ConfigError("decision_logs.reporting.buffer_type", why, _OPA_SOURCE)
    for key, field, integer in (
        ("upload_size_limit_bytes", "upload_size_limit_bytes", True),
        ("buffer_size_limit_bytes", "buffer_size_limit_bytes", True),
        ("buffer_size_limit_events", "queue_size", True),
        ("max_decisions_per_second", "max_decisions_per_second", False),
    ):
        number = _number(reporting, key, integer=integer)
        if number is None:
            continue
        if number <= 0:
            why = f"invalid decision_log config, {key!r} must be higher than 0"
            raise ConfigError(f"decision_logs.reporting.{key}", why, _OPA_SOURCE)
        values[field] = int(number) if integer else number
    if "buffer_size_limit_bytes" in reporting and "max_decisions_per_second" in reporting:
        why = "specify either 'buffer_size_limit_bytes' or 'max_decisions_per_second'"
        raise ConfigError("decision_logs.reporting", why, _OPA_SOURCE)
    upload = values.get("upload_size_limit_bytes", _UPLOAD_LIMIT)
    if values.get("buffer_size_limit_bytes", _BUFFER_LIMIT) < upload:
        values["buffer_size_limit_bytes"] = upload
    for key in ("mask_decision", "drop_decision"):
        if mapping.get(key) is not None:
            try:
                values[key] = parse_data_path(mapping[key])
            except ValueError as exc:
                raise ConfigError(f"decision_logs.{key}", str(exc), _OPA_SOURCE) from None
    partition = mapping.get("partition_name", "")
    resource = mapping.get("resource")
    if partition:
        values["resource"] = f"/logs/{partition}"
    elif resource is not None:
        if not isinstance(resource, str):
            raise ConfigError("decision_logs.resource", "must be a string", _OPA_SOURCE)
        values["resource"] = resource
    if labels:
        try:
            own = {k: v for k, v in labels.items() if k not in ("id", "version")}
            values["labels"] = parse_labels(own)
        except ValueError as exc:
            raise ConfigError("labels", str(exc), _OPA_SOURCE) from None
    return DecisionLogSettings(**values)

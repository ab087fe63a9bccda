"""The OPA configuration file an operator runs OPA-Envoy with, read for what authd can use.

``authz.opa_config = "/etc/opa/config.yaml"`` reads ``services``, ``bundles``, ``keys``,
``plugins.envoy_ext_authz_grpc`` (``path``, ``dry-run``, ``skip-request-body-parse``,
``enable-reflection``, ``addr``), and keeps ``decision_logs`` and ``labels`` as plain
mappings (``config.opa.decision_logs``) for the decision log. ``${VAR}`` is replaced by the
environment variable, as OPA does. Every key authd does not use gets one warning line; a
file that cannot be read or parsed, or has a value of the wrong type, is one ``ConfigError``.

Secrets (bearer tokens, HMAC keys) are kept for use and never appear in a message.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from authd.config.errors import ConfigError

__all__ = [
    "OpaBundle",
    "OpaKey",
    "OpaPlugin",
    "OpaService",
    "OpaSettings",
    "load_opa_config",
    "parse_opa_config",
]

log = logging.getLogger("authd.config")

KEY = "authz.opa_config"
PLUGIN = "envoy_ext_authz_grpc"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class OpaService:
    """``services.<name>``: where bundles are downloaded from."""

    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    bearer_token: str = field(default="", repr=False)
    bearer_scheme: str = "Bearer"
    allow_insecure_tls: bool = False
    ca_cert: str = ""
    timeout: float = 10.0

    def request_headers(self) -> dict[str, str]:
        """The headers of every request, with the bearer credential if configured."""
        headers = dict(self.headers)
        if self.bearer_token:
            headers["Authorization"] = f"{self.bearer_scheme} {self.bearer_token}"
        return headers


@dataclass(frozen=True, slots=True)
class OpaKey:
    """``keys.<id>``: a bundle verification key (PEM public key, or an HMAC secret)."""

    key_id: str
    algorithm: str = "RS256"
    key: str = field(default="", repr=False)
    scope: str = ""


@dataclass(frozen=True, slots=True)
class OpaBundle:
    """``bundles.<name>``: the service and resource, polling, and signing."""

    name: str
    service: str = ""
    resource: str = ""
    min_delay: float = 60.0
    max_delay: float = 120.0
    signing: bool = False  # a ``signing`` block is present
    signing_keyid: str = ""
    signing_scope: str = ""
    exclude_files: tuple[str, ...] = ()
    size_limit_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class OpaPlugin:
    """``plugins.envoy_ext_authz_grpc``; None for a setting the file does not give."""

    path: str | None = None
    dry_run: bool | None = None
    skip_request_body_parse: bool | None = None
    enable_reflection: bool | None = None
    addr: str | None = None


@dataclass(frozen=True, slots=True)
class OpaSettings:
    """What authd read from an OPA config file (empty when none is configured)."""

    source: str = ""
    services: Mapping[str, OpaService] = field(default_factory=dict)
    bundles: Mapping[str, OpaBundle] = field(default_factory=dict)
    keys: Mapping[str, OpaKey] = field(default_factory=dict)
    plugin: OpaPlugin = field(default_factory=OpaPlugin)
    decision_logs: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, Any] = field(default_factory=dict)
    # The ``services`` document as written, for the decision log's uploads (secrets: no repr).
    services_document: Mapping[str, Any] = field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = ()

    @property
    def bundle(self) -> OpaBundle | None:
        """The one bundle authd activates, if the file names one."""
        return next(iter(self.bundles.values()), None)

    def bundle_location(self) -> str:
        """The bundle's URL (service url + resource), or its path for a ``file://`` resource."""
        bundle = self.bundle
        if bundle is None:
            return ""
        if bundle.resource.startswith("file://"):
            return bundle.resource.removeprefix("file://")
        service = self.services[bundle.service]
        return service.url.rstrip("/") + "/" + bundle.resource.lstrip("/")


class _Reader:
    """Walks the document, collecting one warning per key authd does not use."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []

    def fail(self, where: str, why: str) -> ConfigError:
        text = f"{where}: {why}"  # names come from the file: keep the message one line
        return ConfigError(KEY, text.encode("unicode_escape").decode("ascii"), self.source)

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise self.fail(where, "must be a mapping")
        return value

    def text(self, value: Any, where: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(where, "must be a string")
        return str(value)

    def flag(self, value: Any, where: str) -> bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self.fail(where, "must be true or false")
        return value

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise self.fail(where, "must be a non-negative number")
        return float(value)

    def unused(self, where: str, names: Mapping[str, Any], used: set[str]) -> None:
        for name in names:
            if name not in used:
                self.warn(f"{where}{name}")

    def warn(self, key: str) -> None:
        shown = key.encode("unicode_escape").decode("ascii")
        self.warnings.append(f"{self.source}: OPA config key '{shown}' is not supported by authd")


def _services(reader: _Reader, raw: Any) -> dict[str, OpaService]:
    entries: list[tuple[str, Any]]
    if isinstance(raw, list):  # the older list form, each with a name
        entries = []
        for index, item in enumerate(raw):
            item = reader.table(item, f"services[{index}]")
            entries.append((reader.text(item.get("name", ""), f"services[{index}].name"), item))
    else:
        entries = list(reader.table(raw, "services").items())
    services: dict[str, OpaService] = {}
    for name, item in entries:
        where = f"services.{name}"
        item = reader.table(item, where)
        if not item.get("url"):
            raise reader.fail(where, "has no url")
        reader.unused(
            where + ".",
            item,
            {"name", "url", "headers", "credentials", "allow_insecure_tls", "tls",
             "response_header_timeout_seconds"},
        )  # fmt: skip
        headers = reader.table(item.get("headers"), where + ".headers")
        credentials = reader.table(item.get("credentials"), where + ".credentials")
        reader.unused(where + ".credentials.", credentials, {"bearer"})
        bearer = reader.table(credentials.get("bearer"), where + ".credentials.bearer")
        reader.unused(where + ".credentials.bearer.", bearer, {"token", "scheme"})
        tls = reader.table(item.get("tls"), where + ".tls")
        reader.unused(where + ".tls.", tls, {"ca_cert"})
        services[name] = OpaService(
            name=name,
            url=reader.text(item["url"], where + ".url"),
            headers={k: reader.text(v, f"{where}.headers.{k}") for k, v in headers.items()},
            bearer_token=reader.text(bearer.get("token", ""), where + ".credentials.bearer"),
            bearer_scheme=reader.text(bearer.get("scheme", "Bearer"), where + ".scheme"),
            allow_insecure_tls=reader.flag(
                item.get("allow_insecure_tls", False), where + ".allow_insecure_tls"
            ),
            ca_cert=reader.text(tls.get("ca_cert", ""), where + ".tls.ca_cert"),
            timeout=reader.number(
                item.get("response_header_timeout_seconds", 10), where + ".timeout"
            )
            or 10.0,
        )
    return services


def _bundles(reader: _Reader, raw: Any, services: Mapping[str, OpaService]) -> dict[str, OpaBundle]:
    bundles: dict[str, OpaBundle] = {}
    for name, item in reader.table(raw, "bundles").items():
        where = f"bundles.{name}"
        item = reader.table(item, where)
        reader.unused(
            where + ".",
            item,
            {"service", "resource", "polling", "signing", "size_limit_bytes"},
        )
        polling = reader.table(item.get("polling"), where + ".polling")
        reader.unused(where + ".polling.", polling, {"min_delay_seconds", "max_delay_seconds"})
        signing_raw = item.get("signing")
        signing = reader.table(signing_raw, where + ".signing")
        reader.unused(where + ".signing.", signing, {"keyid", "scope", "exclude_files"})
        resource = reader.text(item.get("resource", f"bundles/{name}"), where + ".resource")
        service = reader.text(item.get("service", ""), where + ".service")
        if not resource.startswith("file://"):
            if not service and len(services) == 1:
                service = next(iter(services))
            if service not in services:
                raise reader.fail(where, f"service {service!r} is not defined under services")
        excludes = signing.get("exclude_files") or []
        if not isinstance(excludes, list):
            raise reader.fail(where + ".signing.exclude_files", "must be a list")
        min_delay = reader.number(polling.get("min_delay_seconds", 60), where + ".polling")
        max_delay = reader.number(polling.get("max_delay_seconds", 120), where + ".polling")
        if max_delay < min_delay:
            raise reader.fail(where + ".polling", "max_delay_seconds is below min_delay_seconds")
        limit = item.get("size_limit_bytes")
        bundles[name] = OpaBundle(
            name=name,
            service=service,
            resource=resource,
            min_delay=min_delay,
            max_delay=max_delay,
            signing=signing_raw is not None,
            signing_keyid=reader.text(signing.get("keyid", ""), where + ".signing.keyid"),
            signing_scope=reader.text(signing.get("scope", ""), where + ".signing.scope"),
            exclude_files=tuple(reader.text(e, where + ".signing.exclude_files") for e in excludes),
            size_limit_bytes=None if limit is None else int(reader.number(limit, where)),
        )
    if len(bundles) > 1:
        raise reader.fail("bundles", f"authd activates one bundle; the file lists {len(bundles)}")
    return bundles


def _keys(reader: _Reader, raw: Any) -> dict[str, OpaKey]:
    keys: dict[str, OpaKey] = {}
    for key_id, item in reader.table(raw, "keys").items():
        where = f"keys.{key_id}"
        item = reader.table(item, where)
        reader.unused(where + ".", item, {"algorithm", "key", "scope"})
        keys[key_id] = OpaKey(
            key_id=key_id,
            algorithm=reader.text(item.get("algorithm", "RS256"), where + ".algorithm"),
            key=reader.text(item.get("key", ""), where + ".key"),
            scope=reader.text(item.get("scope", ""), where + ".scope"),
        )
    return keys


def _plugin(reader: _Reader, raw: Any) -> OpaPlugin:
    plugins = reader.table(raw, "plugins")
    reader.unused("plugins.", plugins, {PLUGIN})
    where = f"plugins.{PLUGIN}"
    item = reader.table(plugins.get(PLUGIN), where)
    reader.unused(
        where + ".",
        item,
        {"path", "dry-run", "skip-request-body-parse", "enable-reflection", "addr"},
    )

    def flag(name: str) -> bool | None:
        return None if name not in item else reader.flag(item[name], f"{where}.{name}")

    return OpaPlugin(
        path=reader.text(item["path"], where + ".path") if "path" in item else None,
        dry_run=flag("dry-run"),
        skip_request_body_parse=flag("skip-request-body-parse"),
        enable_reflection=flag("enable-reflection"),
        addr=reader.text(item["addr"], where + ".addr") if "addr" in item else None,
    )


def parse_opa_config(text: str, source: str, env: Mapping[str, str] = os.environ) -> OpaSettings:
    """Parse an OPA config document (YAML or JSON); warnings are returned, not logged."""
    reader = _Reader(source)
    text = _ENV.sub(lambda m: env.get(m.group(1), ""), text)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid"
        raise reader.fail("file", f"not YAML: {first}") from None
    except RecursionError:
        raise reader.fail("file", "nested too deeply") from None
    document = reader.table(document, "the document")
    reader.unused(
        "", document, {"services", "bundles", "keys", "plugins", "decision_logs", "labels"}
    )
    services = _services(reader, document.get("services"))
    bundles = _bundles(reader, document.get("bundles"), services)
    keys = _keys(reader, document.get("keys"))
    for bundle in bundles.values():
        if bundle.signing_keyid and bundle.signing_keyid not in keys:
            raise reader.fail(
                f"bundles.{bundle.name}.signing.keyid",
                f"key {bundle.signing_keyid!r} is not defined under keys",
            )
    return OpaSettings(
        source=source,
        services=services,
        bundles=bundles,
        keys=keys,
        plugin=_plugin(reader, document.get("plugins")),
        decision_logs=reader.table(document.get("decision_logs"), "decision_logs"),
        labels=reader.table(document.get("labels"), "labels"),
        services_document=_services_document(document.get("services")),
        warnings=tuple(reader.warnings),
    )


def _services_document(services: Any) -> Mapping[str, Any]:
    """OPA's ``services`` as a name → service map (OPA also takes a list with ``name``)."""
    if isinstance(services, Mapping):
        return dict(services)
    if isinstance(services, list):
        return {s.get("name", ""): s for s in services if isinstance(s, Mapping)}
    return {}


def load_opa_config(path: Path, env: Mapping[str, str] = os.environ) -> OpaSettings:
    """Read and parse the OPA config file at ``path``, logging one warning per unused key."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(KEY, f"cannot read {path}: {exc.strerror or exc}", str(path)) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(KEY, f"{path} is over {MAX_FILE_BYTES} bytes", str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(KEY, f"{path} is not UTF-8", str(path)) from None
    settings = parse_opa_config(text, str(path), env)
    for warning in settings.warnings:
        log.warning("%s", warning)
    return settings


def authd_settings(settings: OpaSettings) -> dict[str, object]:
    """The authd config keys the OPA config file sets (explicit authd keys win over these)."""
    values: dict[str, object] = {}
    plugin = settings.plugin
    if plugin.path is not None:
        values["authz.rego_entrypoint"] = plugin.path
    if plugin.dry_run is not None:
        values["authz.dry_run"] = plugin.dry_run
    if plugin.skip_request_body_parse is not None:
        values["authz.skip_request_body_parse"] = plugin.skip_request_body_parse
    if plugin.enable_reflection is not None:
        values["authz.grpc_reflection"] = plugin.enable_reflection
    if plugin.addr is not None:
        addr = plugin.addr
        if addr.startswith("unix://"):
            values["authz.grpc_socket"] = addr.removeprefix("unix://")
        else:
            # OPA-Envoy's ":9191" listens on every interface.
            values["authz.grpc_address"] = "0.0.0.0" + addr if addr.startswith(":") else addr
    bundle = settings.bundle
    if bundle is not None:
        values["authz.policy_engine"] = "rego"
        values["authz.rego_bundle"] = settings.bundle_location()
        if bundle.size_limit_bytes is not None:
            values["authz.bundle_max_uncompressed_size"] = bundle.size_limit_bytes
    return values

"""The daemon's one configuration model.

Values come from three layers, each overriding the one before: the TOML file, environment
variables (``AUTHD_<KEY>`` for top-level keys, ``AUTHD_<SECTION>_<KEY>`` for the others,
e.g. ``AUTHD_CA_KEY_TYPE``), then overrides from command-line flags (keyed ``"data_dir"`` or
``"ca.key_type"``). Every relative path in the config is relative to ``data_dir``.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from authd.transport.limits import ListenerLimits
from ca.errors import InvalidSpiffeId
from ca.spiffe_id import SpiffeId
from ca.store.urls import REDIS_URL_SCHEMES, redact_url

__all__ = [
    "ENV_CONFIG_PATH",
    "KEY_TYPES",
    "LOG_LEVELS",
    "AdminConfig",
    "CAConfig",
    "Config",
    "ConfigError",
    "KeyType",
    "LogLevel",
    "StoreConfig",
    "default_data_dir",
    "format_duration",
    "load_config",
    "parse_duration",
]

KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"]
LogLevel = Literal["debug", "info", "warning", "error"]
KEY_TYPES: tuple[KeyType, ...] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-4096")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")

#: Names the config file; the one ``AUTHD_*`` variable that is not a config key.
ENV_CONFIG_PATH = "AUTHD_CONFIG"

_ENV_PREFIX = "AUTHD_"
_MIN_CA_TTL = 60
_MAX_UNIX_SOCKET_PATH = 107  # sun_path is 108 bytes including the terminating NUL
_STORE_SCHEMES = ("sqlite", *REDIS_URL_SCHEMES)


class ConfigError(ValueError):
    """A config value is missing, malformed or inconsistent; names the key and its source."""

    def __init__(self, key: str, why: str, source: str | None = None) -> None:
        super().__init__(key, why, source)
        self.key = key
        self.why = why
        self.source = source

    def __str__(self) -> str:
        where = f"config key {self.key!r}" if self.key else "config"
        if self.source:
            where += f" (from {self.source})"
        return f"{where}: {self.why}"


@dataclass(frozen=True, slots=True)
class CAConfig:
    """The certificate authority: key types, lifetimes, and an optional upstream CA."""

    key_type: KeyType = "ec-p256"
    jwt_key_type: KeyType = "ec-p256"
    ca_ttl: int = 24 * 3600
    x509_svid_ttl: int = 3600
    jwt_svid_ttl: int = 300
    subject: str = "O=authd"
    upstream_bundle: str = ""
    upstream_cert: str = ""
    upstream_key: str = ""
    bundle_refresh_hint: int = 300
    rotation_check_interval: int = 10
    crl_refresh: int = 900
    rotates: bool = True  # with several replicas on one store, true on exactly one
    http_address: str = ""  # the bundle and CRL endpoint, host:port; "" disables

    @property
    def subject_name(self) -> x509.Name:
        """The authority's subject as a cryptography ``x509.Name``."""
        return x509.Name.from_rfc4514_string(self.subject)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where state lives: ``sqlite://<path>`` (relative to data_dir) or a Redis URL."""

    url: str = "sqlite://authd.db"
    # With a shared (Redis) store: how long a replica that lost the store keeps deciding
    # from its last revocation view before ext_authz fails closed (503).
    max_staleness: int = 30


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin API: its Unix socket and who may use it, and its optional mTLS listener."""

    socket_path: str = ""
    allowed_uids: tuple[int, ...] = ()
    mtls_address: str = ""  # host:port for remote admins over mutual TLS; "" disables
    server_spiffe_id: str = ""  # "" means spiffe://<trust_domain>/authd/admin

    def allows_uid(self, uid: int) -> bool:
        """Root is always allowed; anyone else must be listed in ``allowed_uids``."""
        return uid == 0 or uid in self.allowed_uids

    def server_id(self, trust_domain: str) -> str:
        """The SPIFFE ID the mTLS listener presents."""
        return self.server_spiffe_id or f"spiffe://{trust_domain}/authd/admin"


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """An external issuer of end-user JWTs, trusted through its JWKS."""

    name: str
    issuer: str
    jwks_uri: str
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    header: str = "authorization"
    leeway: int = 60


@dataclass(frozen=True, slots=True)
class AuthzConfig:
    """The ext_authz decision point: listeners, policy, identities, responses, logs."""

    grpc_address: str = "127.0.0.1:9191"
    grpc_socket: str = ""
    grpc_engine: str = "native"
    http_address: str = "127.0.0.1:9192"
    http_path_prefix: str = ""
    metrics_address: str = "127.0.0.1:9464"
    policy_engine: str = "rules"
    policy_file: str = ""
    rego_files: tuple[str, ...] = ()
    rego_entrypoint: str = "envoy/authz/allow"
    rego_decision_cache: int = 4096
    opa_url: str = "http://127.0.0.1:8181"
    opa_path: str = "envoy/authz/allow"
    opa_timeout_ms: int = 500
    dry_run: bool = False
    decision_log: str = ""
    caller_header: str = "x-authd-caller"
    subject_header: str = "x-authd-subject"
    decision_id_header: str = "x-authd-decision-id"
    remove_headers: tuple[str, ...] = ("authorization", "x-api-key")
    peer_uri_header: str = "x-authd-peer-uri-san"
    peer_cert_header: str = "x-authd-peer-cert"
    context_header_prefix: str = "x-authd-ctx-"
    jwt_svid_header: str = "authorization"
    jwt_svid_audiences: tuple[str, ...] = ()
    api_key_header: str = "x-api-key"
    api_keys_file: str = ""
    trust_principal_without_certificate: bool = True
    issuers: tuple[IssuerConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """The SPIFFE Workload API and Envoy SDS, served together on one Unix socket."""

    socket_path: str = ""  # "" means <data_dir>/workload.sock
    enabled: bool = True
    rotation_check_interval: int = 1


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """[limits]: the bounds every listener enforces (see ``authd.transport.limits``)."""

    max_connections: int = 1024
    idle_timeout: int = 300
    max_header_list_size: int = 64 * 1024
    max_url_length: int = 8 * 1024
    max_request_bytes: int = 4 * 1024 * 1024
    max_concurrent_streams: int = 1000
    max_connection_buffer: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration, validated. Durations are int seconds."""

    data_dir: Path
    trust_domain: str = "example.org"
    log_level: LogLevel = "info"
    ca: CAConfig = field(default_factory=CAConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    authz: AuthzConfig = field(default_factory=AuthzConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def resolve_path(self, path: str | Path) -> Path:
        """``path`` made absolute against ``data_dir`` (absolute paths are returned as is)."""
        return self.data_dir / Path(path).expanduser()

    def listener_limits(self) -> ListenerLimits:
        """The ``[limits]`` section as the value every listener is given."""
        limits = self.limits
        return ListenerLimits(
            max_connections=limits.max_connections,
            idle_timeout=float(limits.idle_timeout),
            max_header_list_size=limits.max_header_list_size,
            max_url_length=limits.max_url_length,
            max_request_bytes=limits.max_request_bytes,
            max_concurrent_streams=limits.max_concurrent_streams,
            max_connection_buffer=limits.max_connection_buffer,
        )

    @property
    def admin_socket_path(self) -> Path:
        return self.resolve_path(self.admin.socket_path or "admin.sock")

    @property
    def workload_socket_path(self) -> Path:
        return self.resolve_path(self.workload.socket_path or "workload.sock")

    @property
    def store_url(self) -> str:
        """The store URL with a relative SQLite path made absolute against ``data_dir``."""
        scheme, _, rest = self.store.url.partition("://")
        if scheme != "sqlite" or rest == ":memory:":
            return self.store.url
        return f"sqlite://{self.resolve_path(rest)}"

    @property
    def upstream(self) -> bool:
        """True when the authority is signed by an upstream CA rather than self-signed."""
        return bool(self.ca.upstream_cert)

    @property
    def upstream_cert_path(self) -> Path | None:
        return self.resolve_path(self.ca.upstream_cert) if self.ca.upstream_cert else None

    @property
    def upstream_key_path(self) -> Path | None:
        return self.resolve_path(self.ca.upstream_key) if self.ca.upstream_key else None

    @property
    def upstream_bundle_path(self) -> Path | None:
        """The upstream trust bundle; defaults to the upstream certificate itself."""
        bundle = self.ca.upstream_bundle or self.ca.upstream_cert
        return self.resolve_path(bundle) if bundle else None


# -- durations ---------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNIT_SECONDS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(value: object) -> int:
    """Seconds from an int, a string of digits, or units in order: "90s", "2h30m", "7d"."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like '90s', '5m', '2h30m', '7d' or seconds")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        match = _DURATION_RE.fullmatch(text)
        if text and match:
            return sum(
                int(amount) * seconds
                for amount, (_, seconds) in zip(match.groups(), _UNIT_SECONDS, strict=True)
                if amount
            )
    raise ValueError(
        f"must be a duration like '90s', '5m', '2h30m', '7d' or seconds, not {value!r}"
    )


def format_duration(seconds: int) -> str:
    """The shortest unit string for ``seconds``: 43200 -> "12h", 5400 -> "1h30m"."""
    if seconds <= 0:
        return f"{seconds}s"
    parts = []
    for unit, size in _UNIT_SECONDS:
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


# -- the keys ----------------------------------------------------------------------------


def _parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    return value


def _parse_path(value: object) -> str:
    if isinstance(value, Path):
        return str(value)
    return _parse_str(value)


def _parse_positive_duration(value: object) -> int:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


def _parse_choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _parse_str(value)
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {text!r}")
        return text

    return parse


def _parse_log_level(value: object) -> str:
    return _parse_choice(LOG_LEVELS)(_parse_str(value).lower())


def _parse_trust_domain(value: object) -> str:
    text = _parse_str(value)
    if text.startswith("spiffe://"):
        text = text.removeprefix("spiffe://")
    if not text:
        raise ValueError("must not be empty")
    if len(text) > 255:
        raise ValueError(f"must be at most 255 characters, not {len(text)}")
    if text != text.lower() and re.fullmatch(r"[a-zA-Z0-9._-]+", text):
        raise ValueError(f"must be lowercase: {text!r}")
    if not re.fullmatch(r"[a-z0-9._-]+", text):
        raise ValueError(
            f"must be a bare trust domain of [a-z0-9._-] (no port, path or userinfo), not {text!r}"
        )
    return text


def _parse_subject(value: object) -> str:
    text = _parse_str(value)
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise ValueError(f"must be an RFC 4514 name like 'O=authd,C=US': {exc}") from None
    if len(name) == 0:  # RFC 5280: a CA certificate's subject (our issuer name) is non-empty
        raise ValueError("must not be empty")
    return text


def _parse_store_url(value: object) -> str:
    text = _parse_str(value)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in _STORE_SCHEMES or not rest:
        raise ValueError(
            f"must be sqlite://<path> or a Redis URL ({', '.join(REDIS_URL_SCHEMES)}), "
            f"not {redact_url(text)!r}"
        )
    return text


def _parse_uids(value: object) -> tuple[int, ...]:
    if isinstance(value, str):  # from the environment: "0,1000"
        items: list[object] = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError("must be a list of uids")
    uids = []
    for item in items:
        if isinstance(item, str) and item.isdigit():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < 2**32 - 1:
            raise ValueError(f"must be a list of uids (integers 0..4294967294), not {item!r}")
        uids.append(item)
    return tuple(uids)


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError(f"must be true or false, not {value!r}")


def _parse_str_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str):  # from the environment: "a,b"
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def _parse_header_name(value: object) -> str:
    text = _parse_str(value).lower()
    if not re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~-]+", text):
        raise ValueError(f"must be an HTTP header name, not {text!r}")
    return text


def _parse_header_list(value: object) -> tuple[str, ...]:
    return tuple(_parse_header_name(v) for v in _parse_str_list(value))


def _parse_address(value: object) -> str:
    """``host:port`` (IPv6 as ``[::1]:port``), or "" to disable the listener."""
    text = _parse_str(value)
    if not text:
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port (or empty to disable), not {text!r}")
    return text


def _parse_spiffe_id(value: object) -> str:
    """A SPIFFE ID with a path, or "" for the default."""
    text = _parse_str(value)
    if not text:
        return text
    try:
        spiffe_id = SpiffeId.parse(text)
    except InvalidSpiffeId as exc:
        raise ValueError(str(exc)) from None
    if not spiffe_id.is_workload:
        raise ValueError(f"{text} has no path; an X.509-SVID needs one")
    return str(spiffe_id)


def _parse_int_at_least(minimum: int) -> Callable[[object], int]:
    words = {0: "non-negative", 1: "positive"}

    def parse(value: object) -> int:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"must be a {words[minimum]} integer, not {value!r}")
        return value

    return parse


_parse_non_negative_int = _parse_int_at_least(0)
_parse_positive_int = _parse_int_at_least(1)


_ISSUER_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
)


def _parse_issuers(value: object) -> tuple[IssuerConfig, ...]:
    if not isinstance(value, list):
        raise ValueError("must be an array of tables ([[authz.issuers]])")
    issuers = []
    names: set[str] = set()
    for index, item in enumerate(value):
        where = f"issuer #{index + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a table")
        unknown = set(item) - set(IssuerConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        for required in ("name", "issuer", "jwks_uri"):
            if not isinstance(item.get(required), str) or not item[required]:
                raise ValueError(f"{where}: {required!r} is required")
        if item["name"] in names:
            raise ValueError(f"{where}: duplicate name {item['name']!r}")
        names.add(item["name"])
        if not item["jwks_uri"].startswith(("http://", "https://")):
            raise ValueError(f"{where}: jwks_uri must be an http(s) URL")
        algorithms = _parse_str_list(item.get("algorithms", ["RS256", "ES256"]))
        for alg in algorithms:
            if alg not in _ISSUER_ALGORITHMS:
                allowed = ", ".join(_ISSUER_ALGORITHMS)
                raise ValueError(f"{where}: algorithm {alg!r} is not allowed; use {allowed}")
        audiences = _parse_str_list(item.get("audiences", []))
        if not audiences:
            raise ValueError(f"{where}: 'audiences' is required (a token for any app would do)")
        leeway = item.get("leeway", 60)
        if isinstance(leeway, bool) or not isinstance(leeway, int) or leeway < 0:
            raise ValueError(f"{where}: leeway must be a non-negative number of seconds")
        issuers.append(
            IssuerConfig(
                name=item["name"],
                issuer=item["issuer"],
                jwks_uri=item["jwks_uri"],
                audiences=audiences,
                algorithms=algorithms,
                header=_parse_header_name(item.get("header", "authorization")),
                leeway=leeway,
            )
        )
    return tuple(issuers)


_SECTIONS = ("ca", "store", "admin", "authz", "workload", "limits")

# Every key, "section.key" or "key", with the parser that checks and converts its value.
_PARSERS: dict[str, Callable[[object], object]] = {
    "trust_domain": _parse_trust_domain,
    "data_dir": _parse_path,
    "log_level": _parse_log_level,
    "ca.key_type": _parse_choice(KEY_TYPES),
    "ca.jwt_key_type": _parse_choice(KEY_TYPES),
    "ca.ca_ttl": _parse_positive_duration,
    "ca.x509_svid_ttl": _parse_positive_duration,
    "ca.jwt_svid_ttl": _parse_positive_duration,
    "ca.subject": _parse_subject,
    "ca.upstream_bundle": _parse_path,
    "ca.upstream_cert": _parse_path,
    "ca.upstream_key": _parse_path,
    "ca.bundle_refresh_hint": _parse_positive_duration,
    "ca.rotation_check_interval": _parse_positive_duration,
    "ca.crl_refresh": _parse_positive_duration,
    "ca.rotates": _parse_bool,
    "ca.http_address": _parse_address,
    "store.url": _parse_store_url,
    "store.max_staleness": _parse_positive_duration,
    "admin.socket_path": _parse_path,
    "admin.allowed_uids": _parse_uids,
    "admin.mtls_address": _parse_address,
    "admin.server_spiffe_id": _parse_spiffe_id,
    "authz.grpc_address": _parse_address,
    "authz.grpc_socket": _parse_path,
    "authz.grpc_engine": _parse_choice(("native", "grpcio")),
    "authz.http_address": _parse_address,
    "authz.http_path_prefix": _parse_str,
    "authz.metrics_address": _parse_address,
    "authz.policy_engine": _parse_choice(("rules", "rego", "opa")),
    "authz.policy_file": _parse_path,
    "authz.rego_files": _parse_str_list,
    "authz.rego_entrypoint": _parse_str,
    "authz.rego_decision_cache": _parse_non_negative_int,
    "authz.opa_url": _parse_str,
    "authz.opa_path": _parse_str,
    "authz.opa_timeout_ms": _parse_positive_int,
    "authz.dry_run": _parse_bool,
    "authz.decision_log": _parse_path,
    "authz.caller_header": _parse_header_name,
    "authz.subject_header": _parse_header_name,
    "authz.decision_id_header": _parse_header_name,
    "authz.remove_headers": _parse_header_list,
    "authz.peer_uri_header": _parse_header_name,
    "authz.peer_cert_header": _parse_header_name,
    "authz.context_header_prefix": _parse_header_name,
    "authz.jwt_svid_header": _parse_header_name,
    "authz.jwt_svid_audiences": _parse_str_list,
    "authz.api_key_header": _parse_header_name,
    "authz.api_keys_file": _parse_path,
    "authz.trust_principal_without_certificate": _parse_bool,
    "authz.issuers": _parse_issuers,
    "workload.socket_path": _parse_path,
    "workload.enabled": _parse_bool,
    "workload.rotation_check_interval": _parse_positive_duration,
    "limits.max_connections": _parse_positive_int,
    "limits.idle_timeout": _parse_positive_duration,
    "limits.max_header_list_size": _parse_int_at_least(1024),
    "limits.max_url_length": _parse_int_at_least(256),
    "limits.max_request_bytes": _parse_int_at_least(1024),
    "limits.max_concurrent_streams": _parse_positive_int,
    "limits.max_connection_buffer": _parse_int_at_least(64 * 1024),
}


def _env_name(key: str) -> str:
    return _ENV_PREFIX + key.replace(".", "_").upper()


_ENV_KEYS = {_env_name(key): key for key in _PARSERS}


def _unknown(key: str, source: str) -> ConfigError:
    why = "unknown key"
    close = difflib.get_close_matches(key, _PARSERS, n=1)
    if close:
        why += f"; did you mean {close[0]!r}?"
    return ConfigError(key, why, source)


# -- loading -----------------------------------------------------------------------------


def default_data_dir(env: Mapping[str, str], euid: int | None = None) -> Path:
    """/var/lib/authd for root, else $XDG_DATA_HOME/authd (~/.local/share/authd)."""
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/authd")
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "authd"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "share" / "authd"


def _read_file(path: Path) -> dict[str, tuple[object, str]]:
    source = str(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("", f"cannot read the config file: {exc.strerror}", source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"invalid TOML: {exc}", source) from None
    raw: dict[str, tuple[object, str]] = {}
    for name, value in doc.items():
        if name in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(name, f"must be a table ([{name}])", source)
            for sub, subvalue in value.items():
                key = f"{name}.{sub}"
                if key not in _PARSERS:
                    raise _unknown(key, source)
                raw[key] = (subvalue, source)
        elif name in _PARSERS:
            raw[name] = (value, source)
        else:
            raise _unknown(name, source)
    return raw


def _read_env(env: Mapping[str, str]) -> dict[str, tuple[object, str]]:
    raw: dict[str, tuple[object, str]] = {}
    for name, value in env.items():
        if not name.startswith(_ENV_PREFIX) or name == ENV_CONFIG_PATH:
            continue
        key = _ENV_KEYS.get(name)
        if key is None:
            guess = name.removeprefix(_ENV_PREFIX).lower()
            for section in _SECTIONS:
                if guess.startswith(section + "_"):
                    guess = f"{section}.{guess.removeprefix(section + '_')}"
                    break
            raise _unknown(guess, name)
        raw[key] = (value, name)
    return raw


def _read_overrides(overrides: Mapping[str, Any]) -> dict[str, tuple[object, str]]:
    raw: dict[str, tuple[object, str]] = {}
    for key, value in overrides.items():
        if key not in _PARSERS:
            raise _unknown(key, "overrides")
        if value is not None:  # an unset command-line flag
            raw[key] = (value, "overrides")
    return raw


def load_config(
    path: Path | None,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read ``path`` (if given), apply ``env`` then ``overrides``, and validate the result."""
    raw: dict[str, tuple[object, str]] = {}
    if path is not None:
        raw.update(_read_file(path))
    raw.update(_read_env(env))
    raw.update(_read_overrides(overrides or {}))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, (value, source) in raw.items():
        try:
            values[key] = _PARSERS[key](value)
        except ValueError as exc:
            raise ConfigError(key, str(exc), source) from None
        sources[key] = source

    def section(name: str) -> dict[str, Any]:
        prefix = name + "."
        return {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}

    data_dir_value: str = values.pop("data_dir", "")
    data_dir = Path(data_dir_value).expanduser() if data_dir_value else default_data_dir(env)
    top = {k: v for k, v in values.items() if "." not in k}
    config = Config(
        data_dir=data_dir.absolute(),
        ca=CAConfig(**section("ca")),
        store=StoreConfig(**section("store")),
        admin=AdminConfig(**section("admin")),
        authz=AuthzConfig(**section("authz")),
        workload=WorkloadConfig(**section("workload")),
        limits=LimitsConfig(**section("limits")),
        **top,
    )
    _check(config, sources)
    return config


def _check(config: Config, sources: Mapping[str, str]) -> None:
    """The rules that relate several keys."""
    ca = config.ca
    if ca.ca_ttl < _MIN_CA_TTL:
        raise ConfigError(
            "ca.ca_ttl",
            f"must be at least {format_duration(_MIN_CA_TTL)}",
            sources.get("ca.ca_ttl"),
        )
    # An SVID must never outlive the authority that signed it across a rotation.
    for key, ttl in (("ca.x509_svid_ttl", ca.x509_svid_ttl), ("ca.jwt_svid_ttl", ca.jwt_svid_ttl)):
        if 2 * ttl > ca.ca_ttl:
            why = f"must not exceed ca.ca_ttl / 2 ({format_duration(ca.ca_ttl // 2)})"
            if key not in sources:
                why += f"; its default {format_duration(ttl)} does not fit, so set it too"
            raise ConfigError(key, why, sources.get(key))
    if bool(ca.upstream_cert) != bool(ca.upstream_key):
        key = "ca.upstream_key" if ca.upstream_cert else "ca.upstream_cert"
        other = "ca.upstream_cert" if ca.upstream_cert else "ca.upstream_key"
        raise ConfigError(key, f"must be set together with {other}", sources.get(other))
    if ca.upstream_bundle and not ca.upstream_cert:
        raise ConfigError(
            "ca.upstream_bundle",
            "needs ca.upstream_cert and ca.upstream_key",
            sources.get("ca.upstream_bundle"),
        )
    authz = config.authz
    if authz.policy_engine == "rego" and not authz.rego_files:
        raise ConfigError(
            "authz.rego_files", "policy_engine 'rego' needs at least one .rego file", None
        )
    server_id = config.admin.server_id(config.trust_domain)
    if SpiffeId.parse(server_id).trust_domain.name != config.trust_domain:
        raise ConfigError(
            "admin.server_spiffe_id",
            f"{server_id} is not in the trust domain {config.trust_domain}",
            sources.get("admin.server_spiffe_id"),
        )
    for key, socket_path in (
        ("admin.socket_path", config.admin_socket_path),
        ("workload.socket_path", config.workload_socket_path),
    ):
        if len(os.fsencode(socket_path)) > _MAX_UNIX_SOCKET_PATH:
            raise ConfigError(
                key,
                f"{socket_path} is longer than a Unix socket path may be "
                f"({_MAX_UNIX_SOCKET_PATH} bytes)",
                sources.get(key, sources.get("data_dir")),
            )

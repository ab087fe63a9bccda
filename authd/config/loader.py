"""Loading the config: the TOML file, then the environment, then command-line overrides.

Values come from three layers, each overriding the one before: the TOML file, environment
variables (``AUTHD_<KEY>`` for top-level keys, ``AUTHD_<SECTION>_<KEY>`` for the others,
e.g. ``AUTHD_CA_KEY_TYPE``), then overrides from command-line flags (keyed ``"data_dir"`` or
``"ca.key_type"``). Every relative path in the config is relative to ``data_dir``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from authd.config.consistency import check_consistency
from authd.config.decision_logs import DecisionLogSettings, decision_log_settings_from_opa
from authd.config.errors import ConfigError
from authd.config.keys import ENV_KEYS, ENV_PREFIX, PARSERS, SECTIONS, unknown_key
from authd.config.model import (
    AdminConfig,
    AgentConfig,
    AuthzConfig,
    CAConfig,
    Config,
    FederationConfig,
    LimitsConfig,
    StoreConfig,
    TxnTokenConfig,
    WorkloadConfig,
    XdsConfig,
)
from authd.config.opa_config import OpaSettings, authd_settings, load_opa_config

__all__ = ["ENV_CONFIG_PATH", "default_data_dir", "load_config"]

#: Names the config file; the one ``AUTHD_*`` variable that is not a config key.
ENV_CONFIG_PATH = "AUTHD_CONFIG"


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
        if name in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(name, f"must be a table ([{name}])", source)
            for sub, subvalue in value.items():
                key = f"{name}.{sub}"
                if key not in PARSERS:
                    raise unknown_key(key, source)
                raw[key] = (subvalue, source)
        elif name in PARSERS:
            raw[name] = (value, source)
        else:
            raise unknown_key(name, source)
    return raw


def _read_env(env: Mapping[str, str]) -> dict[str, tuple[object, str]]:
    raw: dict[str, tuple[object, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_PATH:
            continue
        key = ENV_KEYS.get(name)
        if key is None:
            guess = name.removeprefix(ENV_PREFIX).lower()
            for section in SECTIONS:
                if guess.startswith(section + "_"):
                    guess = f"{section}.{guess.removeprefix(section + '_')}"
                    break
            raise unknown_key(guess, name)
        raw[key] = (value, name)
    return raw


def _read_overrides(overrides: Mapping[str, Any]) -> dict[str, tuple[object, str]]:
    raw: dict[str, tuple[object, str]] = {}
    for key, value in overrides.items():
        if key not in PARSERS:
            raise unknown_key(key, "overrides")
        if value is not None:  # an unset command-line flag
            raw[key] = (value, "overrides")
    return raw


def _decision_logs(values: dict[str, Any], opa: OpaSettings) -> DecisionLogSettings:
    """``[decision_logs]``; without one, what the OPA config file's ``decision_logs`` says."""
    if values or not opa.decision_logs:
        return DecisionLogSettings(**values)
    labels = {str(k): str(v) for k, v in opa.labels.items()}
    try:
        return decision_log_settings_from_opa(
            dict(opa.decision_logs), dict(opa.services_document), labels=labels
        )
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.why, opa.source) from None


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
            values[key] = PARSERS[key](value)
        except ValueError as exc:
            raise ConfigError(key, str(exc), source) from None
        sources[key] = source

    data_dir_value: str = values.pop("data_dir", "")
    data_dir = Path(data_dir_value).expanduser() if data_dir_value else default_data_dir(env)
    opa = OpaSettings()
    if values.get("authz.opa_config"):
        opa_path = data_dir.absolute() / Path(values["authz.opa_config"]).expanduser()
        opa = load_opa_config(opa_path, env)
        for key, value in authd_settings(opa).items():
            if key in values:
                continue  # set in authd's own config: that wins
            try:
                values[key] = PARSERS[key](value)
            except ValueError as exc:
                raise ConfigError(key, f"{exc} (from the OPA config)", str(opa_path)) from None
            sources[key] = str(opa_path)

    def section(name: str) -> dict[str, Any]:
        prefix = name + "."
        return {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}

    top = {k: v for k, v in values.items() if "." not in k}
    config = Config(
        data_dir=data_dir.absolute(),
        ca=CAConfig(**section("ca")),
        store=StoreConfig(**section("store")),
        admin=AdminConfig(**section("admin")),
        authz=AuthzConfig(**section("authz")),
        txn_token=TxnTokenConfig(**section("txn_token")),
        workload=WorkloadConfig(**section("workload")),
        limits=LimitsConfig(**section("limits")),
        federation=FederationConfig(**section("federation")),
        xds=XdsConfig(**section("xds")),
        decision_logs=_decision_logs(section("decision_logs"), opa),
        opa=opa,
        agent=AgentConfig(**section("agent")),
        **top,
    )
    check_consistency(config, sources)
    return config

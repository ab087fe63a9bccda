"""The daemon's one configuration model, and loading it from file, environment and flags.

Modules: ``model`` (the frozen dataclasses), ``loader`` (file → env → overrides),
``keys`` (the key table), ``values`` (value parsers), ``durations``, ``consistency``
(rules across keys), ``errors`` (``ConfigError``), ``opa_config`` (the OPA config file
OPA-Envoy runs with, read into ``Config.opa``).
"""

from authd.config.durations import format_duration, parse_duration
from authd.config.errors import ConfigError
from authd.config.loader import ENV_CONFIG_PATH, default_data_dir, load_config
from authd.config.model import Config

__all__ = [
    "ENV_CONFIG_PATH",
    "Config",
    "ConfigError",
    "default_data_dir",
    "format_duration",
    "load_config",
    "parse_duration",
]

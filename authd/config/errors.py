"""The one error a config value can raise: what is wrong, with which key, from where."""

from __future__ import annotations

__all__ = ["ConfigError"]


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

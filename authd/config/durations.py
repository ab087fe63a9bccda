"""Durations in the config: "90s", "5m", "2h30m", "7d" or plain seconds, and back."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

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

"""Command-line values the CLI parses itself: durations and points in time."""

from __future__ import annotations

import datetime as dt

from authd.cli.errors import usage_error
from authd.config import parse_duration


def duration_flag(text: str | None, flag: str = "--ttl") -> int:
    if not text:
        return 0
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise usage_error(f"{flag}: {exc}") from None


def time_flag(text: str, flag: str) -> int:
    """Unix seconds from digits or an RFC 3339 time with a zone (``2030-01-01T00:00:00Z``)."""
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise usage_error(f"{flag}: {text!r} is not an RFC 3339 time or Unix seconds") from None
    if when.tzinfo is None:
        raise usage_error(f"{flag}: {text!r} has no time zone; add 'Z' or an offset like +02:00")
    return int(when.timestamp())

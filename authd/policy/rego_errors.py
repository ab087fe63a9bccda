"""regopy's error trees as ``file:line:col: message`` lines an operator can act on."""

from __future__ import annotations

import re
from collections.abc import Mapping

_ERROR_START = re.compile(r"\(error(?=\s)")
_LENGTH_PREFIX = re.compile(r"(\d+):")


def rego_error_message(text: str, sources: Mapping[str, str] | None = None) -> str:
    """Turn regopy's error tree into ``file:line:col: message`` lines.

    regopy reports ``(error <n>:<source>|<byte offset>|<length> (errormsg <n>:<message>) ...)``
    with length-prefixed strings; the line and column come from the source text.
    """
    messages: list[str] = []
    for chunk in _ERROR_START.split(text)[1:]:
        message = _prefixed_after(chunk, "(errormsg ") or "error"
        location = _location(chunk, sources or {})
        messages.append(f"{location}: {message}" if location else message)
    return "; ".join(messages) if messages else text.strip()


def _prefixed_after(chunk: str, marker: str) -> str | None:
    start = chunk.find(marker)
    if start == -1:
        return None
    match = _LENGTH_PREFIX.match(chunk, start + len(marker))
    if match is None:
        return None
    length = int(match.group(1))
    return chunk[match.end() : match.end() + length]


def _location(chunk: str, sources: Mapping[str, str]) -> str | None:
    for match in _LENGTH_PREFIX.finditer(chunk):
        name = chunk[match.end() : match.end() + int(match.group(1))]
        position = re.match(r"\|(\d+)\|\d+", chunk[match.end() + len(name) :])
        if not name or position is None:
            continue
        text = sources.get(name)
        if text is None:
            return name
        data = text.encode("utf-8")
        offset = int(position.group(1))
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        return f"{name}:{line}:{column}"
    return None

"""JSON from outside authd (tokens, request bodies, issuers' JWKS), parsed with bounds.

Python's ``json`` recurses once per nesting level and raises RecursionError, not ValueError,
near the interpreter's recursion limit; a document just below that limit still breaks every
later recursive walk of it (``json.dumps``, Rego's input conversion). So every JSON text
authd did not write itself is parsed here: at most ``max_bytes`` long, at most ``max_depth``
levels of arrays and objects, and without the non-standard ``NaN``/``Infinity`` constants.
A bound passed is a ``JsonLimitError``; text that is not JSON raises json's own ValueError.
Both are ValueErrors, so callers that already treat a ValueError as "not JSON" stay correct.
"""

from __future__ import annotations

import json
from typing import Any, Final

MAX_JSON_DEPTH: Final = 64
MAX_JSON_BYTES: Final = 1 << 20


class JsonLimitError(ValueError):
    """The JSON text passes a bound: too large or too deeply nested."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_bounded(
    data: bytes | str,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    allow_nan: bool = False,
) -> Any:
    """Parse ``data`` as JSON within the bounds.

    Raises ``JsonLimitError`` naming the bound passed, or ValueError when ``data`` is not
    JSON (JSONDecodeError, UnicodeDecodeError, an integer beyond Python's digit limit, and
    ``NaN``/``Infinity`` unless ``allow_nan``: a verifier that checks the values itself may
    want to say more precisely what is wrong with them).
    """
    if len(data) > max_bytes:
        raise JsonLimitError(f"JSON text is longer than {max_bytes} bytes")
    try:
        value = json.loads(data, parse_constant=None if allow_nan else _refuse_constant)
    except RecursionError:
        raise JsonLimitError(f"JSON nests deeper than {max_depth} levels") from None
    if nesting_depth(value, max_depth) > max_depth:
        raise JsonLimitError(f"JSON nests deeper than {max_depth} levels")
    return value


def nesting_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Levels of lists and dicts in ``value`` (a scalar is 0), counted up to ``limit + 1``.

    Iterative, so it cannot itself run out of stack; it stops as soon as ``limit`` is passed.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest

"""Masking a decision event as OPA does, from what ``system.log.mask`` returned.

The mask rule's value is a set (a JSON list) of rules, each a path string (remove) or an
object ``{"op": "remove"|"upsert", "path": ..., "value": ...}``. Paths start with ``/input``,
``/result`` or ``/nd_builtin_cache``; the parts between slashes name object keys or list
indexes. As OPA: a rule set that cannot be read masks nothing and is an error (the event is
not logged); a rule whose path is not there is skipped and not recorded; a removal is
recorded in the event's ``erased``, an upsert in ``masked``, each as the path's escaped form.
Pure: the event (a dict of JSON values) is changed in place; nothing raises but ``MaskError``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

__all__ = ["MaskError", "MaskRule", "apply_mask", "mask_rules"]

_PARTS = ("input", "result", "nd_builtin_cache")
# Go's url.PathEscape keeps unreserved characters and these.
_PATH_SAFE = "$&+:=@"
# Bounds, so a hostile rule set costs little: rules kept, parts of a path.
MAX_RULES = 1024
MAX_PATH_PARTS = 64


class MaskError(ValueError):
    """The mask rule set is not one OPA would accept; nothing is masked."""


class _Missing(Exception):
    """The path of a rule is not in the event (or not of the shape it needs)."""


@dataclass(frozen=True, slots=True)
class MaskRule:
    op: str  # "remove" or "upsert"
    parts: tuple[str, ...]  # escaped, the first one "input", "result" or "nd_builtin_cache"
    value: Any = None

    @property
    def path(self) -> str:
        return "/" + "/".join(self.parts)


def _percent_decodable(part: str) -> bool:
    i = part.find("%")
    while i != -1:
        hexdigits = part[i + 1 : i + 3]
        if len(hexdigits) != 2 or any(c not in "0123456789abcdefABCDEF" for c in hexdigits):
            return False
        i = part.find("%", i + 3)
    return True


def _rule(path: Any, op: Any = "remove", value: Any = None) -> MaskRule:
    if not isinstance(path, str) or not path:
        raise MaskError("mask must be non-empty")
    if not path.startswith("/"):
        raise MaskError("mask must be slash-prefixed")
    parts = path[1:].split("/")
    if parts[0] not in _PARTS:
        raise MaskError(f"mask prefix not allowed: {parts[0][:64]}")
    if len(parts) > MAX_PATH_PARTS:
        raise MaskError(f"mask path has more than {MAX_PATH_PARTS} parts")
    if not all(_percent_decodable(p) for p in parts):
        raise MaskError("mask path has an invalid escape")
    if op not in ("remove", "upsert"):
        raise MaskError(f"mask op is not supported: {str(op)[:64]}")
    escaped = tuple(quote(unquote(p, errors="surrogateescape"), safe=_PATH_SAFE) for p in parts)
    return MaskRule(op, escaped, value)


def mask_rules(value: Any) -> list[MaskRule]:
    """The rules in a mask rule's value; ``MaskError`` when OPA would refuse the set."""
    if not isinstance(value, list):
        raise MaskError(f"unexpected rule format {type(value).__name__}")
    if len(value) > MAX_RULES:
        raise MaskError(f"more than {MAX_RULES} mask rules")
    rules: list[MaskRule] = []
    for item in value:
        if isinstance(item, str):
            rules.append(_rule(item))
        elif isinstance(item, dict):
            op, path = item.get("op", "remove"), item.get("path", "")
            if "op" in item and (not isinstance(op, str) or not op):
                raise MaskError('invalid "op" value')
            if "path" in item and (not isinstance(path, str) or not path):
                raise MaskError('invalid "path" value')
            rules.append(_rule(path, op, item.get("value")))
        else:
            raise MaskError(f"invalid mask rule format encountered: {type(item).__name__}")
    return rules


def apply_mask(event: dict[str, Any], rules: list[MaskRule]) -> None:
    """Apply ``rules`` to ``event`` in order, recording ``erased`` and ``masked`` paths."""
    for rule in rules:
        part = rule.parts[0]
        if part not in event:
            continue
        try:
            if rule.op == "remove":
                if len(rule.parts) == 1:
                    del event[part]
                else:
                    _remove(event[part], rule.parts[1:])
                event.setdefault("erased", []).append(rule.path)
            else:
                value = copy.deepcopy(rule.value)  # a later rule may change it in this event
                if len(rule.parts) == 1:
                    event[part] = value
                elif isinstance(event[part], dict):
                    _upsert(event[part], rule.parts[1:], value)
                else:
                    continue
                event.setdefault("masked", []).append(rule.path)
        except _Missing:
            continue


def _index(key: str, items: list[Any], *, extend: bool = False) -> int:
    if not key.isdigit() or not key.isascii():
        raise _Missing
    index = int(key)
    if index >= len(items) and not extend:
        raise _Missing
    return index


def _remove(node: Any, path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        if isinstance(node, dict):
            if key not in node:
                raise _Missing
            node = node[key]
        elif isinstance(node, list):
            node = node[_index(key, node)]
        else:
            raise _Missing
    last = path[-1]
    if isinstance(node, dict):
        if last not in node:
            raise _Missing
        del node[last]
    elif isinstance(node, list):
        del node[_index(last, node)]
    else:
        raise _Missing


def _upsert(node: Any, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list):
            # OPA walks past the end of a list into nothing: the rule then fails.
            index = _index(key, node, extend=True)
            if index >= len(node):
                raise _Missing
            node = node[index]
        else:
            raise _Missing
    last = path[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list):
        node[_index(last, node)] = value
    else:
        raise _Missing

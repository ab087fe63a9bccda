"""Records as Redis values: each record type a canonical JSON object of its dataclass fields.

Bytes are base64, selectors ``["type", "value"]`` pairs, integers signed 64-bit. Every field is
type-checked on the way in, so a wrong value is refused, naming the field, before anything is
written; a stored value that no longer reads back is a ``StoreError``. Index members that must
sort by a number use ``ordered_member``: Redis compares them byte by byte (ZRANGEBYLEX).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from ca.store.base import StoreError
from ca.store.records import (
    AgentRecord,
    AuditRecord,
    AuthorityRecord,
    FederatedBundleRecord,
    IssuanceRecord,
    JoinTokenRecord,
    RegistrationEntry,
    Revocation,
    Selector,
    canonical_json,
)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class _Unstorable(Exception):
    """A field value of the wrong type or range; becomes a ``StoreError`` naming it."""


def _encode_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Unstorable
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not text Redis (or SQLite) can store
        raise _Unstorable from None
    return value


def _encode_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Unstorable
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise _Unstorable
    return int(value)


def _encode_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Unstorable
    return value


def _encode_bytes(value: object) -> str:
    if not isinstance(value, bytes | bytearray):
        raise _Unstorable
    return base64.b64encode(value).decode("ascii")


def _encode_sequence(value: object, item: Callable[[object], object]) -> list[object]:
    if not isinstance(value, tuple | list):
        raise _Unstorable
    return [item(element) for element in value]


def _encode_selector(value: object) -> list[str]:
    if not isinstance(value, Selector):
        raise _Unstorable
    return [_encode_str(value.type), _encode_str(value.value)]


def _encode_json_object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Unstorable
    return value


class _FieldCodec(NamedTuple):
    expected: str
    encode: Callable[[object], object]
    decode: Callable[[Any], object]


# Keyed by the annotation as written in records.py; a field of any other type fails at import.
_FIELD_CODECS: dict[str, _FieldCodec] = {
    "str": _FieldCodec("a string", _encode_str, str),
    "int": _FieldCodec("a 64-bit integer", _encode_int, int),
    "bool": _FieldCodec("a bool", _encode_bool, bool),
    "bytes": _FieldCodec("bytes", _encode_bytes, base64.b64decode),
    "tuple[bytes, ...]": _FieldCodec(
        "a tuple of bytes",
        lambda v: _encode_sequence(v, _encode_bytes),
        lambda v: tuple(base64.b64decode(der) for der in v),
    ),
    "tuple[str, ...]": _FieldCodec(
        "a tuple of strings", lambda v: _encode_sequence(v, _encode_str), tuple
    ),
    "tuple[Selector, ...]": _FieldCodec(
        "a tuple of Selectors",
        lambda v: _encode_sequence(v, _encode_selector),
        lambda v: tuple(Selector(type_, value) for type_, value in v),
    ),
    "dict[str, Any]": _FieldCodec("a JSON object", _encode_json_object, dict),
}

_R = TypeVar("_R")


class RecordCodec(Generic[_R]):
    """One record type as a canonical JSON object of its fields."""

    def __init__(self, cls: type[_R], what: str) -> None:
        self._cls = cls
        self._what = what
        self._fields = [
            (field.name, _FIELD_CODECS[str(field.type)])
            for field in dataclasses.fields(cls)  # type: ignore[arg-type]
        ]

    def encode(self, record: _R, subject: str) -> str:
        """The stored JSON; ``StoreError`` naming ``subject`` and the field of a wrong type."""
        encoded: dict[str, object] = {}
        for field_name, codec in self._fields:
            value = getattr(record, field_name)
            try:
                encoded[field_name] = codec.encode(value)
            except _Unstorable:
                raise StoreError(
                    f"cannot store {subject}: {field_name} must be {codec.expected}, not {value!r}"
                ) from None
        return canonical_json(encoded)

    def decode(self, text: str) -> _R:
        try:
            stored = _json_loads(text)
            return self._cls(
                **{
                    name: codec.decode(stored[name])
                    for name, codec in self._fields
                    if name in stored
                }
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise StoreError(f"stored {self._what} is unreadable: {exc}") from exc


def _json_loads(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


AUTHORITIES = RecordCodec(AuthorityRecord, "authority")
ISSUANCES = RecordCodec(IssuanceRecord, "issuance")
ENTRIES = RecordCodec(RegistrationEntry, "registration entry")
REVOCATIONS = RecordCodec(Revocation, "revocation")
AUDIT = RecordCodec(AuditRecord, "audit record")
FEDERATED_BUNDLES = RecordCodec(FederatedBundleRecord, "federated bundle")
JOIN_TOKENS = RecordCodec(JoinTokenRecord, "join token")
AGENTS = RecordCodec(AgentRecord, "agent")


def _sortable(value: int) -> str:
    """``value`` (any signed 64-bit integer) as 20 digits that sort like the number."""
    return f"{value - _INT64_MIN:020d}"


def ordered_member(sort_value: int, recorded: int, tail: str) -> str:
    """A lex-ordered index member: by ``sort_value``, then recording order, then ``tail``."""
    return f"{_sortable(sort_value)}:{recorded:020d}:{tail}"


# Where the tail (a serial, or a whole record) starts in an ``ordered_member``.
MEMBER_TAIL = len(ordered_member(0, 0, ""))

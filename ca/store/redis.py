"""The shared backend: one Redis (standalone, Sentinel or Cluster) behind several replicas.

URL forms (query options are redis-py's connection options, such as ``socket_timeout``,
``socket_connect_timeout``, ``max_connections`` and the ``ssl_*`` settings):

- ``redis://[[user]:password@]host[:port][/db][?option=value...]``, ``rediss://`` for TLS;
- ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``;
- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?...]``
  (Sentinels on port 26379 by default): the current master of ``service``. The credentials
  are the master's; Sentinels are asked without any. ``rediss+sentinel://`` uses TLS to both;
- ``redis+cluster://[[user]:password@]host[:port][,host[:port]...][?...]``: a Redis Cluster
  found from any listed node (db 0 only); ``rediss+cluster://`` uses TLS.

Socket timeouts default to 5 s, so a dead or frozen server fails a call instead of hanging
it, and redis-py's automatic retries are off (a replayed transaction would no longer be
watched): a failed call raises ``StoreError`` and the caller decides whether to repeat it.
When the connection drops after EXEC was sent, the message says the outcome is unknown.

Every read-modify-write is one MULTI/EXEC guarded by WATCH on the keys it read, retried from
the read when another client got there first; so two replicas creating the same entry, or
appending to the audit chain at once, serialise like SQLite's ``BEGIN IMMEDIATE``. Records are
JSON objects of their dataclass fields (bytes as base64), and every field is type-checked before
anything is written. Key layout, where ``{authd}:`` is the key prefix ``authd:`` made into a
Cluster hash tag so one store's keys share one slot and its transactions work on a Cluster::

    {authd}:schema                         string  schema version
    {authd}:authorities                    hash    authority_id -> record
    {authd}:seq:<name>                     string  counter (INCR)
    {authd}:issuance:<serial>              string  record
    {authd}:issuances                      zset    "<issued_at>:<recorded #>:<serial>", by lex
    {authd}:issuances:by-spiffe-id:<id>    zset    the same members, for one SPIFFE ID
    {authd}:issuances:by-authority:<id>    zset    ... for one authority
    {authd}:issuances:by-kind:<kind>       zset    ... for one kind
    {authd}:entry:<entry_id>               string  record
    {authd}:entries                        set     every entry_id
    {authd}:entries:by-spiffe-id:<id>      set     entry_ids
    {authd}:entries:by-parent-id:<id>      set     entry_ids
    {authd}:entries:by-selector:<json>     set     entry_ids; <json> is ["type","value"]
    {authd}:entries:by-signature:<sha256>  string  the entry_id holding that (spiffe_id,
                                                   parent_id, selector set)
    {authd}:revocation:<json>              string  its index member; <json> is ["kind","target"]
    {authd}:revocations                    zset    "<revoked_at>:<recorded #>:<record>", by lex
    {authd}:revocations:by-kind:<kind>     zset    the same members, for one target kind
    {authd}:order:<issuances|revocations>  string  recording counters that order ties
    {authd}:audit                          zset    record, scored by seq
    {authd}:audit:by-subject:<subject>     zset    record, scored by seq
    {authd}:changes                        stream  the change feed
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Generic, NamedTuple, Protocol, TypedDict, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.connection import parse_url
from redis.exceptions import RedisClusterException, ResponseError, WatchError
from redis.retry import Retry
from redis.sentinel import Sentinel

from ca.store.base import AlreadyExists, Conflict, NotFound, SchemaError, Store, StoreError
from ca.store.records import (
    AUDIT_GENESIS_HASH,
    AuditRecord,
    AuthorityRecord,
    IssuanceRecord,
    RegistrationEntry,
    Revocation,
    Selector,
    canonical_json,
    link_audit_record,
)

SCHEMA_VERSION = 1
DEFAULT_KEY_PREFIX = "authd:"
DEFAULT_SOCKET_TIMEOUT = 5.0
CHANGES_MAXLEN = 100_000  # approximate (MAXLEN ~): Redis trims whole stream nodes

REDIS_URL_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)

_SENTINEL_PORT = 26379
_REDIS_PORT = 6379
_MAX_ATTEMPTS = 200  # optimistic-transaction retries before giving up on contention
_PAGE = 500  # members per round trip when walking an index
_CHANGES_BATCH = 1000  # most events one changes_since call returns
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# -- the change feed -------------------------------------------------------------------


class Change(TypedDict):
    """One change-feed event. ``key`` is the authority_id, the entry_id, or for a
    revocation ``"<target_kind>:<target>"`` (target kinds never contain a colon)."""

    id: str
    kind: str  # "revocation" | "entry" | "authority"
    op: str  # "add" | "remove" | "update"
    key: str


class ChangeFeedGap(StoreError):
    """Events after the consumer's last id are gone (trimmed, or the feed was reset): the
    consumer must rebuild its whole view from the store."""


class ChangeFeed(Protocol):
    """What a view kept in step with the store (e.g. the revocation view) consumes.

    To (re)build: ``last = latest_change_id()``, then load the view from the store, then
    apply ``changes_since(last)`` in a loop; events the load already saw replay harmlessly
    if applying is idempotent. On ``ChangeFeedGap``, rebuild.
    """

    def latest_change_id(self) -> str: ...

    def changes_since(
        self, last_id: str, *, block_ms: int | None = None
    ) -> tuple[str, list[Change]]: ...


# -- record encoding -------------------------------------------------------------------


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


class _RecordCodec(Generic[_R]):
    """One record type as a canonical JSON object of its fields."""

    def __init__(self, cls: type[_R], what: str) -> None:
        self._cls = cls
        self._what = what
        self._fields = [
            (field.name, _FIELD_CODECS[str(field.type)])
            for field in dataclasses.fields(cls)  # type: ignore[arg-type]
        ]

    def encode(self, record: _R, name: str) -> str:
        """The stored JSON; ``StoreError`` naming the field if one has the wrong type."""
        encoded: dict[str, object] = {}
        for field_name, codec in self._fields:
            value = getattr(record, field_name)
            try:
                encoded[field_name] = codec.encode(value)
            except _Unstorable:
                raise StoreError(
                    f"cannot store {self._what} {name!r}: {field_name} must be"
                    f" {codec.expected}, not {value!r}"
                ) from None
        return canonical_json(encoded)

    def decode(self, text: str) -> _R:
        try:
            stored = _json_loads(text)
            return self._cls(
                **{name: codec.decode(stored[name]) for name, codec in self._fields if name in stored}
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise StoreError(f"stored {self._what} is unreadable: {exc}") from exc


def _json_loads(text: str) -> dict[str, Any]:
    import json

    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


_AUTHORITIES = _RecordCodec(AuthorityRecord, "authority")
_ISSUANCES = _RecordCodec(IssuanceRecord, "issuance with serial")
_ENTRIES = _RecordCodec(RegistrationEntry, "registration entry")
_REVOCATIONS = _RecordCodec(Revocation, "revocation of")
_AUDIT = _RecordCodec(AuditRecord, "audit record")


def _sortable(value: int) -> str:
    """``value`` (any signed 64-bit integer) as 20 digits that sort like the number."""
    return f"{value - _INT64_MIN:020d}"


def _ordered_member(sort_value: int, recorded: int, tail: str) -> str:
    """A lex-ordered index member: by ``sort_value``, then recording order, then ``tail``."""
    return f"{_sortable(sort_value)}:{recorded:020d}:{tail}"


_MEMBER_TAIL = len(_ordered_member(0, 0, ""))


def _selector_json(selector: Selector) -> str:
    return canonical_json([selector.type, selector.value])


def _entry_signature(entry: RegistrationEntry) -> str:
    """The hash of what makes two entries duplicates: same IDs and the same selector set."""
    selectors = sorted({(s.type, s.value) for s in entry.selectors})
    encoded = canonical_json([entry.spiffe_id, entry.parent_id, selectors])
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def _revocation_key(target_kind: str, target: str) -> str:
    return canonical_json([target_kind, target])


# -- key layout ------------------------------------------------------------------------


class _Keys:
    """Every key name of one store, all under one Cluster hash tag."""

    def __init__(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("the key prefix must not be empty")
        # A prefix with its own hash tag is used as given; otherwise "authd:" -> "{authd}:".
        tagged = re.search(r"\{[^{}]+\}", prefix) is not None
        self.prefix = prefix if tagged else "{" + prefix.rstrip(":") + "}:"
        if self.prefix == "{}:":
            raise ValueError(f"key prefix {prefix!r} leaves an empty hash tag")
        p = self.prefix
        self.schema = p + "schema"
        self.authorities = p + "authorities"
        self.issuances = p + "issuances"
        self.issuance_order = p + "order:issuances"
        self.entries = p + "entries"
        self.revocations = p + "revocations"
        self.revocation_order = p + "order:revocations"
        self.audit = p + "audit"
        self.changes = p + "changes"

    def sequence(self, name: str) -> str:
        return f"{self.prefix}seq:{name}"

    def issuance(self, serial: str) -> str:
        return f"{self.prefix}issuance:{serial}"

    def issuances_by(self, what: str, value: str) -> str:
        return f"{self.prefix}issuances:by-{what}:{value}"

    def entry(self, entry_id: str) -> str:
        return f"{self.prefix}entry:{entry_id}"

    def entries_by(self, what: str, value: str) -> str:
        return f"{self.prefix}entries:by-{what}:{value}"

    def entry_indexes(self, entry: RegistrationEntry) -> set[str]:
        """The index sets that list ``entry``."""
        return {
            self.entries_by("spiffe-id", entry.spiffe_id),
            self.entries_by("parent-id", entry.parent_id),
        } | {self.entries_by("selector", _selector_json(s)) for s in entry.selectors}

    def revocation(self, target_kind: str, target: str) -> str:
        return f"{self.prefix}revocation:{_revocation_key(target_kind, target)}"

    def revocations_by_kind(self, target_kind: str) -> str:
        return f"{self.prefix}revocations:by-kind:{target_kind}"

    def audit_by_subject(self, subject: str) -> str:
        return f"{self.prefix}audit:by-subject:{subject}"


# -- URLs and clients ------------------------------------------------------------------

_Client = redis.Redis | RedisCluster
_Pipe = Pipeline | ClusterPipeline
_T = TypeVar("_T")
_Write = Callable[[_Pipe], None]


def redact_url(url: str) -> str:
    """``url`` with its password (in the userinfo or a ``password`` query option) as ``***``."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    netloc, tail = (rest, "") if cut < 0 else (rest[:cut], rest[cut:])
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***" if colon else "***"
    path, question, query = tail.partition("?")
    if question:
        fragment_cut = query.find("#")
        if fragment_cut >= 0:
            query = query[:fragment_cut]
        pairs = [
            (name, "***" if "password" in name.lower() else value)
            for name, value in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*:/")
    return f"{scheme}://{userinfo}{at}{hosts}{path}{question}{query}"


def _url_secrets(url: str) -> list[str]:
    """The password spellings in ``url``, to scrub from any message that might echo them."""
    secrets: list[str] = []
    _, _, rest = url.partition("://")
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, _ = netloc.rpartition("@")
    if at:
        secrets += [userinfo.partition(":")[2] or userinfo]
    query = rest.partition("?")[2].partition("#")[0]
    secrets += [v for n, v in parse_qsl(query) if "password" in n.lower()]
    return sorted({s for raw in secrets if raw for s in (raw, unquote(raw))}, key=len, reverse=True)


def _addresses(hosts: str, default_port: int) -> list[tuple[str, int]]:
    """``host[:port],...`` (IPv6 in brackets) as (host, port) pairs."""
    found = []
    for item in hosts.split(","):
        match = re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+)(?::(\d+))?", item.strip())
        if match is None:
            raise ValueError(f"{item!r} is not host[:port]")
        host, port = match.group(1).strip("[]"), match.group(2)
        found.append((unquote(host), default_port if port is None else int(port)))
    return found


def _client_for(url: str) -> tuple[_Client, list[redis.Redis], float | None]:
    """The client for ``url``, any helper clients to close with it, and its socket timeout.

    Raises ``ValueError`` or ``TypeError`` for a malformed URL and redis-py's errors for one
    that names no reachable server (only a Cluster client connects before its first call).
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in REDIS_URL_SCHEMES:
        raise ValueError(f"the scheme must be one of {', '.join(REDIS_URL_SCHEMES)}")
    base, _, mode = scheme.partition("+")
    fixed: dict[str, Any] = {
        "decode_responses": True,
        "protocol": 2,  # the replies parsed below are RESP2's shapes
        "retry": Retry(NoBackoff(), 0),
    }
    defaults = {
        "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
        "socket_connect_timeout": DEFAULT_SOCKET_TIMEOUT,
    }
    if not mode:
        options = {**defaults, **parse_url(url), **fixed}
        client = redis.Redis(connection_pool=redis.ConnectionPool(**options))
        client.auto_close_connection_pool = True
        return client, [], options["socket_timeout"]

    netloc, _, tail = re.split(r"([/?#])", rest, maxsplit=1) + ["", ""] if "/" in rest or "?" in rest else (rest, "", "")  # noqa: E501
    raise NotImplementedError


class RedisStore(Store):
    """The store in a Redis shared by every replica; see the module docstring for URLs and keys."""

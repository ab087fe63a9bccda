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
anything is written.

The change feed: every change to an authority, entry or revocation XADDs ``{kind, op, key}``
to the ``changes`` stream (MAXLEN ~ 100000) inside the MULTI/EXEC that makes the change, so
the feed never shows a change that did not happen, nor misses one that did. XREAD alone
cannot tell a consumer that changes after its last id were trimmed away, so
``changes_since`` compares that id with XINFO STREAM in the same transaction and raises
``ChangeFeedGap``: the consumer must then reload its whole view from the store.

Key layout, where ``{authd}:`` is the key prefix ``authd:`` made into a
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
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
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
from redis.sentinel import MasterNotFoundError, Sentinel
from redis.typing import EncodableT, FieldT

from ca.store.base import (
    AlreadyExists,
    Conflict,
    NotFound,
    SchemaError,
    Store,
    StoreError,
    next_audit_record,
)
from ca.store.records import (
    AuditRecord,
    AuthorityRecord,
    IssuanceRecord,
    RegistrationEntry,
    Revocation,
    Selector,
    canonical_json,
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


_AUTHORITIES = _RecordCodec(AuthorityRecord, "authority")
_ISSUANCES = _RecordCodec(IssuanceRecord, "issuance")
_ENTRIES = _RecordCodec(RegistrationEntry, "registration entry")
_REVOCATIONS = _RecordCodec(Revocation, "revocation")
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


def _has_hash_tag(prefix: str) -> bool:
    """True if Redis Cluster hashes every key starting with ``prefix`` by a tag inside it:
    the text between the first ``{`` and the first ``}`` after it, when not empty."""
    start = prefix.find("{")
    return start >= 0 and prefix.find("}", start + 1) > start + 1


class _Keys:
    """Every key name of one store, all under one Cluster hash tag."""

    def __init__(self, prefix: str) -> None:
        # A prefix with its own hash tag is used as given; otherwise "authd:" -> "{authd}:".
        self.prefix = prefix if _has_hash_tag(prefix) else "{" + prefix.rstrip(":") + "}:"
        if not _has_hash_tag(self.prefix):
            raise ValueError(f"key prefix {prefix!r} cannot be made into a Cluster hash tag")
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
    netloc, tail = _split_netloc(rest)
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
    netloc, tail = _split_netloc(url.partition("://")[2])
    userinfo, at, _ = netloc.rpartition("@")
    if at:
        secrets += [userinfo.partition(":")[2] or userinfo]
    query = tail.partition("?")[2].partition("#")[0]
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
        options = {**defaults, **_parse_url(url), **fixed}
        client = redis.Redis(connection_pool=redis.ConnectionPool(**options))
        client.auto_close_connection_pool = True
        return client, [], options["socket_timeout"]

    # Several hosts, so redis-py's parse_url cannot read the netloc; it still parses the
    # credentials and query options, from a stand-in URL with one host.
    netloc, tail = _split_netloc(rest)
    userinfo, at, hosts = netloc.rpartition("@")
    path, _, query = tail.partition("#")[0].partition("?")
    options = _parse_url(f"{base}://{userinfo}{at}localhost/?{query}")
    for stand_in in ("host", "port", "connection_class"):
        options.pop(stand_in, None)
    options = {**defaults, **options, **fixed}
    tls = base == "rediss"
    if mode == "sentinel":
        parts = [unquote(part) for part in path.strip("/").split("/")] if path.strip("/") else []
        if len(parts) not in (1, 2):
            raise ValueError("a Sentinel URL's path is /service_name[/db]")
        if len(parts) == 2 and "db" not in options:
            options["db"] = int(parts[1])
        sentinel_options = {
            name: value for name, value in options.items() if name.startswith(("socket_", "ssl_"))
        }
        sentinel_options["retry"] = Retry(NoBackoff(), 0)
        if tls:
            options["ssl"] = sentinel_options["ssl"] = True
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            _addresses(hosts, _SENTINEL_PORT), sentinel_kwargs=sentinel_options, **options
        )
        master: redis.Redis = sentinel.master_for(parts[0])  # type: ignore[no-untyped-call,unused-ignore]
        return master, list(sentinel.sentinels), options["socket_timeout"]
    if path.strip("/"):
        raise ValueError("a Cluster URL has no path: a Cluster has only db 0")
    if options.pop("db", 0) != 0:
        raise ValueError("a Cluster has only db 0")
    retry = options.pop("retry")
    nodes = [
        ClusterNode(host, port)  # type: ignore[no-untyped-call,unused-ignore]
        for host, port in _addresses(hosts, _REDIS_PORT)
    ]
    cluster = RedisCluster(startup_nodes=nodes, retry=retry, ssl=tls, **options)
    return cluster, [], options["socket_timeout"]


def _parse_url(url: str) -> dict[str, Any]:
    """redis-py's reading of a ``redis://``, ``rediss://`` or ``unix://`` URL as client options."""
    options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call,unused-ignore]
    return options


def _split_netloc(rest: str) -> tuple[str, str]:
    """The part of a URL after ``scheme://`` as (netloc, everything from the next / ? or #)."""
    match = re.match(r"([^/?#]*)(.*)", rest, re.DOTALL)
    assert match is not None  # both groups match the empty string
    return match.group(1), match.group(2)


def _text(value: object) -> str:
    """A reply value; the client decodes responses, so this is already ``str``."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"expected a string reply, got {type(value).__name__}")
    return value


def _stream_id(text: str) -> tuple[int, int]:
    """A stream entry id ``<ms>-<seq>`` (or ``0``) as a comparable pair."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if match is None:
        raise ValueError(f"{text!r} is not a stream entry id like '1700000000000-0'")
    return int(match.group(1)), int(match.group(2) or 0)


def _as_dict(reply: Any) -> dict[str, Any]:
    """A map reply, parsed (a dict) or raw (``[name, value, ...]``): redis-py parses replies in
    a standalone transaction but leaves them raw in a Cluster one."""
    if isinstance(reply, dict):
        return reply
    if not isinstance(reply, list) or len(reply) % 2:
        raise TypeError(f"expected a map reply, got {reply!r}")
    return {_text(name): value for name, value in zip(reply[::2], reply[1::2], strict=True)}


def _changes(reply: Any) -> list[Change]:
    """The events of an XREAD reply on the one changes stream (parsed or raw)."""
    if not reply:
        return []
    [(_, entries)] = reply.items() if isinstance(reply, dict) else reply
    changes = []
    for entry_id, raw_fields in entries:
        fields = _as_dict(raw_fields)
        changes.append(
            Change(
                id=_text(entry_id),
                kind=_text(fields["kind"]),
                op=_text(fields["op"]),
                key=_text(fields["key"]),
            )
        )
    return changes


@contextmanager
def _transaction_pipeline(client: _Client) -> Iterator[_Pipe]:
    """A MULTI/EXEC pipeline whose connection always goes back to the pool, clean."""
    pipe = client.pipeline(transaction=True)
    try:
        yield pipe
    finally:
        try:
            pipe.reset()
        except (redis.RedisError, OSError):
            _drop_connection(pipe)


def _drop_connection(pipe: _Pipe) -> None:
    """Work around redis-py's reset, which handles only ConnectionError: when its UNWATCH
    times out (a frozen server), the connection stays checked out of the pool for good, with
    a late reply pending. Disconnect it, so neither a WATCH nor that reply survives, and reset
    again without UNWATCH. (A ClusterPipeline keeps this state in its transaction strategy.)"""
    state = getattr(pipe, "_execution_strategy", pipe)
    connection = getattr(state, "connection", None) or getattr(
        state, "_transaction_connection", None
    )
    if connection is not None:
        connection.disconnect()
    for flag in ("watching", "_watching"):
        if hasattr(state, flag):
            setattr(state, flag, False)
    with suppress(redis.RedisError, OSError):
        pipe.reset()


def _lost_connection(exc: WatchError) -> bool:
    """True if redis-py raised ``exc`` because the connection dropped, not because a watched
    key changed: then EXEC may or may not have run."""
    return isinstance(exc.__context__, redis.ConnectionError | redis.TimeoutError | OSError)


# -- the store -------------------------------------------------------------------------


class RedisStore(Store):
    """The store in a Redis shared by every replica; see the module docstring for URL forms,
    key layout and how the transactions work. Also a ``ChangeFeed``."""

    def __init__(self, url: str, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self._url = redact_url(url)
        self._secrets = _url_secrets(url)
        self._keys = _Keys(key_prefix)
        self._lock = threading.Lock()
        self._client: _Client | None = None
        self._helpers: list[redis.Redis] = []
        self._block_slice_ms = 0
        try:
            self._client, self._helpers, timeout = _client_for(url)
            # Blocking reads wait in slices shorter than the socket timeout, never tripping it.
            self._block_slice_ms = max(1, int((timeout or DEFAULT_SOCKET_TIMEOUT) * 500))
            self._check_schema()  # also the first connection, where bad options show up
        except (ValueError, TypeError) as exc:
            self.close()
            raise StoreError(self._scrub(f"invalid redis store URL {self._url}: {exc}")) from None
        except (redis.RedisError, RedisClusterException) as exc:
            self.close()
            raise self._failure(exc) from exc
        except BaseException:
            self.close()
            raise

    def _check_schema(self) -> None:
        with self._call() as client:
            client.set(self._keys.schema, SCHEMA_VERSION, nx=True)
            stored = client.get(self._keys.schema)
        version = self._parse_schema_version(stored)
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"redis store {self._url} (key prefix {self._keys.prefix!r}) has schema version"
                f" {version}, but this authd only knows versions up to {SCHEMA_VERSION}:"
                " upgrade authd to open it"
            )

    def _parse_schema_version(self, stored: bytes | str | None) -> int:
        try:
            return int(_text(stored or ""))
        except ValueError:
            raise StoreError(
                f"redis store {self._url} has an unreadable schema version {stored!r}"
            ) from None

    # -- plumbing ------------------------------------------------------------------------

    def _scrub(self, message: str) -> str:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return message

    def _failure(self, exc: BaseException, *, outcome_unknown: bool = False) -> StoreError:
        reason = str(exc)
        if isinstance(exc, MasterNotFoundError):
            reason = reason.partition(" : ")[0]  # then the repr of every Sentinel client
        unreachable = isinstance(exc, redis.ConnectionError | redis.TimeoutError) or (
            isinstance(exc, RedisClusterException) and "cannot be connected" in reason
        )
        if unreachable:
            message = f"cannot reach redis store {self._url}: {reason}"
        else:
            message = f"redis store {self._url}: {reason}"
        if outcome_unknown:
            message += " (the connection dropped after the write was sent: it may have applied)"
        return StoreError(self._scrub(message))

    @contextmanager
    def _call(self) -> Iterator[_Client]:
        """The client; redis-py's errors (and text Redis cannot encode) become ``StoreError``."""
        client = self._client
        if client is None:
            raise StoreError(f"redis store {self._url} is closed")
        try:
            yield client
        except (redis.RedisError, RedisClusterException, UnicodeError) as exc:
            raise self._failure(exc) from exc

    def _transaction(
        self, watched: Sequence[str], prepare: Callable[[_Pipe], tuple[_Write, _T]]
    ) -> _T:
        """Run ``prepare`` (reads, checks) with ``watched`` under WATCH, then the writes it
        returns in MULTI/EXEC; start over if a watched key changed before EXEC."""
        with self._call() as client:
            for attempt in range(_MAX_ATTEMPTS):
                with _transaction_pipeline(client) as pipe:
                    try:
                        pipe.watch(*watched)  # type: ignore[no-untyped-call,unused-ignore]
                        write, result = prepare(pipe)
                        pipe.multi()
                        write(pipe)
                    except WatchError as exc:  # the connection dropped; nothing was sent
                        raise self._failure(exc.__context__ or exc) from exc
                    try:
                        pipe.execute()
                        return result
                    except WatchError as exc:
                        if _lost_connection(exc):
                            cause = exc.__context__ or exc
                            raise self._failure(cause, outcome_unknown=True) from exc
                    except (redis.ConnectionError, redis.TimeoutError) as exc:
                        raise self._failure(exc, outcome_unknown=True) from exc
                # Jitter only spreads out retries; it needs no cryptographic randomness.
                time.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 20)))  # noqa: S311
        raise StoreError(
            f"redis store {self._url}: gave up after {_MAX_ATTEMPTS} conflicting attempts"
        )

    def _add_change(self, pipe: _Pipe, kind: str, op: str, key: str) -> None:
        fields: dict[FieldT, EncodableT] = {"kind": kind, "op": op, "key": key}
        pipe.xadd(self._keys.changes, fields, maxlen=CHANGES_MAXLEN, approximate=True)

    def __enter__(self) -> RedisStore:  # so ``with`` keeps the change-feed methods typed
        return self

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            helpers, self._helpers = self._helpers, []
        for closable in [client, *helpers]:
            if closable is not None:
                closable.close()

    def schema_version(self) -> int:
        with self._call() as client:
            stored = client.get(self._keys.schema)
        return self._parse_schema_version(stored)

    # -- authorities ---------------------------------------------------------------------

    def get_authority(self, authority_id: str) -> AuthorityRecord:
        with self._call() as client:
            stored = client.hget(self._keys.authorities, authority_id)
        if stored is None:
            raise NotFound(f"authority {authority_id!r} not found")
        return _AUTHORITIES.decode(_text(stored))

    def list_authorities(self, kind: str | None = None) -> list[AuthorityRecord]:
        with self._call() as client:
            stored = client.hvals(self._keys.authorities)
        records = [_AUTHORITIES.decode(_text(value)) for value in stored]
        return sorted(
            (r for r in records if kind is None or r.kind == kind),
            key=lambda r: (r.not_before, r.created_at, r.authority_id),
        )

    def save_authorities(self, records: Sequence[AuthorityRecord]) -> None:
        encoded = {
            r.authority_id: _AUTHORITIES.encode(r, f"authority {r.authority_id!r}") for r in records
        }
        if not encoded:
            return
        mapping: dict[FieldT, EncodableT] = {key: value for key, value in encoded.items()}

        def prepare(pipe: _Pipe) -> tuple[_Write, None]:
            existing = pipe.hmget(self._keys.authorities, list(encoded))

            def write(pipe: _Pipe) -> None:
                pipe.hset(self._keys.authorities, mapping=mapping)
                for authority_id, before in zip(encoded, existing, strict=True):
                    self._add_change(
                        pipe, "authority", "add" if before is None else "update", authority_id
                    )

            return write, None

        self._transaction([self._keys.authorities], prepare)

    def delete_authority(self, authority_id: str) -> None:
        def prepare(pipe: _Pipe) -> tuple[_Write, None]:
            if not pipe.hexists(self._keys.authorities, authority_id):
                raise NotFound(f"authority {authority_id!r} not found")

            def write(pipe: _Pipe) -> None:
                pipe.hdel(self._keys.authorities, authority_id)
                self._add_change(pipe, "authority", "remove", authority_id)

            return write, None

        self._transaction([self._keys.authorities], prepare)

    # -- counters ------------------------------------------------------------------------

    def next_sequence(self, name: str) -> int:
        with self._call() as client:
            return int(client.incr(self._keys.sequence(name)))

    def current_sequence(self, name: str) -> int:
        with self._call() as client:
            stored = client.get(self._keys.sequence(name))
        return 0 if stored is None else int(_text(stored))

    # -- issuance log --------------------------------------------------------------------

    def record_issuances(self, records: Sequence[IssuanceRecord]) -> None:
        encoded = [(r, _ISSUANCES.encode(r, f"issuance with serial {r.serial!r}")) for r in records]
        serials = [r.serial for r in records]
        repeated = sorted({s for s in serials if serials.count(s) > 1})
        if repeated:
            raise AlreadyExists(self._issued_already(repeated, len(records)))
        if not encoded:
            return
        with self._call() as client:
            # Numbers handed out and then not used (a failed batch) only leave gaps.
            last = int(client.incrby(self._keys.issuance_order, len(records)))
        first = last - len(records) + 1
        keys = [self._keys.issuance(serial) for serial in serials]

        def prepare(pipe: _Pipe) -> tuple[_Write, None]:
            # One EXISTS for the batch; naming the taken serials costs more, but only on failure.
            # (No MGET: redis-py refuses it in a Cluster pipeline.)
            if pipe.exists(*keys):
                taken = [s for s, key in zip(serials, keys, strict=True) if pipe.exists(key)]
                raise AlreadyExists(self._issued_already(taken, len(records)))

            def write(pipe: _Pipe) -> None:
                for n, ((record, value), key) in enumerate(zip(encoded, keys, strict=True)):
                    pipe.set(key, value)
                    member = {_ordered_member(record.issued_at, first + n, record.serial): 0}
                    for index in (
                        self._keys.issuances,
                        self._keys.issuances_by("spiffe-id", record.spiffe_id),
                        self._keys.issuances_by("authority", record.authority_id),
                        self._keys.issuances_by("kind", record.kind),
                    ):
                        pipe.zadd(index, member)

            return write, None

        self._transaction(keys, prepare)

    @staticmethod
    def _issued_already(serials: Sequence[str], batch: int) -> str:
        named = ", ".join(repr(s) for s in serials[:3])
        return f"issuance with serial {named} already recorded (batch of {batch})"

    def get_issuance(self, serial: str) -> IssuanceRecord:
        with self._call() as client:
            stored = client.get(self._keys.issuance(serial))
        if stored is None:
            raise NotFound(f"issuance with serial {serial!r} not found")
        return _ISSUANCES.decode(_text(stored))

    def list_issuances(
        self,
        *,
        spiffe_id: str | None = None,
        authority_id: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[IssuanceRecord]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        # Walk the most selective index newest first; the other filters apply per record.
        if spiffe_id is not None:
            index = self._keys.issuances_by("spiffe-id", spiffe_id)
        elif authority_id is not None:
            index = self._keys.issuances_by("authority", authority_id)
        elif kind is not None:
            index = self._keys.issuances_by("kind", kind)
        else:
            index = self._keys.issuances
        found: list[IssuanceRecord] = []
        upper = "+"
        with self._call() as client:
            while limit is None or len(found) < limit:
                members = [_text(m) for m in client.zrevrangebylex(index, upper, "-", 0, _PAGE)]
                if not members:
                    break
                upper = "(" + members[-1]
                stored = client.mget([self._keys.issuance(m[_MEMBER_TAIL:]) for m in members])
                for value in stored:
                    if value is None:
                        continue
                    record = _ISSUANCES.decode(_text(value))
                    if (
                        (spiffe_id is None or record.spiffe_id == spiffe_id)
                        and (authority_id is None or record.authority_id == authority_id)
                        and (kind is None or record.kind == kind)
                    ):
                        found.append(record)
        return found if limit is None else found[:limit]

    # -- registration entries ------------------------------------------------------------

    def create_entry(self, entry: RegistrationEntry) -> RegistrationEntry:
        stored = replace(entry, revision=0)
        value = _ENTRIES.encode(stored, f"registration entry {stored.entry_id!r}")
        entry_key = self._keys.entry(stored.entry_id)
        signature_key = self._keys.entries_by("signature", _entry_signature(stored))

        def prepare(pipe: _Pipe) -> tuple[_Write, RegistrationEntry]:
            if pipe.exists(entry_key):
                raise AlreadyExists(f"registration entry {stored.entry_id!r} already exists")
            self._refuse_duplicate_selectors(pipe, signature_key, stored)

            def write(pipe: _Pipe) -> None:
                pipe.set(entry_key, value)
                pipe.set(signature_key, stored.entry_id)
                pipe.sadd(self._keys.entries, stored.entry_id)
                for index in self._keys.entry_indexes(stored):
                    pipe.sadd(index, stored.entry_id)
                self._add_change(pipe, "entry", "add", stored.entry_id)

            return write, stored

        return self._transaction([entry_key, signature_key], prepare)

    @staticmethod
    def _refuse_duplicate_selectors(
        pipe: _Pipe, signature_key: str, entry: RegistrationEntry
    ) -> None:
        holder = pipe.get(signature_key)
        if holder is not None and _text(holder) != entry.entry_id:
            raise AlreadyExists(
                f"registration entry {_text(holder)!r} already maps the same selectors under"
                f" parent {entry.parent_id!r} to {entry.spiffe_id!r}"
            )

    def get_entry(self, entry_id: str) -> RegistrationEntry:
        with self._call() as client:
            stored = client.get(self._keys.entry(entry_id))
        if stored is None:
            raise NotFound(f"registration entry {entry_id!r} not found")
        return _ENTRIES.decode(_text(stored))

    def list_entries(
        self,
        *,
        spiffe_id: str | None = None,
        parent_id: str | None = None,
        selector: Selector | None = None,
    ) -> list[RegistrationEntry]:
        indexes = []
        if spiffe_id is not None:
            indexes.append(self._keys.entries_by("spiffe-id", spiffe_id))
        if parent_id is not None:
            indexes.append(self._keys.entries_by("parent-id", parent_id))
        if selector is not None:
            indexes.append(self._keys.entries_by("selector", _selector_json(selector)))
        with self._call() as client:
            ids = sorted(
                _text(i)
                for i in (
                    client.sinter(indexes) if indexes else client.smembers(self._keys.entries)
                )
            )
            stored = []
            for start in range(0, len(ids), _PAGE):
                page = ids[start : start + _PAGE]
                stored += client.mget([self._keys.entry(i) for i in page])
        entries = [_ENTRIES.decode(_text(value)) for value in stored if value is not None]
        # An entry changed between the index read and the record read must still match.
        matching = [
            e
            for e in entries
            if (spiffe_id is None or e.spiffe_id == spiffe_id)
            and (parent_id is None or e.parent_id == parent_id)
            and (selector is None or selector in e.selectors)
        ]
        return sorted(matching, key=lambda e: (e.created_at, e.entry_id))

    def update_entry(
        self, entry: RegistrationEntry, *, expected_revision: int
    ) -> RegistrationEntry:
        described = f"registration entry {entry.entry_id!r}"
        _ENTRIES.encode(entry, described)  # type errors before any round trip
        entry_key = self._keys.entry(entry.entry_id)
        signature = _entry_signature(entry)
        signature_key = self._keys.entries_by("signature", signature)

        def prepare(pipe: _Pipe) -> tuple[_Write, RegistrationEntry]:
            current = pipe.get(entry_key)
            if current is None:
                raise NotFound(f"registration entry {entry.entry_id!r} not found")
            old = _ENTRIES.decode(_text(current))
            if old.revision != expected_revision:
                raise Conflict(
                    f"registration entry {entry.entry_id!r} is at revision {old.revision},"
                    f" not {expected_revision}"
                )
            stored = replace(entry, revision=old.revision + 1, created_at=old.created_at)
            value = _ENTRIES.encode(stored, described)
            self._refuse_duplicate_selectors(pipe, signature_key, stored)
            old_indexes, new_indexes = (
                self._keys.entry_indexes(old),
                self._keys.entry_indexes(stored),
            )

            def write(pipe: _Pipe) -> None:
                pipe.set(entry_key, value)
                if _entry_signature(old) != signature:
                    pipe.delete(self._keys.entries_by("signature", _entry_signature(old)))
                    pipe.set(signature_key, stored.entry_id)
                for index in old_indexes - new_indexes:
                    pipe.srem(index, stored.entry_id)
                for index in new_indexes - old_indexes:
                    pipe.sadd(index, stored.entry_id)
                self._add_change(pipe, "entry", "update", stored.entry_id)

            return write, stored

        return self._transaction([entry_key, signature_key], prepare)

    def delete_entry(self, entry_id: str) -> None:
        entry_key = self._keys.entry(entry_id)

        def prepare(pipe: _Pipe) -> tuple[_Write, None]:
            current = pipe.get(entry_key)
            if current is None:
                raise NotFound(f"registration entry {entry_id!r} not found")
            old = _ENTRIES.decode(_text(current))

            def write(pipe: _Pipe) -> None:
                pipe.delete(entry_key, self._keys.entries_by("signature", _entry_signature(old)))
                pipe.srem(self._keys.entries, entry_id)
                for index in self._keys.entry_indexes(old):
                    pipe.srem(index, entry_id)
                self._add_change(pipe, "entry", "remove", entry_id)

            return write, None

        self._transaction([entry_key], prepare)

    # -- revocations ---------------------------------------------------------------------

    def add_revocation(self, revocation: Revocation) -> None:
        name = f"{revocation.target_kind} {revocation.target!r}"
        value = _REVOCATIONS.encode(revocation, f"the revocation of {name}")
        key = self._keys.revocation(revocation.target_kind, revocation.target)
        with self._call() as client:
            recorded = int(client.incr(self._keys.revocation_order))
        member = {_ordered_member(revocation.revoked_at, recorded, value): 0}

        def prepare(pipe: _Pipe) -> tuple[_Write, None]:
            if pipe.exists(key):
                raise AlreadyExists(f"{name} is already revoked")

            def write(pipe: _Pipe) -> None:
                [text] = member
                pipe.set(key, text)
                pipe.zadd(self._keys.revocations, member)
                pipe.zadd(self._keys.revocations_by_kind(revocation.target_kind), member)
                self._add_change(
                    pipe, "revocation", "add", f"{revocation.target_kind}:{revocation.target}"
                )

            return write, None

        self._transaction([key], prepare)

    def get_revocation(self, target_kind: str, target: str) -> Revocation:
        with self._call() as client:
            stored = client.get(self._keys.revocation(target_kind, target))
        if stored is None:
            raise NotFound(f"{target_kind} {target!r} is not revoked")
        return _REVOCATIONS.decode(_text(stored)[_MEMBER_TAIL:])

    def remove_revocation(self, target_kind: str, target: str) -> None:
        key = self._keys.revocation(target_kind, target)

        def prepare(pipe: _Pipe) -> tuple[_Write, None]:
            member = pipe.get(key)
            if member is None:
                raise NotFound(f"{target_kind} {target!r} is not revoked")

            def write(pipe: _Pipe) -> None:
                pipe.delete(key)
                pipe.zrem(self._keys.revocations, _text(member))
                pipe.zrem(self._keys.revocations_by_kind(target_kind), _text(member))
                self._add_change(pipe, "revocation", "remove", f"{target_kind}:{target}")

            return write, None

        self._transaction([key], prepare)

    def list_revocations(self, target_kind: str | None = None) -> list[Revocation]:
        index = (
            self._keys.revocations
            if target_kind is None
            else self._keys.revocations_by_kind(target_kind)
        )
        with self._call() as client:
            members = client.zrangebylex(index, "-", "+")
        return [_REVOCATIONS.decode(_text(m)[_MEMBER_TAIL:]) for m in members]

    # -- audit ---------------------------------------------------------------------------

    def append_audit(
        self,
        *,
        time: int,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any],
    ) -> AuditRecord:
        def prepare(pipe: _Pipe) -> tuple[_Write, AuditRecord]:
            last = pipe.zrange(self._keys.audit, -1, -1)
            previous = _AUDIT.decode(_text(last[0])) if last else None
            record = next_audit_record(
                None if previous is None else (previous.seq, previous.hash),
                time=time,
                actor=actor,
                action=action,
                subject=subject,
                details=details,
            )
            member = {_AUDIT.encode(record, f"audit record {record.seq}"): record.seq}

            def write(pipe: _Pipe) -> None:
                pipe.zadd(self._keys.audit, member)
                pipe.zadd(self._keys.audit_by_subject(subject), member)

            return write, record

        return self._transaction([self._keys.audit], prepare)

    def list_audit(
        self,
        *,
        since: int | None = None,
        subject: str | None = None,
        after_seq: int | None = None,
    ) -> list[AuditRecord]:
        index = self._keys.audit if subject is None else self._keys.audit_by_subject(subject)
        lower = "-inf" if after_seq is None else f"({after_seq}"
        records: list[AuditRecord] = []
        with self._call() as client:
            while True:
                page = client.zrangebyscore(index, lower, "+inf", start=0, num=_PAGE)
                records += [_AUDIT.decode(_text(member)) for member in page]
                if len(page) < _PAGE:
                    break
                lower = f"({records[-1].seq}"
        return [r for r in records if since is None or r.time >= since]

    # -- change feed ---------------------------------------------------------------------

    def latest_change_id(self) -> str:
        """The id of the newest change (``0-0`` if there was none): the point a view loaded
        from the store now is up to date with."""
        with self._call() as client:
            if not client.exists(self._keys.changes):
                return "0-0"
            info = client.xinfo_stream(self._keys.changes)
        return _text(info["last-generated-id"])

    def changes_since(
        self, last_id: str, *, block_ms: int | None = None
    ) -> tuple[str, list[Change]]:
        """Changes after ``last_id`` (at most 1000, oldest first) and the id to ask from next.

        With ``block_ms``, waits up to that long for a first change when there is none yet.
        Raises ``ChangeFeedGap`` when changes after ``last_id`` were trimmed away (the feed
        keeps about ``CHANGES_MAXLEN``) or the feed was reset: XREAD alone would silently
        skip them, so this compares ``last_id`` with XINFO STREAM in the same transaction.
        """
        after = _stream_id(last_id)
        if block_ms is not None and block_ms <= 0:
            raise ValueError(f"block_ms must be positive, got {block_ms}")
        stream = self._keys.changes
        with self._call() as client:
            with _transaction_pipeline(client) as pipe:
                pipe.xinfo_stream(stream)
                pipe.xread({stream: last_id}, count=_CHANGES_BATCH)
                info, reply = pipe.execute(raise_on_error=False)
            if isinstance(reply, Exception):
                raise reply
            self._refuse_gap(last_id, after, info)
            changes = _changes(reply)
            if block_ms is None or changes:
                return (changes[-1]["id"] if changes else last_id), changes
            # Anything arriving from here on is newer than the check above; trimming it
            # before it is read would take CHANGES_MAXLEN further changes meanwhile.
            deadline = time.monotonic() + block_ms / 1000
            while (remaining_ms := int((deadline - time.monotonic()) * 1000)) > 0:
                wait_ms = min(remaining_ms, self._block_slice_ms)
                reply = client.xread({stream: last_id}, count=_CHANGES_BATCH, block=wait_ms)
                changes = _changes(reply)
                if changes:
                    return changes[-1]["id"], changes
        return last_id, []

    def _refuse_gap(self, last_id: str, after: tuple[int, int], info: object) -> None:
        """``ChangeFeedGap`` unless every change after ``after`` is still in the feed.

        Trimming drops the oldest changes, so a consumer is behind a gap when its last id is
        older than the first one left (conservative: it may have seen exactly the last one
        dropped). An id the feed never had, older or newer than all it has, means the feed was
        reset. Only ``0-0``, "from the start", is fine before the first change if none were
        ever dropped.
        """
        if isinstance(info, ResponseError) and "no such key" in str(info).lower():
            if after != (0, 0):
                raise self._gap(f"the change feed is gone (last id {last_id})")
            return
        if isinstance(info, Exception):
            raise info
        info = _as_dict(info)
        if "entries-added" not in info:
            raise StoreError(f"redis store {self._url}: the change feed needs Redis 7.0 or newer")
        newest = _stream_id(_text(info["last-generated-id"]))
        if after > newest:
            raise self._gap(f"change {last_id} is newer than the feed's newest, so it was reset")
        length = int(info["length"])
        dropped = int(info["entries-added"]) - length
        if after == (0, 0) and dropped == 0:
            return
        oldest_left = _stream_id(_text(info["recorded-first-entry-id"])) if length else None
        if (after < newest) if oldest_left is None else (after < oldest_left):
            raise self._gap(f"changes after {last_id} are no longer in the feed")

    def _gap(self, what: str) -> ChangeFeedGap:
        return ChangeFeedGap(f"redis store {self._url}: {what}: rebuild the view from the store")

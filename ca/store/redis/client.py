"""Reaching Redis (standalone, Sentinel or Cluster) from a store URL, and talking to it safely.

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
Messages never show the URL's password.

Every read-modify-write is one MULTI/EXEC guarded by WATCH on the keys it read
(``RedisConnection.transaction``), retried from the read when another client got there
first; so two replicas creating the same entry, or appending to the audit chain at once,
serialise like SQLite's ``BEGIN IMMEDIATE``. Under ``store.durability = "replicas"`` a
transaction returns only once enough replicas acknowledged it (``WAIT``, after a ``PING`` on the
same connection so it waits for everything written so far, on any connection); else it raises
``NotDurable`` (``ca.store.durability``).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.connection import parse_url
from redis.exceptions import RedisClusterException, WatchError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from ca.store.base import StoreError
from ca.store.durability import Durability, NotDurable, Persistence
from ca.store.urls import REDIS_URL_SCHEMES, redact_url, split_netloc, url_secrets

DEFAULT_SOCKET_TIMEOUT = 5.0

_SENTINEL_PORT = 26379
_REDIS_PORT = 6379
_MAX_ATTEMPTS = 200  # optimistic-transaction retries before giving up on contention

Client = redis.Redis | RedisCluster
Pipe = Pipeline | ClusterPipeline
Write = Callable[[Pipe], None]
_T = TypeVar("_T")


class RedisConnection:
    """One store's client for ``url``: redis-py's errors come out as ``StoreError``, scrubbed of
    the URL's password. Connects lazily, except to a Cluster, which is found at once."""

    def __init__(self, url: str, *, durability: Durability | None = None) -> None:
        self.url = redact_url(url)
        self.durability = durability or Durability()
        self._secrets = url_secrets(url)
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._helpers: list[redis.Redis] = []
        self.block_slice_ms = 0
        with self.opening():
            self._client, self._helpers, timeout = _client_for(url)
            # Blocking reads wait in slices shorter than the socket timeout, never tripping it.
            self.block_slice_ms = max(1, int((timeout or DEFAULT_SOCKET_TIMEOUT) * 500))

    @contextmanager
    def opening(self) -> Iterator[None]:
        """Around the first calls: a bad URL (some options fail only on first connection)
        becomes ``StoreError`` naming it, and any failure closes the connection."""
        try:
            yield
        except (ValueError, TypeError) as exc:
            self.close()
            raise StoreError(self.scrub(f"invalid redis store URL {self.url}: {exc}")) from None
        except (redis.RedisError, RedisClusterException) as exc:
            self.close()
            raise self.failure(exc) from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the client and its helpers; closing twice is harmless."""
        with self._lock:
            client, self._client = self._client, None
            helpers, self._helpers = self._helpers, []
        for closable in [client, *helpers]:
            if closable is not None:
                closable.close()

    def scrub(self, message: str) -> str:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return message

    def failure(self, exc: BaseException, *, outcome_unknown: bool = False) -> StoreError:
        """``exc`` as the ``StoreError`` callers see."""
        reason = str(exc)
        if isinstance(exc, MasterNotFoundError):
            reason = reason.partition(" : ")[0]  # then the repr of every Sentinel client
        unreachable = isinstance(exc, redis.ConnectionError | redis.TimeoutError) or (
            isinstance(exc, RedisClusterException) and "cannot be connected" in reason
        )
        if unreachable:
            message = f"cannot reach redis store {self.url}: {reason}"
        else:
            message = f"redis store {self.url}: {reason}"
        if outcome_unknown:
            message += " (the connection dropped after the write was sent: it may have applied)"
        return StoreError(self.scrub(message))

    @contextmanager
    def call(self) -> Iterator[Client]:
        """The client; redis-py's errors (and text Redis cannot encode) become ``StoreError``."""
        client = self._client
        if client is None:
            raise StoreError(f"redis store {self.url} is closed")
        try:
            yield client
        except (redis.RedisError, RedisClusterException, UnicodeError) as exc:
            raise self.failure(exc) from exc

    def transaction(
        self, watched: Sequence[str], prepare: Callable[[Pipe], tuple[Write, _T]]
    ) -> _T:
        """Run ``prepare`` (reads, checks) with ``watched`` under WATCH, then the writes it
        returns in MULTI/EXEC; start over if a watched key changed before EXEC."""
        with self.call() as client:
            for attempt in range(_MAX_ATTEMPTS):
                with transaction_pipeline(client) as pipe:
                    try:
                        pipe.watch(*watched)  # type: ignore[no-untyped-call,unused-ignore]
                        write, result = prepare(pipe)
                        pipe.multi()
                        write(pipe)
                    except WatchError as exc:  # the connection dropped; nothing was sent
                        raise self.failure(exc.__context__ or exc) from exc
                    try:
                        pipe.execute()
                    except WatchError as exc:
                        if _lost_connection(exc):
                            cause = exc.__context__ or exc
                            raise self.failure(cause, outcome_unknown=True) from exc
                    except (redis.ConnectionError, redis.TimeoutError) as exc:
                        raise self.failure(exc, outcome_unknown=True) from exc
                    else:
                        self.await_replicas(client, watched[0] if watched else "")
                        return result
                # Jitter only spreads out retries; it needs no cryptographic randomness.
                time.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 20)))  # noqa: S311
        raise StoreError(
            f"redis store {self.url}: gave up after {_MAX_ATTEMPTS} conflicting attempts"
        )

    def await_replicas(self, client: Client, key: str) -> None:
        """Under ``replicas`` durability: return once enough replicas hold every write made so
        far on the master holding ``key``, else raise ``NotDurable``. WAIT runs in slices
        shorter than the socket timeout, until ``durability.timeout``."""
        wanted = self.durability.replicas
        if not self.durability.needs_replicas:
            return
        master = _master_for(client, key)
        deadline = time.monotonic() + self.durability.timeout
        acknowledged = 0
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            slice_ms = max(1, min(remaining_ms, self.block_slice_ms))
            try:
                with master.pipeline(transaction=False) as pipe:
                    # WAIT waits for the offset of its connection's previous command: the
                    # PING makes that offset include this write, whichever connection it used.
                    pipe.ping()
                    pipe.execute_command("WAIT", wanted, slice_ms)  # type: ignore[no-untyped-call,unused-ignore]
                    acknowledged = int(pipe.execute()[1])
            except (redis.RedisError, RedisClusterException, OSError) as exc:
                raise NotDurable(
                    self.scrub(
                        f"redis store {self.url}: the write was applied on the master, but"
                        f" waiting for {wanted} replica(s) to acknowledge it failed ({exc}):"
                        " it is not acknowledged as durable; it may still be there, or be"
                        " lost if the master fails now"
                    )
                ) from exc
            if acknowledged >= wanted:
                return
            if remaining_ms <= slice_ms:
                raise NotDurable(
                    f"redis store {self.url}: the write was applied on the master, but only"
                    f" {acknowledged} of {wanted} replica(s) acknowledged it within"
                    f" {self.durability.timeout:g}s (store.durability = replicas): it is not"
                    " acknowledged as durable; it may still be there, or be lost if the master"
                    " fails now"
                )

    def persistence(self) -> list[Persistence]:
        """Every master's persistence and replication (one, unless a Cluster): ``CONFIG GET``,
        or ``INFO`` where CONFIG is renamed or refused."""
        with self.call() as client:
            masters = _masters(client)
            return [_persistence(master) for master in masters]


def _master_for(client: Client, key: str) -> redis.Redis:
    """The client of the master that holds ``key`` (the client itself unless a Cluster)."""
    if not isinstance(client, RedisCluster):
        return client
    node = client.get_node_from_key(key)  # type: ignore[no-untyped-call,unused-ignore]
    if node is None or node.redis_connection is None:
        raise StoreError(f"no Cluster node serves the key {key!r}")
    master: redis.Redis = node.redis_connection
    return master


def _masters(client: Client) -> list[redis.Redis]:
    if not isinstance(client, RedisCluster):
        return [client]
    primaries = client.get_primaries()  # type: ignore[no-untyped-call,unused-ignore]
    return [node.redis_connection for node in primaries if node.redis_connection]


def _persistence(master: redis.Redis) -> Persistence:
    replication = master.info("replication")
    try:
        settings = master.config_get("append*")
    except redis.ResponseError:  # CONFIG renamed away (rename-command) or refused by an ACL
        return Persistence.from_info(master.info("persistence"), replication)
    return Persistence(
        appendonly=str(settings.get("appendonly", "no")).lower() == "yes",
        appendfsync=str(settings.get("appendfsync", "")).lower(),
        connected_replicas=int(replication.get("connected_slaves", 0)),
        role=str(replication.get("role", "master")),
    )


def reply_text(value: object) -> str:
    """A reply value; the client decodes responses, so this is already ``str``."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"expected a string reply, got {type(value).__name__}")
    return value


@contextmanager
def transaction_pipeline(client: Client) -> Iterator[Pipe]:
    """A MULTI/EXEC pipeline whose connection always goes back to the pool, clean."""
    pipe = client.pipeline(transaction=True)
    try:
        yield pipe
    finally:
        try:
            pipe.reset()
        except (redis.RedisError, OSError):
            _drop_connection(pipe)


def _drop_connection(pipe: Pipe) -> None:
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


# -- from a URL to a client ------------------------------------------------------------


def _client_for(url: str) -> tuple[Client, list[redis.Redis], float | None]:
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
        "protocol": 2,  # the replies parsed in feed.py are RESP2's shapes
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
    netloc, tail = split_netloc(rest)
    userinfo, at, hosts = netloc.rpartition("@")
    path, _, query = tail.partition("#")[0].partition("?")
    options = _parse_url(f"{base}://{userinfo}{at}localhost/?{query}")
    for stand_in in ("host", "port", "connection_class"):
        options.pop(stand_in, None)
    options = {**defaults, **options, **fixed}
    tls = base == "rediss"
    if mode == "sentinel":
        return _sentinel_master(hosts, path, options, tls=tls)
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


def _sentinel_master(
    hosts: str, path: str, options: dict[str, Any], *, tls: bool
) -> tuple[Client, list[redis.Redis], float | None]:
    """The master client a Sentinel URL names, and its Sentinel clients (to close with it)."""
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


def _parse_url(url: str) -> dict[str, Any]:
    """redis-py's reading of a ``redis://``, ``rediss://`` or ``unix://`` URL as client options."""
    options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call,unused-ignore]
    return options


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

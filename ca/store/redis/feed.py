"""The change feed of a Redis store: a Redis stream every replica reads.

Every change to an authority, entry or revocation XADDs ``{kind, op, key}`` to the
``changes`` stream (MAXLEN ~ ``CHANGES_MAXLEN``) inside the MULTI/EXEC that makes the change
(``add_change``), so the feed never shows a change that did not happen, nor misses one that
did. XREAD alone cannot tell a consumer that changes after its last id were trimmed away, so
``changes_since`` compares that id with XINFO STREAM in the same transaction and raises
``ChangeFeedGap``: the consumer must then reload its whole view from the store.
"""

from __future__ import annotations

import re
import time
from typing import Any

from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from ca.store.base import Change, ChangeFeedGap, StoreError
from ca.store.redis.client import Pipe, RedisConnection, reply_text, transaction_pipeline

CHANGES_MAXLEN = 100_000  # approximate (MAXLEN ~): Redis trims whole stream nodes
_CHANGES_BATCH = 1000  # most events one changes_since call returns


def add_change(pipe: Pipe, stream: str, kind: str, op: str, key: str) -> None:
    """Queue the event for one change on ``pipe``, in the transaction that makes the change."""
    fields: dict[FieldT, EncodableT] = {"kind": kind, "op": op, "key": key}
    pipe.xadd(stream, fields, maxlen=CHANGES_MAXLEN, approximate=True)


class RedisChangeFeed:
    """The ``ChangeFeed`` of one Redis store, read from its ``stream`` key."""

    def __init__(self, connection: RedisConnection, stream: str) -> None:
        self._redis = connection
        self._stream = stream

    def latest_change_id(self) -> str:
        """The id of the newest change (``0-0`` if there was none): the point a view loaded
        from the store now is up to date with."""
        with self._redis.call() as client:
            if not client.exists(self._stream):
                return "0-0"
            info = client.xinfo_stream(self._stream)
        return reply_text(info["last-generated-id"])

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
        stream = self._stream
        with self._redis.call() as client:
            with transaction_pipeline(client) as pipe:
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
                wait_ms = min(remaining_ms, self._redis.block_slice_ms)
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
            raise StoreError(
                f"redis store {self._redis.url}: the change feed needs Redis 7.0 or newer"
            )
        newest = _stream_id(reply_text(info["last-generated-id"]))
        if after > newest:
            raise self._gap(f"change {last_id} is newer than the feed's newest, so it was reset")
        length = int(info["length"])
        dropped = int(info["entries-added"]) - length
        if after == (0, 0) and dropped == 0:
            return
        oldest_left = _stream_id(reply_text(info["recorded-first-entry-id"])) if length else None
        if (after < newest) if oldest_left is None else (after < oldest_left):
            raise self._gap(f"changes after {last_id} are no longer in the feed")

    def _gap(self, what: str) -> ChangeFeedGap:
        return ChangeFeedGap(
            f"redis store {self._redis.url}: {what}: rebuild the view from the store"
        )


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
    return {reply_text(name): value for name, value in zip(reply[::2], reply[1::2], strict=True)}


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
                id=reply_text(entry_id),
                kind=reply_text(fields["kind"]),
                op=reply_text(fields["op"]),
                key=reply_text(fields["key"]),
            )
        )
    return changes

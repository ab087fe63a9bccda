"""The audit chain in Redis: linking a change's audit records after the chain's head inside
the change's own transaction, and reading the chain back.

The chain is a sorted set of encoded records scored by ``seq`` (plus one per subject). A
transaction that appends watches the set, reads its last member, and links the new records
after it, so two replicas appending at once never fork the chain: one of them retries.
"""

from __future__ import annotations

from collections.abc import Sequence

from ca.store.base import AuditDraft, link_audit_drafts
from ca.store.records import AUDIT_GENESIS_HASH, AuditRecord
from ca.store.redis.client import Pipe, RedisConnection, reply_text
from ca.store.redis.codec import AUDIT
from ca.store.redis.keys import KeyLayout

PAGE = 500  # members per round trip when walking an index

Linked = list[tuple[AuditRecord, str]]


class RedisAuditChain:
    """The audit records of one store's key layout."""

    def __init__(self, redis: RedisConnection, keys: KeyLayout) -> None:
        self._redis = redis
        self._keys = keys

    def watched(self, keys: Sequence[str], drafts: Sequence[AuditDraft]) -> list[str]:
        """``keys``, and the chain's head when the change appends to it."""
        return [*keys, self._keys.audit] if drafts else list(keys)

    def link(self, pipe: Pipe, drafts: Sequence[AuditDraft]) -> Linked:
        """``drafts`` linked after the chain's head (read under the caller's WATCH of it),
        each with its encoded member."""
        if not drafts:
            return []
        previous = self._last(pipe.zrange(self._keys.audit, -1, -1))
        records = link_audit_drafts(
            None if previous is None else (previous.seq, previous.hash), drafts
        )
        return [(r, AUDIT.encode(r, f"audit record {r.seq}")) for r in records]

    def write(self, pipe: Pipe, linked: Linked) -> None:
        for record, member in linked:
            pipe.zadd(self._keys.audit, {member: record.seq})
            pipe.zadd(self._keys.audit_by_subject(record.subject), {member: record.seq})

    def head(self) -> tuple[int, str]:
        """The last record's seq and hash (0 and the genesis hash for an empty chain)."""
        with self._redis.call() as client:
            last = self._last(client.zrange(self._keys.audit, -1, -1))
        return (0, AUDIT_GENESIS_HASH) if last is None else (last.seq, last.hash)

    def records(
        self,
        *,
        since: int | None = None,
        subject: str | None = None,
        after_seq: int | None = None,
    ) -> list[AuditRecord]:
        index = self._keys.audit if subject is None else self._keys.audit_by_subject(subject)
        lower = "-inf" if after_seq is None else f"({after_seq}"
        records: list[AuditRecord] = []
        with self._redis.call() as client:
            while True:
                page = client.zrangebyscore(index, lower, "+inf", start=0, num=PAGE)
                records += [AUDIT.decode(reply_text(member)) for member in page]
                if len(page) < PAGE:
                    break
                lower = f"({records[-1].seq}"
        return [r for r in records if since is None or r.time >= since]

    @staticmethod
    def _last(members: Sequence[object]) -> AuditRecord | None:
        return AUDIT.decode(reply_text(members[0])) if members else None

"""``RedisStore``: the store in one Redis (standalone, Sentinel or Cluster) shared by replicas.

``client`` reaches the server from the URL and runs each read-modify-write as one watched
MULTI/EXEC; ``codec`` turns records into values and back; ``keys`` names every key under one
Cluster hash tag; ``feed`` records each change on the stream other replicas follow
(``change_feed()``), in the same transaction as the change. A change's audit records go in that
transaction too: it watches the audit chain's head and links them after it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from redis.typing import EncodableT, FieldT

from ca.store.base import (
    AlreadyExists,
    Audit,
    AuditDraft,
    Conflict,
    NotFound,
    SchemaError,
    Store,
    StoreError,
    audit_drafts,
)
from ca.store.durability import Durability
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
    StorePosition,
)
from ca.store.redis.audit import PAGE, RedisAuditChain
from ca.store.redis.client import Pipe, RedisConnection, Write, reply_text
from ca.store.redis.codec import (
    AGENTS,
    AUTHORITIES,
    ENTRIES,
    FEDERATED_BUNDLES,
    ISSUANCES,
    JOIN_TOKENS,
    MEMBER_TAIL,
    REVOCATIONS,
    ordered_member,
)
from ca.store.redis.feed import RedisChangeFeed, add_change
from ca.store.redis.keys import DEFAULT_KEY_PREFIX, KeyLayout, selector_json
from ca.store.redis.lease import RedisRotationLease, fence_check
from ca.store.redis.wrapped_keys import RedisWrappedKeys

SCHEMA_VERSION = 1


class RedisStore(Store):
    """The store in a Redis shared by every replica; ``ca.store.redis.client`` documents the
    URL forms and ``ca.store.redis.keys`` the key layout. Its ``change_feed()`` is never None."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        durability: Durability | None = None,
    ) -> None:
        self._keys = KeyLayout(key_prefix)
        self._redis = RedisConnection(url, durability=durability)
        self._url = self._redis.url
        self._feed = RedisChangeFeed(self._redis, self._keys.changes)
        self._audit = RedisAuditChain(self._redis, self._keys)
        self._lease = RedisRotationLease(self._redis, self._keys)
        self._wrapped_keys = RedisWrappedKeys(self._redis, self._keys)
        with self._redis.opening():
            self._check_schema()  # also the first connection, where bad options show up

    def _check_schema(self) -> None:
        with self._redis.call() as client:
            client.set(self._keys.schema, SCHEMA_VERSION, nx=True)
            client.set(self._keys.generation, secrets.token_hex(16), nx=True)
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
            return int(reply_text(stored or ""))
        except ValueError:
            raise StoreError(
                f"redis store {self._url} has an unreadable schema version {stored!r}"
            ) from None

    def _add_change(self, pipe: Pipe, kind: str, op: str, key: str) -> None:
        add_change(pipe, self._keys.changes, kind, op, key)

    def change_feed(self) -> RedisChangeFeed:
        return self._feed

    def rotation_lease(self) -> RedisRotationLease:
        return self._lease

    def wrapped_keys(self) -> RedisWrappedKeys:
        return self._wrapped_keys

    def close(self) -> None:
        self._redis.close()

    def position(self) -> StorePosition:
        with self._redis.call() as client:
            generation = client.get(self._keys.generation)
        seq, digest = self._audit.head()
        return StorePosition(reply_text(generation) if generation is not None else "", seq, digest)

    def schema_version(self) -> int:
        with self._redis.call() as client:
            stored = client.get(self._keys.schema)
        return self._parse_schema_version(stored)

    # -- authorities ---------------------------------------------------------------------

    def get_authority(self, authority_id: str) -> AuthorityRecord:
        with self._redis.call() as client:
            stored = client.hget(self._keys.authorities, authority_id)
        if stored is None:
            raise NotFound(f"authority {authority_id!r} not found")
        return AUTHORITIES.decode(reply_text(stored))

    def list_authorities(self, kind: str | None = None) -> list[AuthorityRecord]:
        with self._redis.call() as client:
            stored = client.hvals(self._keys.authorities)
        records = [AUTHORITIES.decode(reply_text(value)) for value in stored]
        return sorted(
            (r for r in records if kind is None or r.kind == kind),
            key=lambda r: (r.not_before, r.created_at, r.authority_id),
        )

    def save_authorities(
        self,
        records: Sequence[AuthorityRecord],
        *,
        delete: Sequence[str] = (),
        audit: Audit = (),
        sequence: str | None = None,
        fence: int | None = None,
    ) -> None:
        encoded = {
            r.authority_id: AUTHORITIES.encode(r, f"authority {r.authority_id!r}") for r in records
        }
        drafts = audit_drafts(audit)
        if not (encoded or delete or drafts or sequence is not None):
            return
        mapping: dict[FieldT, EncodableT] = {key: value for key, value in encoded.items()}

        def prepare(pipe: Pipe) -> tuple[Write, None]:
            fence_check(pipe, self._keys, fence)
            existing = pipe.hmget(self._keys.authorities, list(encoded)) if encoded else []
            for authority_id in delete:
                if not pipe.hexists(self._keys.authorities, authority_id):
                    raise NotFound(f"authority {authority_id!r} not found")
            linked = self._audit.link(pipe, drafts)

            def write(pipe: Pipe) -> None:
                if mapping:
                    pipe.hset(self._keys.authorities, mapping=mapping)
                for authority_id, before in zip(encoded, existing, strict=True):
                    self._add_change(
                        pipe, "authority", "add" if before is None else "update", authority_id
                    )
                if delete:
                    pipe.hdel(self._keys.authorities, *delete)
                for authority_id in delete:
                    self._add_change(pipe, "authority", "remove", authority_id)
                if sequence is not None:
                    pipe.incr(self._keys.sequence(sequence))
                self._audit.write(pipe, linked)

            return write, None

        watched = [self._keys.authorities] + (
            [self._keys.rotation_fence] if fence is not None else []
        )
        self._redis.transaction(self._audit.watched(watched, drafts), prepare)

    def delete_authority(self, authority_id: str) -> None:
        def prepare(pipe: Pipe) -> tuple[Write, None]:
            if not pipe.hexists(self._keys.authorities, authority_id):
                raise NotFound(f"authority {authority_id!r} not found")

            def write(pipe: Pipe) -> None:
                pipe.hdel(self._keys.authorities, authority_id)
                self._add_change(pipe, "authority", "remove", authority_id)

            return write, None

        self._redis.transaction([self._keys.authorities], prepare)

    # -- counters ------------------------------------------------------------------------

    def next_sequence(self, name: str) -> int:
        with self._redis.call() as client:
            return int(client.incr(self._keys.sequence(name)))

    def current_sequence(self, name: str) -> int:
        with self._redis.call() as client:
            stored = client.get(self._keys.sequence(name))
        return 0 if stored is None else int(reply_text(stored))

    # -- issuance log --------------------------------------------------------------------

    def record_issuances(self, records: Sequence[IssuanceRecord]) -> None:
        encoded = [(r, ISSUANCES.encode(r, f"issuance with serial {r.serial!r}")) for r in records]
        serials = [r.serial for r in records]
        repeated = sorted({s for s in serials if serials.count(s) > 1})
        if repeated:
            raise AlreadyExists(self._issued_already(repeated, len(records)))
        if not encoded:
            return
        with self._redis.call() as client:
            # Numbers handed out and then not used (a failed batch) only leave gaps.
            last = int(client.incrby(self._keys.issuance_order, len(records)))
        first = last - len(records) + 1
        keys = [self._keys.issuance(serial) for serial in serials]

        def prepare(pipe: Pipe) -> tuple[Write, None]:
            # One EXISTS for the batch; naming the taken serials costs more, but only on failure.
            # (No MGET: redis-py refuses it in a Cluster pipeline.)
            if pipe.exists(*keys):
                taken = [s for s, key in zip(serials, keys, strict=True) if pipe.exists(key)]
                raise AlreadyExists(self._issued_already(taken, len(records)))

            def write(pipe: Pipe) -> None:
                for n, ((record, value), key) in enumerate(zip(encoded, keys, strict=True)):
                    pipe.set(key, value)
                    member = {ordered_member(record.issued_at, first + n, record.serial): 0}
                    for index in (
                        self._keys.issuances,
                        self._keys.issuances_by("spiffe-id", record.spiffe_id),
                        self._keys.issuances_by("authority", record.authority_id),
                        self._keys.issuances_by("kind", record.kind),
                    ):
                        pipe.zadd(index, member)

            return write, None

        self._redis.transaction(keys, prepare)

    @staticmethod
    def _issued_already(serials: Sequence[str], batch: int) -> str:
        named = ", ".join(repr(s) for s in serials[:3])
        return f"issuance with serial {named} already recorded (batch of {batch})"

    def get_issuance(self, serial: str) -> IssuanceRecord:
        with self._redis.call() as client:
            stored = client.get(self._keys.issuance(serial))
        if stored is None:
            raise NotFound(f"issuance with serial {serial!r} not found")
        return ISSUANCES.decode(reply_text(stored))

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
        with self._redis.call() as client:
            while limit is None or len(found) < limit:
                members = [reply_text(m) for m in client.zrevrangebylex(index, upper, "-", 0, PAGE)]
                if not members:
                    break
                upper = "(" + members[-1]
                stored = client.mget([self._keys.issuance(m[MEMBER_TAIL:]) for m in members])
                for value in stored:
                    if value is None:
                        continue
                    record = ISSUANCES.decode(reply_text(value))
                    if (
                        (spiffe_id is None or record.spiffe_id == spiffe_id)
                        and (authority_id is None or record.authority_id == authority_id)
                        and (kind is None or record.kind == kind)
                    ):
                        found.append(record)
        return found if limit is None else found[:limit]

    # -- registration entries ------------------------------------------------------------

    def create_entry(self, entry: RegistrationEntry, *, audit: Audit = ()) -> RegistrationEntry:
        stored = replace(entry, revision=0)
        value = ENTRIES.encode(stored, f"registration entry {stored.entry_id!r}")
        entry_key = self._keys.entry(stored.entry_id)
        signature_key = self._keys.entry_signature(stored)
        drafts = audit_drafts(audit)

        def prepare(pipe: Pipe) -> tuple[Write, RegistrationEntry]:
            if pipe.exists(entry_key):
                raise AlreadyExists(f"registration entry {stored.entry_id!r} already exists")
            self._refuse_duplicate_selectors(pipe, signature_key, stored)
            linked = self._audit.link(pipe, drafts)

            def write(pipe: Pipe) -> None:
                pipe.set(entry_key, value)
                pipe.set(signature_key, stored.entry_id)
                pipe.sadd(self._keys.entries, stored.entry_id)
                for index in self._keys.entry_indexes(stored):
                    pipe.sadd(index, stored.entry_id)
                self._add_change(pipe, "entry", "add", stored.entry_id)
                self._audit.write(pipe, linked)

            return write, stored

        return self._redis.transaction(
            self._audit.watched([entry_key, signature_key], drafts), prepare
        )

    @staticmethod
    def _refuse_duplicate_selectors(
        pipe: Pipe, signature_key: str, entry: RegistrationEntry
    ) -> None:
        holder = pipe.get(signature_key)
        if holder is not None and reply_text(holder) != entry.entry_id:
            raise AlreadyExists(
                f"registration entry {reply_text(holder)!r} already maps the same selectors under"
                f" parent {entry.parent_id!r} to {entry.spiffe_id!r}"
            )

    def get_entry(self, entry_id: str) -> RegistrationEntry:
        with self._redis.call() as client:
            stored = client.get(self._keys.entry(entry_id))
        if stored is None:
            raise NotFound(f"registration entry {entry_id!r} not found")
        return ENTRIES.decode(reply_text(stored))

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
            indexes.append(self._keys.entries_by("selector", selector_json(selector)))
        with self._redis.call() as client:
            ids = sorted(
                reply_text(i)
                for i in (
                    client.sinter(indexes) if indexes else client.smembers(self._keys.entries)
                )
            )
            stored = []
            for start in range(0, len(ids), PAGE):
                page = ids[start : start + PAGE]
                stored += client.mget([self._keys.entry(i) for i in page])
        entries = [ENTRIES.decode(reply_text(value)) for value in stored if value is not None]
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
        self, entry: RegistrationEntry, *, expected_revision: int, audit: Audit = ()
    ) -> RegistrationEntry:
        drafts = audit_drafts(audit)
        described = f"registration entry {entry.entry_id!r}"
        ENTRIES.encode(entry, described)  # type errors before any round trip
        entry_key = self._keys.entry(entry.entry_id)
        signature_key = self._keys.entry_signature(entry)

        def prepare(pipe: Pipe) -> tuple[Write, RegistrationEntry]:
            current = pipe.get(entry_key)
            if current is None:
                raise NotFound(f"registration entry {entry.entry_id!r} not found")
            old = ENTRIES.decode(reply_text(current))
            if old.revision != expected_revision:
                raise Conflict(
                    f"registration entry {entry.entry_id!r} is at revision {old.revision},"
                    f" not {expected_revision}"
                )
            stored = replace(entry, revision=old.revision + 1, created_at=old.created_at)
            value = ENTRIES.encode(stored, described)
            self._refuse_duplicate_selectors(pipe, signature_key, stored)
            old_indexes, new_indexes = (
                self._keys.entry_indexes(old),
                self._keys.entry_indexes(stored),
            )
            linked = self._audit.link(pipe, drafts)

            def write(pipe: Pipe) -> None:
                pipe.set(entry_key, value)
                if self._keys.entry_signature(old) != signature_key:
                    pipe.delete(self._keys.entry_signature(old))
                    pipe.set(signature_key, stored.entry_id)
                for index in old_indexes - new_indexes:
                    pipe.srem(index, stored.entry_id)
                for index in new_indexes - old_indexes:
                    pipe.sadd(index, stored.entry_id)
                self._add_change(pipe, "entry", "update", stored.entry_id)
                self._audit.write(pipe, linked)

            return write, stored

        return self._redis.transaction(
            self._audit.watched([entry_key, signature_key], drafts), prepare
        )

    def delete_entry(
        self, entry_id: str, *, expected_revision: int | None = None, audit: Audit = ()
    ) -> None:
        entry_key = self._keys.entry(entry_id)
        drafts = audit_drafts(audit)

        def prepare(pipe: Pipe) -> tuple[Write, None]:
            current = pipe.get(entry_key)
            if current is None:
                raise NotFound(f"registration entry {entry_id!r} not found")
            old = ENTRIES.decode(reply_text(current))
            if expected_revision is not None and old.revision != expected_revision:
                raise Conflict(
                    f"registration entry {entry_id!r} is at revision {old.revision},"
                    f" not {expected_revision}"
                )
            linked = self._audit.link(pipe, drafts)

            def write(pipe: Pipe) -> None:
                pipe.delete(entry_key, self._keys.entry_signature(old))
                pipe.srem(self._keys.entries, entry_id)
                for index in self._keys.entry_indexes(old):
                    pipe.srem(index, entry_id)
                self._add_change(pipe, "entry", "remove", entry_id)
                self._audit.write(pipe, linked)

            return write, None

        self._redis.transaction(self._audit.watched([entry_key], drafts), prepare)

    # -- revocations ---------------------------------------------------------------------

    def add_revocation(self, revocation: Revocation, *, audit: Audit = ()) -> None:
        drafts = audit_drafts(audit)
        name = f"{revocation.target_kind} {revocation.target!r}"
        value = REVOCATIONS.encode(revocation, f"the revocation of {name}")
        key = self._keys.revocation(revocation.target_kind, revocation.target)
        with self._redis.call() as client:
            recorded = int(client.incr(self._keys.revocation_order))
        member = {ordered_member(revocation.revoked_at, recorded, value): 0}

        def prepare(pipe: Pipe) -> tuple[Write, None]:
            if pipe.exists(key):
                raise AlreadyExists(f"{name} is already revoked")
            linked = self._audit.link(pipe, drafts)

            def write(pipe: Pipe) -> None:
                [text] = member
                pipe.set(key, text)
                pipe.zadd(self._keys.revocations, member)
                pipe.zadd(self._keys.revocations_by_kind(revocation.target_kind), member)
                self._add_change(
                    pipe, "revocation", "add", f"{revocation.target_kind}:{revocation.target}"
                )
                self._audit.write(pipe, linked)

            return write, None

        self._redis.transaction(self._audit.watched([key], drafts), prepare)

    def get_revocation(self, target_kind: str, target: str) -> Revocation:
        with self._redis.call() as client:
            stored = client.get(self._keys.revocation(target_kind, target))
        if stored is None:
            raise NotFound(f"{target_kind} {target!r} is not revoked")
        return REVOCATIONS.decode(reply_text(stored)[MEMBER_TAIL:])

    def remove_revocation(self, target_kind: str, target: str, *, audit: Audit = ()) -> None:
        key = self._keys.revocation(target_kind, target)
        drafts = audit_drafts(audit)

        def prepare(pipe: Pipe) -> tuple[Write, None]:
            member = pipe.get(key)
            if member is None:
                raise NotFound(f"{target_kind} {target!r} is not revoked")
            linked = self._audit.link(pipe, drafts)

            def write(pipe: Pipe) -> None:
                pipe.delete(key)
                pipe.zrem(self._keys.revocations, reply_text(member))
                pipe.zrem(self._keys.revocations_by_kind(target_kind), reply_text(member))
                self._add_change(pipe, "revocation", "remove", f"{target_kind}:{target}")
                self._audit.write(pipe, linked)

            return write, None

        self._redis.transaction(self._audit.watched([key], drafts), prepare)

    def list_revocations(self, target_kind: str | None = None) -> list[Revocation]:
        index = (
            self._keys.revocations
            if target_kind is None
            else self._keys.revocations_by_kind(target_kind)
        )
        with self._redis.call() as client:
            members = client.zrangebylex(index, "-", "+")
        return [REVOCATIONS.decode(reply_text(m)[MEMBER_TAIL:]) for m in members]

    # -- federated bundles ---------------------------------------------------------------
    # Not on the change feed: every replica polls the foreign endpoints itself.

    def save_federated_bundle(self, record: FederatedBundleRecord) -> None:
        value = FEDERATED_BUNDLES.encode(record, f"the bundle of {record.trust_domain!r}")
        with self._redis.call() as client:
            client.hset(self._keys.federated_bundles, record.trust_domain, value)

    def get_federated_bundle(self, trust_domain: str) -> FederatedBundleRecord:
        with self._redis.call() as client:
            stored = client.hget(self._keys.federated_bundles, trust_domain)
        if stored is None:
            raise NotFound(f"no bundle of trust domain {trust_domain!r}")
        return FEDERATED_BUNDLES.decode(reply_text(stored))

    def list_federated_bundles(self) -> list[FederatedBundleRecord]:
        with self._redis.call() as client:
            stored = client.hvals(self._keys.federated_bundles)
        records = [FEDERATED_BUNDLES.decode(reply_text(value)) for value in stored]
        return sorted(records, key=lambda r: r.trust_domain)

    def delete_federated_bundle(self, trust_domain: str) -> None:
        with self._redis.call() as client:
            if not client.hdel(self._keys.federated_bundles, trust_domain):
                raise NotFound(f"no bundle of trust domain {trust_domain!r}")

    # -- node agents ---------------------------------------------------------------------
    # Hashes, not on the change feed: only the node API reads them, from the store.

    def save_join_token(self, record: JoinTokenRecord) -> None:
        value = JOIN_TOKENS.encode(record, "a join token")
        with self._redis.call() as client:
            if not client.hsetnx(self._keys.join_tokens, record.token_hash, value):
                raise AlreadyExists("that join token exists already")

    def take_join_token(self, token_hash: str) -> JoinTokenRecord:
        with self._redis.call() as client:
            stored = client.hget(self._keys.join_tokens, token_hash)
            # HDEL answers 1 to exactly one caller: the one that used the token.
            if stored is None or not client.hdel(self._keys.join_tokens, token_hash):
                raise NotFound("no such join token (never made, or used already)")
        return JOIN_TOKENS.decode(reply_text(stored))

    def save_agent(self, record: AgentRecord) -> None:
        value = AGENTS.encode(record, f"agent {record.agent_id!r}")
        with self._redis.call() as client:
            client.hset(self._keys.agents, record.agent_id, value)

    def get_agent(self, agent_id: str) -> AgentRecord:
        with self._redis.call() as client:
            stored = client.hget(self._keys.agents, agent_id)
        if stored is None:
            raise NotFound(f"no agent {agent_id!r}")
        return AGENTS.decode(reply_text(stored))

    def list_agents(self) -> list[AgentRecord]:
        with self._redis.call() as client:
            stored = client.hvals(self._keys.agents)
        return sorted((AGENTS.decode(reply_text(v)) for v in stored), key=lambda r: r.agent_id)

    def delete_agent(self, agent_id: str) -> None:
        with self._redis.call() as client:
            if not client.hdel(self._keys.agents, agent_id):
                raise NotFound(f"no agent {agent_id!r}")

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
        draft = AuditDraft(time, actor, action, subject, details)

        def prepare(pipe: Pipe) -> tuple[Write, AuditRecord]:
            linked = self._audit.link(pipe, (draft,))

            def write(pipe: Pipe) -> None:
                self._audit.write(pipe, linked)

            return write, linked[0][0]

        return self._redis.transaction(self._audit.watched([], (draft,)), prepare)

    def list_audit(
        self,
        *,
        since: int | None = None,
        subject: str | None = None,
        after_seq: int | None = None,
    ) -> list[AuditRecord]:
        return self._audit.records(since=since, subject=subject, after_seq=after_seq)

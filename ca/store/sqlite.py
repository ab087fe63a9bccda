"""The embedded backend: one SQLite file (mode 0600) in WAL mode.

One connection is shared by all threads behind a lock; every call is short. Each mutation runs
in its own ``BEGIN IMMEDIATE`` transaction with the audit records that describe it, so a crash
(or a full disk) leaves either the old state or the new state and its audit.
The schema version lives in ``PRAGMA user_version`` and ``MIGRATIONS`` upgrades it in order.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from ca.store.base import (
    AlreadyExists,
    Audit,
    AuditDraft,
    Conflict,
    CorruptRecord,
    NotFound,
    SchemaError,
    Store,
    StoreError,
    audit_drafts,
    link_audit_drafts,
)
from ca.store.durability import Durability, sqlite_synchronous
from ca.store.records import (
    AUDIT_GENESIS_HASH,
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
    canonical_json,
)
from ca.store.snapshot import StoreSnapshot
from ca.store.sqlite_rows import (
    audit_to_row,
    authority_from_row,
    authority_to_row,
    entry_from_row,
    entry_to_row,
    issuance_to_row,
    revocation_to_row,
    selectors_from_json,
)
from ca.store.sqlite_schema import (
    AGENT_COLUMNS,
    AUDIT_COLUMNS,
    AUTHORITY_COLUMNS,
    DUPLICATE_KEY_ERRORS,
    ENTRY_COLUMNS,
    FEDERATED_BUNDLE_COLUMNS,
    INSERT_AUDIT,
    INSERT_ENTRY,
    INSERT_ISSUANCE,
    INSERT_JOIN_TOKEN,
    INSERT_REVOCATION,
    ISSUANCE_COLUMNS,
    JOIN_TOKEN_COLUMNS,
    MIGRATIONS,
    NEXT_SEQUENCE,
    REVOCATION_COLUMNS,
    SCHEMA_VERSION,
    UPDATE_ENTRY,
    UPSERT_AGENT,
    UPSERT_AUTHORITY,
    UPSERT_FEDERATED_BUNDLE,
    select,
    user_version,
    where_clause,
)

BUSY_TIMEOUT_MS = 5000


class SQLiteStore(Store):
    """The store in one SQLite file; created (mode 0600) and migrated on open."""

    def __init__(self, path: str | Path, *, durability: Durability | None = None) -> None:
        self._path = Path(path)
        synchronous = sqlite_synchronous(durability or Durability())
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            _create_private_file(self._path)
        except OSError as exc:
            raise StoreError(f"cannot create store file {self._path}: {exc.strerror}") from exc
        try:
            self._conn = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # autocommit; transactions are explicit below
                check_same_thread=False,
            )
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            # FULL syncs the WAL on every commit; NORMAL only at checkpoints (a power cut may
            # roll back the last commits, never corrupt the file).
            self._conn.execute(f"PRAGMA synchronous = {synchronous}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException as exc:
            self.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open store {self._path}: {exc}") from exc
            raise
        for suffix in ("-wal", "-shm"):
            with suppress(OSError):
                os.chmod(f"{self._path}{suffix}", 0o600)

    def _migrate(self) -> None:
        with self._transaction() as conn:
            version = user_version(conn)
            if version > SCHEMA_VERSION:
                raise SchemaError(
                    f"store {self._path} has schema version {version}, but this authd only"
                    f" knows versions up to {SCHEMA_VERSION}: upgrade authd to open it"
                )
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, held exclusively; driver errors become ``StoreError``."""
        with self._lock:
            if self._conn is None:
                raise StoreError(f"store {self._path} is closed")
            try:
                yield self._conn
            except (sqlite3.Error, OverflowError) as exc:  # OverflowError: int beyond 64 bits
                raise StoreError(f"store {self._path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed if the block finishes, rolled back if it raises."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def schema_version(self) -> int:
        with self._connection() as conn:
            return user_version(conn)

    def copy_to(self, path: Path) -> None:
        """Write a consistent copy of the whole store into the new file ``path`` (SQLite's
        online backup API, under the store's lock: writers wait, readers elsewhere do not)."""
        _create_private_file(path)
        try:
            target = sqlite3.connect(path)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create the copy {path}: {exc}") from exc
        try:
            with self._connection() as conn:
                conn.backup(target)
        finally:
            target.close()

    def load_snapshot(self, snapshot: StoreSnapshot) -> None:
        """Replace everything this store holds with ``snapshot`` (its generation included), in
        one transaction: a failure leaves the store as it was."""
        with self._transaction() as conn:
            for table in (
                "authorities",
                "sequences",
                "issuances",
                "entries",
                "revocations",
                "audit",
            ):
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 (constant names)
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('generation', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (snapshot.position.generation,),
            )
            conn.executemany(
                "INSERT INTO sequences (name, value) VALUES (?, ?)",
                list(snapshot.sequences.items()),
            )
            conn.executemany(UPSERT_AUTHORITY, [authority_to_row(r) for r in snapshot.authorities])
            conn.executemany(INSERT_ENTRY, [entry_to_row(e) for e in snapshot.entries])
            conn.executemany(
                INSERT_REVOCATION, [revocation_to_row(r) for r in snapshot.revocations]
            )
            # Oldest first, so that ties in issued_at list in the same order as before.
            conn.executemany(
                INSERT_ISSUANCE, [issuance_to_row(r) for r in reversed(snapshot.issuances)]
            )
            conn.executemany(INSERT_AUDIT, [audit_to_row(r) for r in snapshot.audit])

    def position(self) -> StorePosition:
        with self._connection() as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
            head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, digest = head if head is not None else (0, AUDIT_GENESIS_HASH)
        return StorePosition(row[0] if row is not None else "", int(seq), str(digest))

    # -- authorities ---------------------------------------------------------------------

    def get_authority(self, authority_id: str) -> AuthorityRecord:
        with self._connection() as conn:
            row = conn.execute(
                select(AUTHORITY_COLUMNS, "authorities", "WHERE authority_id = ?"),
                (authority_id,),
            ).fetchone()
        if row is None:
            raise NotFound(f"authority {authority_id!r} not found")
        return authority_from_row(row)

    def list_authorities(self, kind: str | None = None) -> list[AuthorityRecord]:
        where, params = where_clause(("kind = ?", kind))
        with self._connection() as conn:
            rows = conn.execute(
                select(
                    AUTHORITY_COLUMNS, "authorities", where, "not_before, created_at, authority_id"
                ),
                params,
            ).fetchall()
        return [authority_from_row(row) for row in rows]

    def save_authorities(
        self,
        records: Sequence[AuthorityRecord],
        *,
        delete: Sequence[str] = (),
        audit: Audit = (),
        sequence: str | None = None,
        fence: int | None = None,  # one process writes this store: nothing to fence
    ) -> None:
        with self._transaction() as conn:
            for record in records:
                conn.execute(UPSERT_AUTHORITY, authority_to_row(record))
            for authority_id in delete:
                cursor = conn.execute(
                    "DELETE FROM authorities WHERE authority_id = ?", (authority_id,)
                )
                if cursor.rowcount == 0:
                    raise NotFound(f"authority {authority_id!r} not found")
            if sequence is not None:
                conn.execute(NEXT_SEQUENCE, (sequence,)).fetchall()
            _append_audit(conn, audit_drafts(audit))

    def delete_authority(self, authority_id: str) -> None:
        with self._transaction() as conn:
            cursor = conn.execute("DELETE FROM authorities WHERE authority_id = ?", (authority_id,))
            if cursor.rowcount == 0:
                raise NotFound(f"authority {authority_id!r} not found")

    # -- counters ------------------------------------------------------------------------

    def next_sequence(self, name: str) -> int:
        with self._transaction() as conn:
            # fetchall: a RETURNING statement only completes once every row is read.
            ((value,),) = conn.execute(NEXT_SEQUENCE, (name,)).fetchall()
        return int(value)

    def current_sequence(self, name: str) -> int:
        with self._connection() as conn:
            row = conn.execute("SELECT value FROM sequences WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    # -- issuance log --------------------------------------------------------------------

    def record_issuances(self, records: Sequence[IssuanceRecord]) -> None:
        # The hot path: the CA's issuance journal hands over batches, one transaction each.
        rows = [issuance_to_row(r) for r in records]
        with self._transaction() as conn:
            try:
                conn.executemany(INSERT_ISSUANCE, rows)
            except sqlite3.IntegrityError as exc:
                if exc.sqlite_errorname in DUPLICATE_KEY_ERRORS:
                    serials = ", ".join(repr(r.serial) for r in records[:3])
                    raise AlreadyExists(
                        f"issuance with serial {serials} already recorded (batch of {len(records)})"
                    ) from exc
                raise

    def get_issuance(self, serial: str) -> IssuanceRecord:
        with self._connection() as conn:
            row = conn.execute(
                select(ISSUANCE_COLUMNS, "issuances", "WHERE serial = ?"), (serial,)
            ).fetchone()
        if row is None:
            raise NotFound(f"issuance with serial {serial!r} not found")
        return IssuanceRecord(*row)

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
        where, params = where_clause(
            ("spiffe_id = ?", spiffe_id), ("authority_id = ?", authority_id), ("kind = ?", kind)
        )
        with self._connection() as conn:
            rows = conn.execute(
                select(ISSUANCE_COLUMNS, "issuances", where, "issued_at DESC, rowid DESC")
                + " LIMIT ?",
                (*params, -1 if limit is None else limit),
            ).fetchall()
        return [IssuanceRecord(*row) for row in rows]

    # -- registration entries ------------------------------------------------------------

    def create_entry(self, entry: RegistrationEntry, *, audit: Audit = ()) -> RegistrationEntry:
        stored = replace(entry, revision=0)
        with self._transaction() as conn:
            if _entry_exists(conn, entry.entry_id):
                raise AlreadyExists(f"registration entry {entry.entry_id!r} already exists")
            _refuse_duplicate_selectors(conn, stored)
            conn.execute(INSERT_ENTRY, entry_to_row(stored))
            _append_audit(conn, audit_drafts(audit))
        return stored

    def get_entry(self, entry_id: str) -> RegistrationEntry:
        with self._connection() as conn:
            row = conn.execute(
                select(ENTRY_COLUMNS, "entries", "WHERE entry_id = ?"), (entry_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"registration entry {entry_id!r} not found")
        return entry_from_row(row)

    def list_entries(
        self,
        *,
        spiffe_id: str | None = None,
        parent_id: str | None = None,
        selector: Selector | None = None,
    ) -> list[RegistrationEntry]:
        # Canonical JSON is deterministic, so a selector's encoding appears verbatim in the
        # selectors column of every entry that has it; the Python filter below makes it exact.
        encoded = None if selector is None else canonical_json([selector.type, selector.value])
        where, params = where_clause(
            ("spiffe_id = ?", spiffe_id),
            ("parent_id = ?", parent_id),
            ("instr(selectors, ?) > 0", encoded),
        )
        with self._connection() as conn:
            rows = conn.execute(
                select(ENTRY_COLUMNS, "entries", where, "created_at, entry_id"),
                params,
            ).fetchall()
        entries = [entry_from_row(row) for row in rows]
        if selector is not None:
            entries = [entry for entry in entries if selector in entry.selectors]
        return entries

    def update_entry(
        self, entry: RegistrationEntry, *, expected_revision: int, audit: Audit = ()
    ) -> RegistrationEntry:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT revision, created_at FROM entries WHERE entry_id = ?", (entry.entry_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"registration entry {entry.entry_id!r} not found")
            revision, created_at = row
            if revision != expected_revision:
                raise Conflict(
                    f"registration entry {entry.entry_id!r} is at revision {revision},"
                    f" not {expected_revision}"
                )
            stored = replace(entry, revision=revision + 1, created_at=created_at)
            _refuse_duplicate_selectors(conn, stored)
            values = entry_to_row(stored)
            conn.execute(UPDATE_ENTRY, (*values[1:], stored.entry_id))
            _append_audit(conn, audit_drafts(audit))
        return stored

    def delete_entry(
        self, entry_id: str, *, expected_revision: int | None = None, audit: Audit = ()
    ) -> None:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT revision FROM entries WHERE entry_id = ?", (entry_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"registration entry {entry_id!r} not found")
            if expected_revision is not None and row[0] != expected_revision:
                raise Conflict(
                    f"registration entry {entry_id!r} is at revision {row[0]},"
                    f" not {expected_revision}"
                )
            conn.execute("DELETE FROM entries WHERE entry_id = ?", (entry_id,))
            _append_audit(conn, audit_drafts(audit))

    # -- revocations ---------------------------------------------------------------------

    def add_revocation(self, revocation: Revocation, *, audit: Audit = ()) -> None:
        with self._transaction() as conn:
            try:
                conn.execute(
                    INSERT_REVOCATION,
                    (
                        revocation.target_kind,
                        revocation.target,
                        revocation.reason,
                        revocation.note,
                        revocation.revoked_at,
                        revocation.revoked_by,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if exc.sqlite_errorname in DUPLICATE_KEY_ERRORS:
                    raise AlreadyExists(
                        f"{revocation.target_kind} {revocation.target!r} is already revoked"
                    ) from exc
                raise
            _append_audit(conn, audit_drafts(audit))

    def get_revocation(self, target_kind: str, target: str) -> Revocation:
        with self._connection() as conn:
            row = conn.execute(
                select(REVOCATION_COLUMNS, "revocations", "WHERE target_kind = ? AND target = ?"),
                (target_kind, target),
            ).fetchone()
        if row is None:
            raise NotFound(f"{target_kind} {target!r} is not revoked")
        return Revocation(*row)

    def remove_revocation(self, target_kind: str, target: str, *, audit: Audit = ()) -> None:
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM revocations WHERE target_kind = ? AND target = ?",
                (target_kind, target),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"{target_kind} {target!r} is not revoked")
            _append_audit(conn, audit_drafts(audit))

    def list_revocations(self, target_kind: str | None = None) -> list[Revocation]:
        where, params = where_clause(("target_kind = ?", target_kind))
        with self._connection() as conn:
            rows = conn.execute(
                select(REVOCATION_COLUMNS, "revocations", where, "revoked_at, rowid"),
                params,
            ).fetchall()
        return [Revocation(*row) for row in rows]

    # -- federated bundles ---------------------------------------------------------------

    def save_federated_bundle(self, record: FederatedBundleRecord) -> None:
        with self._transaction() as conn:
            conn.execute(
                UPSERT_FEDERATED_BUNDLE,
                (
                    record.trust_domain,
                    record.bundle_json,
                    record.sequence,
                    record.refreshed_at,
                    record.endpoint_url,
                ),
            )

    def get_federated_bundle(self, trust_domain: str) -> FederatedBundleRecord:
        with self._connection() as conn:
            row = conn.execute(
                select(FEDERATED_BUNDLE_COLUMNS, "federated_bundles", "WHERE trust_domain = ?"),
                (trust_domain,),
            ).fetchone()
        if row is None:
            raise NotFound(f"no bundle of trust domain {trust_domain!r}")
        return FederatedBundleRecord(*row)

    def list_federated_bundles(self) -> list[FederatedBundleRecord]:
        with self._connection() as conn:
            rows = conn.execute(
                select(FEDERATED_BUNDLE_COLUMNS, "federated_bundles", "", "trust_domain")
            ).fetchall()
        return [FederatedBundleRecord(*row) for row in rows]

    def delete_federated_bundle(self, trust_domain: str) -> None:
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM federated_bundles WHERE trust_domain = ?", (trust_domain,)
            )
            if cursor.rowcount == 0:
                raise NotFound(f"no bundle of trust domain {trust_domain!r}")

    # -- node agents ---------------------------------------------------------------------

    def save_join_token(self, record: JoinTokenRecord) -> None:
        row = (record.token_hash, record.node_id, record.expires_at, record.created_at)
        with self._transaction() as conn:
            try:
                conn.execute(INSERT_JOIN_TOKEN, row)
            except sqlite3.IntegrityError as exc:
                if exc.sqlite_errorname in DUPLICATE_KEY_ERRORS:
                    raise AlreadyExists("that join token exists already") from None
                raise

    def take_join_token(self, token_hash: str) -> JoinTokenRecord:
        with self._transaction() as conn:
            row = conn.execute(
                f"DELETE FROM join_tokens WHERE token_hash = ? RETURNING {JOIN_TOKEN_COLUMNS}",  # noqa: S608
                (token_hash,),
            ).fetchone()
        if row is None:
            raise NotFound("no such join token (never made, or used already)")
        return JoinTokenRecord(*row)

    def save_agent(self, record: AgentRecord) -> None:
        with self._transaction() as conn:
            conn.execute(
                UPSERT_AGENT,
                (
                    record.agent_id,
                    record.method,
                    record.node_id,
                    record.serial,
                    record.attested_at,
                    record.expires_at,
                    int(record.banned),
                ),
            )

    def get_agent(self, agent_id: str) -> AgentRecord:
        with self._connection() as conn:
            row = conn.execute(
                select(AGENT_COLUMNS, "agents", "WHERE agent_id = ?"), (agent_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"no agent {agent_id!r}")
        return _agent_from_row(row)

    def list_agents(self) -> list[AgentRecord]:
        with self._connection() as conn:
            rows = conn.execute(select(AGENT_COLUMNS, "agents", "", "agent_id")).fetchall()
        return [_agent_from_row(row) for row in rows]

    def delete_agent(self, agent_id: str) -> None:
        with self._transaction() as conn:
            cursor = conn.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))
            if cursor.rowcount == 0:
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
        with self._transaction() as conn:
            (record,) = _append_audit(conn, (draft,))
        return record

    def list_audit(
        self,
        *,
        since: int | None = None,
        subject: str | None = None,
        after_seq: int | None = None,
    ) -> list[AuditRecord]:
        where, params = where_clause(
            ("time >= ?", since), ("subject = ?", subject), ("seq > ?", after_seq)
        )
        with self._connection() as conn:
            rows = conn.execute(
                select(AUDIT_COLUMNS, "audit", where, "seq"),
                params,
            ).fetchall()
        records = []
        for seq, time, actor, action, subject, details, prev, digest in rows:
            try:
                parsed = json.loads(details)
            except ValueError as exc:
                raise CorruptRecord(
                    f"store {self._path}: audit record {seq} is corrupt: {exc}"
                ) from None
            records.append(AuditRecord(seq, time, actor, action, subject, parsed, prev, digest))
        return records


def _append_audit(conn: sqlite3.Connection, drafts: Sequence[AuditDraft]) -> list[AuditRecord]:
    """Link ``drafts`` after the chain's head and insert them, inside the caller's transaction."""
    if not drafts:
        return []
    last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    records = link_audit_drafts(None if last is None else (last[0], last[1]), drafts)
    conn.executemany(INSERT_AUDIT, [audit_to_row(r) for r in records])
    return records


def _create_private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only, before SQLite opens it with default mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)


def _entry_exists(conn: sqlite3.Connection, entry_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM entries WHERE entry_id = ?", (entry_id,)).fetchone()
    return row is not None


def _refuse_duplicate_selectors(conn: sqlite3.Connection, entry: RegistrationEntry) -> None:
    """``AlreadyExists`` if another entry maps the same selectors under the same parent to the
    same SPIFFE ID (selector order and repetition do not matter)."""
    wanted = frozenset(entry.selectors)
    rows = conn.execute(
        "SELECT entry_id, selectors FROM entries"
        " WHERE spiffe_id = ? AND parent_id = ? AND entry_id != ?",
        (entry.spiffe_id, entry.parent_id, entry.entry_id),
    )
    for other_id, selectors in rows:
        if frozenset(selectors_from_json(selectors)) == wanted:
            raise AlreadyExists(
                f"registration entry {other_id!r} already maps the same selectors under"
                f" parent {entry.parent_id!r} to {entry.spiffe_id!r}"
            )


def _agent_from_row(row: tuple[object, ...]) -> AgentRecord:
    agent_id, method, node_id, serial, attested_at, expires_at, banned = row
    return AgentRecord(
        str(agent_id),
        str(method),
        str(node_id),
        str(serial),
        int(attested_at),  # type: ignore[call-overload]
        int(expires_at),  # type: ignore[call-overload]
        bool(banned),
    )

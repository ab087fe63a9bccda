"""The SQLite store's schema and statements: migrations, columns, and the SQL built from them."""

from __future__ import annotations

import sqlite3

# Migration N (1-based) takes the schema from version N-1 to N. Never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE authorities (
            authority_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            key_type TEXT NOT NULL,
            key_ref TEXT NOT NULL,
            public_key_der BLOB NOT NULL,
            certificate_der BLOB NOT NULL,
            upstream_chain_der TEXT NOT NULL,
            not_before INTEGER NOT NULL,
            not_after INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            tainted INTEGER NOT NULL,
            revoked INTEGER NOT NULL
        ) STRICT""",
        """CREATE TABLE sequences (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) STRICT""",
        """CREATE TABLE issuances (
            serial TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            spiffe_id TEXT NOT NULL,
            authority_id TEXT NOT NULL,
            not_before INTEGER NOT NULL,
            not_after INTEGER NOT NULL,
            requester TEXT NOT NULL,
            issued_at INTEGER NOT NULL
        ) STRICT""",
        "CREATE INDEX issuances_by_spiffe_id ON issuances (spiffe_id, issued_at)",
        "CREATE INDEX issuances_by_authority ON issuances (authority_id, issued_at)",
        """CREATE TABLE entries (
            entry_id TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            parent_id TEXT NOT NULL,
            selectors TEXT NOT NULL,
            x509_svid_ttl INTEGER NOT NULL,
            jwt_svid_ttl INTEGER NOT NULL,
            dns_names TEXT NOT NULL,
            federates_with TEXT NOT NULL,
            admin INTEGER NOT NULL,
            downstream INTEGER NOT NULL,
            hint TEXT NOT NULL,
            expires_at INTEGER NOT NULL,
            revision INTEGER NOT NULL,
            created_at INTEGER NOT NULL
        ) STRICT""",
        "CREATE INDEX entries_by_spiffe_id ON entries (spiffe_id, parent_id)",
        "CREATE INDEX entries_by_parent_id ON entries (parent_id)",
        """CREATE TABLE revocations (
            target_kind TEXT NOT NULL,
            target TEXT NOT NULL,
            reason INTEGER NOT NULL,
            note TEXT NOT NULL,
            revoked_at INTEGER NOT NULL,
            revoked_by TEXT NOT NULL,
            PRIMARY KEY (target_kind, target)
        ) STRICT""",
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY,
            time INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            subject TEXT NOT NULL,
            details TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        ) STRICT""",
        "CREATE INDEX audit_by_time ON audit (time)",
        "CREATE INDEX audit_by_subject ON audit (subject)",
    ),
    (
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT",
        "INSERT INTO meta (name, value) VALUES ('generation', lower(hex(randomblob(16))))",
    ),
    (
        """CREATE TABLE federated_bundles (
            trust_domain TEXT PRIMARY KEY,
            bundle_json TEXT NOT NULL,
            sequence INTEGER NOT NULL,
            refreshed_at INTEGER NOT NULL,
            endpoint_url TEXT NOT NULL
        ) STRICT""",
    ),
    (
        """CREATE TABLE join_tokens (
            token_hash TEXT PRIMARY KEY,
            node_id TEXT NOT NULL,
            expires_at INTEGER NOT NULL,
            created_at INTEGER NOT NULL
        ) STRICT""",
        """CREATE TABLE agents (
            agent_id TEXT PRIMARY KEY,
            method TEXT NOT NULL,
            node_id TEXT NOT NULL,
            serial TEXT NOT NULL,
            attested_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            banned INTEGER NOT NULL
        ) STRICT""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

AUTHORITY_COLUMNS = (
    "authority_id, kind, state, key_type, key_ref, public_key_der, certificate_der,"
    " upstream_chain_der, not_before, not_after, created_at, tainted, revoked"
)
ISSUANCE_COLUMNS = (
    "serial, kind, spiffe_id, authority_id, not_before, not_after, requester, issued_at"
)
ENTRY_COLUMNS = (
    "entry_id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl, dns_names,"
    " federates_with, admin, downstream, hint, expires_at, revision, created_at"
)
REVOCATION_COLUMNS = "target_kind, target, reason, note, revoked_at, revoked_by"
FEDERATED_BUNDLE_COLUMNS = "trust_domain, bundle_json, sequence, refreshed_at, endpoint_url"
JOIN_TOKEN_COLUMNS = "token_hash, node_id, expires_at, created_at"  # noqa: S105 - names
AGENT_COLUMNS = "agent_id, method, node_id, serial, attested_at, expires_at, banned"
AUDIT_COLUMNS = "seq, time, actor, action, subject, details, prev_hash, hash"


def insert(table: str, columns: str, *, upsert_key: str | None = None) -> str:
    """An INSERT (or upsert on ``upsert_key``) of ``columns``, every value bound as ``?``."""
    names = [name.strip() for name in columns.split(",")]
    sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(names))})"  # noqa: S608
    if upsert_key is not None:
        updates = ", ".join(f"{name} = excluded.{name}" for name in names if name != upsert_key)
        sql += f" ON CONFLICT ({upsert_key}) DO UPDATE SET {updates}"
    return sql


def select(columns: str, table: str, where: str = "", order_by: str = "") -> str:
    """A SELECT built only from this module's constants; values are always bound as ``?``."""
    order = f"ORDER BY {order_by}" if order_by else ""
    return f"SELECT {columns} FROM {table} {where} {order}"  # noqa: S608


UPSERT_AUTHORITY = insert("authorities", AUTHORITY_COLUMNS, upsert_key="authority_id")
INSERT_ISSUANCE = insert("issuances", ISSUANCE_COLUMNS)
INSERT_ENTRY = insert("entries", ENTRY_COLUMNS)
INSERT_REVOCATION = insert("revocations", REVOCATION_COLUMNS)
UPSERT_FEDERATED_BUNDLE = insert(
    "federated_bundles", FEDERATED_BUNDLE_COLUMNS, upsert_key="trust_domain"
)
INSERT_JOIN_TOKEN = insert("join_tokens", JOIN_TOKEN_COLUMNS)
UPSERT_AGENT = insert("agents", AGENT_COLUMNS, upsert_key="agent_id")
INSERT_AUDIT = insert("audit", AUDIT_COLUMNS)
UPDATE_ENTRY = (
    "UPDATE entries SET spiffe_id = ?, parent_id = ?, selectors = ?, x509_svid_ttl = ?,"
    " jwt_svid_ttl = ?, dns_names = ?, federates_with = ?, admin = ?, downstream = ?,"
    " hint = ?, expires_at = ?, revision = ?, created_at = ? WHERE entry_id = ?"
)
NEXT_SEQUENCE = (
    "INSERT INTO sequences (name, value) VALUES (?, 1)"
    " ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
)

DUPLICATE_KEY_ERRORS = frozenset({"SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"})


def user_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def where_clause(*conditions: tuple[str, object]) -> tuple[str, list[object]]:
    """A WHERE clause of the ``(clause, value)`` conditions whose value is not None."""
    given = [(clause, value) for clause, value in conditions if value is not None]
    if not given:
        return "", []
    return "WHERE " + " AND ".join(clause for clause, _ in given), [value for _, value in given]

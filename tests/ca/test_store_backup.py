"""Backups of a store (SQLite and Redis): the file round trip, verification, and consistency.

Rules: a backup holds every record of the store and its audit chain hash for hash, and a
restore into a damaged or emptied store gives back exactly that, under the backup's
generation; a file changed anywhere is refused (a byte flipped: its checksum; a record
changed and the checksum recomputed: the audit chain); a store or a view ahead of the
backup is named; a snapshot taken while revocations stream in is one point in time (its
audit chain verifies and ends at its position, and it holds exactly the revocations its
chain records).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.audit import verify_chain
from ca.backup import ahead_of_backup, restore_snapshot, take_snapshot, verify_snapshot
from ca.store import (
    AuditDraft,
    AuthorityRecord,
    IssuanceRecord,
    RedisStore,
    RegistrationEntry,
    Revocation,
    Selector,
    SQLiteStore,
    Store,
    StorePosition,
)
from ca.store.backup_file import Backup, BackupError, parse_backup, write_backup
from ca.store.redis.reseeding import empty_store
from ca.store.snapshot import StoreSnapshot, read_snapshot
from tests.support.redis_server import RedisServer

SEQUENCES = ("bundle", "crl")


def authority(authority_id: str) -> AuthorityRecord:
    return AuthorityRecord(
        authority_id=authority_id,
        kind="x509",
        state="active",
        key_type="ec-p256",
        key_ref=f"x509-{authority_id}",
        public_key_der=b"\x30\x59\x00\xff",
        certificate_der=b"\x30\x82",
        upstream_chain_der=(b"\x30\x01", b"\x30\x02"),
        not_before=1,
        not_after=10_000,
        created_at=1,
        tainted=True,
    )


def draft(action: str, subject: str) -> AuditDraft:
    return AuditDraft(time=7, actor="admin:uid=0", action=action, subject=subject, details={})


def fill(store: Store, n: int) -> None:
    """Some of everything, each change audited as the CA does."""
    store.save_authorities([authority(f"a{n}")], audit=draft("authority.prepared", f"a{n}"))
    store.save_authorities([], audit=draft("authority.active", f"a{n}"), sequence="bundle")
    entry = RegistrationEntry(
        entry_id=f"e{n}",
        spiffe_id=f"spiffe://example.org/e{n}",
        parent_id="spiffe://example.org/node",
        selectors=(Selector("unix", "uid:1000"), Selector("unix", f"gid:{n}")),
        dns_names=("a.example",),
        created_at=n,
    )
    created = store.create_entry(entry, audit=draft("entry.create", f"e{n}"))
    store.update_entry(
        dataclasses.replace(created, hint="changed"),
        expected_revision=0,
        audit=draft("entry.update", f"e{n}"),
    )
    for k in range(3):
        target = f"spiffe://example.org/r{n}-{k}"
        store.add_revocation(
            Revocation("spiffe_id", target, 1, "note", 1_000 + k, "admin"),
            audit=draft("revocation.add", target),
        )
    store.record_issuances(
        [
            IssuanceRecord(
                f"{n:02x}{k:02x}", "x509", "spiffe://example.org/w", f"a{n}", 1, 2, "r", 5
            )
            for k in range(3)
        ]
    )
    store.next_sequence("crl")


def contents(store: Store) -> StoreSnapshot:
    return read_snapshot(store, SEQUENCES)


def file_of(backup: Backup) -> bytes:
    out = io.BytesIO()
    write_backup(backup, out)
    return out.getvalue()


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened: Store = SQLiteStore(tmp_path / "store.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        opened = RedisStore(server.url, key_prefix=f"test-{uuid.uuid4().hex}:")
    yield opened
    opened.close()


def damage(store: Store) -> None:
    """Lose data: a revocation, an entry, an authority, and (Redis) everything."""
    store.remove_revocation("spiffe_id", "spiffe://example.org/r1-0")
    store.delete_entry("e1")
    store.delete_authority("a1")
    if isinstance(store, RedisStore):
        empty_store(store, "another")


def test_a_backup_restored_into_a_damaged_store_gives_back_every_record(
    store: Store, tmp_path: Path
) -> None:
    fill(store, 1)
    fill(store, 2)
    before = contents(store)
    snapshot = take_snapshot(store, SEQUENCES, scratch=tmp_path)
    assert snapshot == before
    parsed = parse_backup(io.BytesIO(file_of(Backup(99, "sqlite", snapshot))))
    assert parsed.snapshot == snapshot
    verify_snapshot(parsed.snapshot)
    damage(store)
    restore_snapshot(store, parsed.snapshot, scratch=tmp_path)
    after = contents(store)
    assert after == before
    assert verify_chain(store.list_audit()).intact
    assert store.get_entry("e1").revision == 1
    assert list(tmp_path.glob(".authd-*")) == []  # no staging copy left behind


def test_a_restore_keeps_the_backup_generation_and_a_store_can_be_moved_between_backends(
    store: Store, tmp_path: Path
) -> None:
    fill(store, 1)
    snapshot = take_snapshot(store, SEQUENCES, scratch=tmp_path)
    other = SQLiteStore(tmp_path / "other.db")
    restore_snapshot(other, snapshot, scratch=tmp_path)
    assert contents(other) == contents(store)
    assert other.position().generation == store.position().generation


def test_a_flipped_byte_anywhere_is_refused(store: Store, tmp_path: Path) -> None:
    fill(store, 1)
    data = file_of(Backup(1, "sqlite", take_snapshot(store, SEQUENCES, scratch=tmp_path)))
    for at in range(0, len(data), max(1, len(data) // 97)):
        changed = bytearray(data)
        changed[at] ^= 0x01
        with pytest.raises(BackupError):
            verify_snapshot(parse_backup(io.BytesIO(bytes(changed))).snapshot)


def rewrite(data: bytes, edit: dict[str, object], kind: str) -> bytes:
    """``data`` with the first record of ``kind`` edited and the checksum made to match, as
    someone forging a file would."""
    lines = data.splitlines(keepends=True)
    for n, line in enumerate(lines):
        value = json.loads(line)
        if value.get("type") == kind:
            value["record"].update(edit)
            lines[n] = (json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n").encode()
            break
    body = b"".join(lines[:-1])
    end = {"type": "end", "lines": len(lines) - 1, "sha256": hashlib.sha256(body).hexdigest()}
    return body + (json.dumps(end) + "\n").encode()


def test_an_audit_record_changed_with_a_matching_checksum_is_refused_by_the_chain(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    fill(store, 1)
    data = file_of(Backup(1, "sqlite", take_snapshot(store, SEQUENCES, scratch=tmp_path)))
    forged = rewrite(data, {"actor": "someone-else"}, "audit")
    parsed = parse_backup(io.BytesIO(forged))  # the file itself is well formed
    with pytest.raises(BackupError, match="audit chain broken at record 1"):
        verify_snapshot(parsed.snapshot)


def test_a_record_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    fill(store, 1)
    data = file_of(Backup(1, "sqlite", take_snapshot(store, SEQUENCES, scratch=tmp_path)))
    with pytest.raises(BackupError, match="wrong type"):
        parse_backup(io.BytesIO(rewrite(data, {"reason": "1"}, "revocation")))


def test_a_repeated_record_is_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    fill(store, 1)
    snapshot = take_snapshot(store, SEQUENCES, scratch=tmp_path)
    twice = dataclasses.replace(
        snapshot, revocations=(*snapshot.revocations, snapshot.revocations[0])
    )
    with pytest.raises(BackupError, match="appears twice"):
        verify_snapshot(twice)


def test_what_is_ahead_of_a_backup_is_named(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    fill(store, 1)
    snapshot = take_snapshot(store, SEQUENCES, scratch=tmp_path)
    at, chain = snapshot.position, snapshot.audit
    assert ahead_of_backup(at, chain, at, "the store") is None
    behind = StorePosition(at.generation, 3, chain[2].hash)
    assert ahead_of_backup(behind, chain, at, "the store") is None
    assert ahead_of_backup(StorePosition("new", 0, "0" * 64), chain, at, "the store") is None
    ahead = StorePosition(at.generation, at.audit_seq + 1, "f" * 64)
    assert "ahead of the backup's record" in (ahead_of_backup(ahead, chain, at, "x") or "")
    forked = StorePosition(at.generation, 3, "f" * 64)
    assert "another audit record 3" in (ahead_of_backup(forked, chain, at, "x") or "")
    other = StorePosition("other", 1, chain[0].hash)
    assert "another store" in (ahead_of_backup(other, chain, at, "x") or "")


def test_a_snapshot_taken_while_revocations_stream_in_is_one_point_in_time(
    store: Store, tmp_path: Path
) -> None:
    fill(store, 1)
    stop = threading.Event()

    def revoke() -> None:
        n = 0
        while not stop.is_set() and n < 5_000:
            target = f"spiffe://example.org/stream-{n}"
            store.add_revocation(
                Revocation("spiffe_id", target, 1, "", 2_000 + n, "admin"),
                audit=draft("revocation.add", target),
            )
            n += 1

    writer = threading.Thread(target=revoke)
    writer.start()
    try:
        snapshots = [take_snapshot(store, SEQUENCES, scratch=tmp_path) for _ in range(15)]
    finally:
        stop.set()
        writer.join(timeout=60)
    assert len({s.position.audit_seq for s in snapshots}) > 1  # the stream did run meanwhile
    for snapshot in snapshots:
        verify_snapshot(snapshot)
        audited = sum(1 for r in snapshot.audit if r.action == "revocation.add")
        assert len(snapshot.revocations) == audited


def test_a_redis_backup_and_restore_touch_only_authds_keys(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    store = RedisStore(redis_server.url, key_prefix=f"{prefix}:")
    neighbours = {f"{prefix}-other:key": "theirs", "plain-key-" + prefix: "theirs too"}
    with redis_server.client() as client:
        client.mset(neighbours)
        fill(store, 1)
        client.hset("{" + prefix + "}:replica-positions", "r9", "{}")
        snapshot = take_snapshot(store, SEQUENCES, scratch=tmp_path)
        data = file_of(Backup(1, "redis", snapshot))
        assert b"theirs" not in data and b"replica-positions" not in data
        damage(store)
        restore_snapshot(store, snapshot, scratch=tmp_path)
        assert client.mget(list(neighbours)) == list(neighbours.values())
        client.delete(*neighbours)
    assert contents(store) == snapshot
    store.close()

"""The mirror of a shared store, and reseeding a regressed Redis store from it.

Rules: a mirror holds what the store holds (authorities, counters, entries with their
revisions, revocations) and the same audit chain hash for hash; it is never rebuilt from a
store that went backwards; a reseed writes it back under the original generation, keeps
what was made on the regressed store meanwhile, leaves a chain that verifies end to end,
and is refused when the store is in step or another replica saw more.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.audit import verify_chain
from ca.store import (
    AuthorityRecord,
    RedisStore,
    RegistrationEntry,
    Revocation,
    Selector,
    SQLiteStore,
    Store,
    StoreError,
    StorePosition,
)
from ca.store.mirror import StoreMirror
from ca.store.position_memory import PositionMemory
from ca.store.redis.reseeding import (
    ReseedRefused,
    empty_store,
    publish_position,
    reseed_from_mirror,
)
from ca.store.regression import RegressionGuard
from tests.support.redis_server import RedisServer

SEQUENCES = ("bundle", "crl")


def authority(authority_id: str) -> AuthorityRecord:
    return AuthorityRecord(
        authority_id=authority_id,
        kind="x509",
        state="active",
        key_type="ec-p256",
        key_ref=f"x509-{authority_id}",
        public_key_der=b"\x30\x59",
        certificate_der=b"\x30\x82",
        upstream_chain_der=(),
        not_before=1,
        not_after=10_000,
        created_at=1,
    )


def revocation(target: str) -> Revocation:
    return Revocation("spiffe_id", target, 1, "key compromised", 1_000, "admin")


def entry(entry_id: str) -> RegistrationEntry:
    return RegistrationEntry(
        entry_id=entry_id,
        spiffe_id=f"spiffe://example.org/{entry_id}",
        parent_id="spiffe://example.org/node",
        selectors=(Selector("unix", "uid:1000"),),
        created_at=1,
    )


def fill(store: Store, n: int) -> None:
    """Some of everything, each change audited as the CA does."""
    store.next_sequence("bundle")
    store.save_authorities([authority(f"a{n}")])
    created = store.create_entry(entry(f"e{n}"))
    store.update_entry(dataclasses.replace(created, hint="changed"), expected_revision=0)
    store.add_revocation(revocation(f"spiffe://example.org/r{n}"))
    for action in ("authority.active", "entry.create", "entry.update", "revocation.add"):
        store.append_audit(time=n, actor="t", action=action, subject=f"s{n}", details={"n": n})


def same_state(a: Store, b: Store) -> None:
    assert a.list_authorities() == b.list_authorities()
    assert a.list_entries() == b.list_entries()
    assert a.list_revocations() == b.list_revocations()
    assert [a.current_sequence(s) for s in SEQUENCES] == [b.current_sequence(s) for s in SEQUENCES]
    assert (a.position().audit_seq, a.position().audit_hash) == (
        b.position().audit_seq,
        b.position().audit_hash,
    )


def test_a_mirror_holds_the_store_and_its_audit_chain_hash_for_hash(tmp_path: Path) -> None:
    source = SQLiteStore(tmp_path / "source.db")
    fill(source, 1)
    mirror = StoreMirror(tmp_path / "mirror.db", SEQUENCES)
    mirror.refresh(source)
    same_state(source, mirror.store)
    source.remove_revocation("spiffe_id", "spiffe://example.org/r1")
    source.delete_entry("e1")
    fill(source, 2)
    mirror.refresh(source, [])  # a batch of nothing copies the audit records only
    mirror.refresh(
        source,
        [
            {"id": "1-0", "kind": "revocation", "op": "remove", "key": "spiffe_id:spiffe://example.org/r1"},
            {"id": "1-1", "kind": "entry", "op": "remove", "key": "e1"},
            {"id": "1-2", "kind": "entry", "op": "add", "key": "e2"},
            {"id": "1-3", "kind": "revocation", "op": "add", "key": "spiffe_id:spiffe://example.org/r2"},
            {"id": "1-4", "kind": "authority", "op": "update", "key": "a2"},
        ],
    )  # fmt: skip
    same_state(source, mirror.store)
    assert mirror.store.get_entry("e2").revision == 1


def test_a_mirror_is_never_rebuilt_from_a_store_that_went_backwards(tmp_path: Path) -> None:
    source = SQLiteStore(tmp_path / "source.db")
    fill(source, 1)
    source.close()
    shutil.copy(tmp_path / "source.db", tmp_path / "older.db")
    source = SQLiteStore(tmp_path / "source.db")
    fill(source, 2)
    mirror = StoreMirror(tmp_path / "mirror.db", SEQUENCES)
    mirror.refresh(source)
    head = mirror.head()
    with pytest.raises(StoreError):
        mirror.refresh(SQLiteStore(tmp_path / "older.db"))
    assert mirror.head() == head
    same_state(source, mirror.store)


@pytest.fixture
def redis_store(redis_server: RedisServer) -> Iterator[RedisStore]:
    store = RedisStore(redis_server.url, key_prefix=f"test-{uuid.uuid4().hex}:")
    yield store
    store.close()


def wipe(store: RedisStore) -> None:
    """What a wiped Redis looks like to a replica: no keys, then a new store's generation."""
    empty_store(store, "")
    with store._redis.call() as client:
        client.delete(store._keys.generation)


def test_reseed_writes_the_mirror_back_under_the_original_generation(
    redis_store: RedisStore, tmp_path: Path
) -> None:
    fill(redis_store, 1)
    fill(redis_store, 2)
    guard = RegressionGuard(redis_store, PositionMemory(tmp_path / "position.json"))
    assert guard.in_step()
    mirror = StoreMirror(tmp_path / "mirror.db", SEQUENCES)
    mirror.refresh(redis_store)
    seen = redis_store.position()

    wipe(redis_store)
    assert not guard.in_step() and "no generation" in guard.reason
    # Made on the regressed store, acknowledged: kept by the reseed.
    redis_store.add_revocation(revocation("spiffe://example.org/late"))
    redis_store.append_audit(time=9, actor="t", action="revocation.add", subject="late", details={})

    result = reseed_from_mirror(redis_store, mirror, guard, replica="me", actor="admin", now=99)
    assert guard.in_step() and not guard.regressed
    assert redis_store.position().generation == seen.generation
    assert (result.kept_revocations, result.kept_audit_records) == (1, 1)
    assert {r.target for r in redis_store.list_revocations()} == {
        "spiffe://example.org/r1",
        "spiffe://example.org/r2",
        "spiffe://example.org/late",
    }
    assert redis_store.list_authorities() == mirror.store.list_authorities()
    assert redis_store.list_entries() == mirror.store.list_entries()
    records = redis_store.list_audit()
    assert verify_chain(records).intact
    assert records[seen.audit_seq - 1].hash == seen.audit_hash
    assert records[-1].action == "store.reseeded" and records[-1].actor == "admin"
    assert records[-2].subject == "late"


def test_reseed_is_refused_while_the_store_is_in_step(
    redis_store: RedisStore, tmp_path: Path
) -> None:
    fill(redis_store, 1)
    guard = RegressionGuard(redis_store, PositionMemory(tmp_path / "position.json"))
    mirror = StoreMirror(tmp_path / "mirror.db", SEQUENCES)
    mirror.refresh(redis_store)
    with pytest.raises(ReseedRefused, match="nothing to reseed"):
        reseed_from_mirror(redis_store, mirror, guard, replica="me", actor="admin", now=1)


def test_reseed_is_refused_when_another_replica_saw_more(
    redis_store: RedisStore, tmp_path: Path
) -> None:
    fill(redis_store, 1)
    guard = RegressionGuard(redis_store, PositionMemory(tmp_path / "position.json"))
    assert guard.in_step()
    mirror = StoreMirror(tmp_path / "mirror.db", SEQUENCES)
    mirror.refresh(redis_store)
    seen = redis_store.position()
    wipe(redis_store)
    assert not guard.in_step()
    ahead = StorePosition(seen.generation, seen.audit_seq + 3, "f" * 64)
    publish_position(redis_store, "other-host:/var/lib/authd", ahead)
    with pytest.raises(ReseedRefused, match="other-host"):
        reseed_from_mirror(redis_store, mirror, guard, replica="me", actor="admin", now=1)
    assert redis_store.list_revocations() == []  # nothing was written

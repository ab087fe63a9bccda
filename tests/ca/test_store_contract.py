"""The store contract: every backend passes these tests unchanged.

A backend joins by adding one line to ``BACKENDS``: a function that, given the pytest request,
returns an opener; each call of the opener opens another handle on the same stored data.
Tests for one backend's own promises (file modes, schema pragmas) come last.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.audit import verify_chain
from ca.store import (
    AUDIT_GENESIS_HASH,
    AgentRecord,
    AlreadyExists,
    AuditDraft,
    AuthorityRecord,
    Conflict,
    FederatedBundleRecord,
    IssuanceRecord,
    JoinTokenRecord,
    NotFound,
    RedisStore,
    RegistrationEntry,
    Revocation,
    SchemaError,
    Selector,
    SQLiteStore,
    Store,
    StoreError,
    audit_record_hash,
    open_store,
)
from ca.store.sqlite_schema import SCHEMA_VERSION
from tests.support.store_faults import fail_writes

Opener = Callable[[], Store]


def _sqlite_backend(request: pytest.FixtureRequest) -> Opener:
    path = request.getfixturevalue("tmp_path") / "store.db"
    return lambda: SQLiteStore(path)


def _redis_backend(request: pytest.FixtureRequest) -> Opener:
    # Every test gets its own key prefix on the session's server, so none sees another's data.
    url = request.getfixturevalue("redis_server").url
    prefix = f"contract-{uuid.uuid4().hex}:"
    return lambda: RedisStore(url, key_prefix=prefix)


def _redis_cluster_backend(request: pytest.FixtureRequest) -> Opener:
    url = request.getfixturevalue("redis_cluster").url
    prefix = f"contract-{uuid.uuid4().hex}:"
    return lambda: RedisStore(url, key_prefix=prefix)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Opener]] = {
    "sqlite": _sqlite_backend,
    "redis": _redis_backend,
    "redis-cluster": _redis_cluster_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def open_backend(request: pytest.FixtureRequest) -> Iterator[Opener]:
    """Opens handles on one backend's storage; all are closed after the test."""
    opener = BACKENDS[request.param](request)
    handles: list[Store] = []

    def open_handle() -> Store:
        handle = opener()
        handles.append(handle)
        return handle

    yield open_handle
    for handle in handles:
        handle.close()


@pytest.fixture
def store(open_backend: Opener) -> Store:
    return open_backend()


def reopen(store: Store, open_backend: Opener) -> Store:
    store.close()
    return open_backend()


# -- record builders ---------------------------------------------------------------------

WEB = "spiffe://example.org/web"
NODE = "spiffe://example.org/node/1"
UID_1000 = Selector("unix", "uid:1000")
GID_50 = Selector("unix", "gid:50")


def authority(authority_id: str = "a1", **changes: object) -> AuthorityRecord:
    record = AuthorityRecord(
        authority_id=authority_id,
        kind="x509",
        state="active",
        key_type="ec-p256",
        key_ref=f"x509-{authority_id}",
        public_key_der=b"\x30\x59" + authority_id.encode(),
        certificate_der=b"\x30\x82cert-" + authority_id.encode(),
        upstream_chain_der=(),
        not_before=1_000,
        not_after=2_000,
        created_at=900,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def issuance(serial: str, **changes: object) -> IssuanceRecord:
    record = IssuanceRecord(
        serial=serial,
        kind="x509",
        spiffe_id=WEB,
        authority_id="a1",
        not_before=1_000,
        not_after=1_000 + 3_600,
        requester="workload-api",
        issued_at=1_000,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def entry(entry_id: str, **changes: object) -> RegistrationEntry:
    record = RegistrationEntry(
        entry_id=entry_id,
        spiffe_id=WEB,
        parent_id=NODE,
        selectors=(UID_1000,),
        x509_svid_ttl=3_600,
        jwt_svid_ttl=300,
        dns_names=("web.example.org",),
        federates_with=("spiffe://partner.example",),
        admin=False,
        downstream=False,
        hint="web",
        expires_at=0,
        revision=0,
        created_at=1_000,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def revocation(target: str = "0a1b", **changes: object) -> Revocation:
    record = Revocation(
        target_kind="serial",
        target=target,
        reason=1,  # keyCompromise
        note="laptop stolen",
        revoked_at=1_000,
        revoked_by="admin@example.org",
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


# -- authorities -------------------------------------------------------------------------


def test_get_authority_returns_exactly_what_was_saved(store: Store) -> None:
    x509 = authority("a1", upstream_chain_der=(b"\x30\x01inter", b"\x30\x02\x00root"), tainted=True)
    jwt = authority("k1", kind="jwt", certificate_der=b"", revoked=True)
    store.save_authorities([x509, jwt])

    assert store.get_authority("a1") == x509
    assert store.get_authority("k1") == jwt


def test_get_missing_authority_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="authority 'nope' not found"):
        store.get_authority("nope")


def test_list_authorities_orders_by_not_before_then_created_at(store: Store) -> None:
    later = authority("c", not_before=2_000, created_at=100)
    tie_newer = authority("a", not_before=1_000, created_at=950)
    tie_older = authority("b", not_before=1_000, created_at=900)
    store.save_authorities([later, tie_newer, tie_older])

    assert store.list_authorities() == [tie_older, tie_newer, later]


def test_list_authorities_filters_by_kind(store: Store) -> None:
    x509 = authority("a1")
    jwt = authority("k1", kind="jwt", certificate_der=b"")
    store.save_authorities([x509, jwt])

    assert store.list_authorities("jwt") == [jwt]
    assert store.list_authorities("x509") == [x509]
    assert store.list_authorities() == [x509, jwt]


def test_save_authorities_replaces_records_with_the_same_id(store: Store) -> None:
    old = authority("old", state="active")
    new = authority("new", state="prepared", not_before=1_500)
    store.save_authorities([old, new])

    rotated = [dataclasses.replace(old, state="retired"), dataclasses.replace(new, state="active")]
    store.save_authorities(rotated)

    assert store.list_authorities() == rotated


def test_save_authorities_is_atomic(store: Store) -> None:
    """A record the backend cannot store fails the whole batch, and changes nothing."""
    active = authority("old", state="active")
    store.save_authorities([active])
    unstorable = authority("new", not_after="never")

    with pytest.raises(StoreError):
        store.save_authorities([dataclasses.replace(active, state="retired"), unstorable])

    assert store.list_authorities() == [active]


def test_save_no_authorities_is_a_no_op(store: Store) -> None:
    store.save_authorities([])
    assert store.list_authorities() == []


def test_delete_authority_forgets_it(store: Store) -> None:
    store.save_authorities([authority("a1"), authority("a2")])

    store.delete_authority("a1")

    assert [a.authority_id for a in store.list_authorities()] == ["a2"]
    with pytest.raises(NotFound):
        store.get_authority("a1")


def test_delete_missing_authority_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="authority 'nope' not found"):
        store.delete_authority("nope")


def test_authority_record_rejects_unknown_kind_and_state() -> None:
    with pytest.raises(ValueError, match="authority kind"):
        authority(kind="pgp")
    with pytest.raises(ValueError, match="authority state"):
        authority(state="old")


# -- counters ----------------------------------------------------------------------------


def test_next_sequence_starts_at_one_and_counts_up(store: Store) -> None:
    assert [store.next_sequence("serial") for _ in range(3)] == [1, 2, 3]


def test_current_sequence_is_zero_until_first_increment(store: Store) -> None:
    assert store.current_sequence("serial") == 0
    store.next_sequence("serial")
    store.next_sequence("serial")
    assert store.current_sequence("serial") == 2


def test_sequences_count_independently_by_name(store: Store) -> None:
    store.next_sequence("a")
    store.next_sequence("a")
    assert store.next_sequence("b") == 1
    assert store.current_sequence("a") == 2


def test_counters_survive_reopen(store: Store, open_backend: Opener) -> None:
    for _ in range(5):
        store.next_sequence("serial")

    reopened = reopen(store, open_backend)

    assert reopened.current_sequence("serial") == 5
    assert reopened.next_sequence("serial") == 6


def test_concurrent_next_sequence_never_repeats_a_value(store: Store) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        values = list(pool.map(lambda _: store.next_sequence("serial"), range(400)))

    assert sorted(values) == list(range(1, 401))


# -- issuance log ------------------------------------------------------------------------


def test_get_issuance_returns_the_recorded_issuance(store: Store) -> None:
    record = issuance("0a1b", kind="jwt", requester="uid:1000")
    store.record_issuance(record)

    assert store.get_issuance("0a1b") == record


def test_recording_the_same_serial_twice_raises_already_exists(store: Store) -> None:
    store.record_issuance(issuance("0a1b"))

    with pytest.raises(AlreadyExists, match="'0a1b'"):
        store.record_issuance(issuance("0a1b", spiffe_id="spiffe://example.org/other"))

    assert store.get_issuance("0a1b").spiffe_id == WEB


def test_get_missing_issuance_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="'ffff' not found"):
        store.get_issuance("ffff")


def test_list_issuances_is_newest_first_and_ties_keep_recording_order(store: Store) -> None:
    store.record_issuance(issuance("01", issued_at=1_000))
    store.record_issuance(issuance("02", issued_at=3_000))
    store.record_issuance(issuance("03", issued_at=2_000))
    store.record_issuance(issuance("04", issued_at=3_000))

    assert [i.serial for i in store.list_issuances()] == ["04", "02", "03", "01"]


def test_list_issuances_applies_every_given_filter(store: Store) -> None:
    other = "spiffe://example.org/db"
    store.record_issuance(issuance("01"))
    store.record_issuance(issuance("02", spiffe_id=other))
    store.record_issuance(issuance("03", spiffe_id=other, kind="jwt", authority_id="k1"))
    store.record_issuance(issuance("04", authority_id="a2"))

    def serials(**filters: str) -> set[str]:
        return {i.serial for i in store.list_issuances(**filters)}  # type: ignore[arg-type]

    assert serials(spiffe_id=other) == {"02", "03"}
    assert serials(authority_id="a1") == {"01", "02"}
    assert serials(kind="jwt") == {"03"}
    assert serials(spiffe_id=other, kind="x509") == {"02"}
    assert serials(spiffe_id=WEB, authority_id="k1") == set()


def test_list_issuances_limit_keeps_the_newest(store: Store) -> None:
    for n in range(5):
        store.record_issuance(issuance(f"{n:02x}", issued_at=1_000 + n))

    assert [i.serial for i in store.list_issuances(limit=2)] == ["04", "03"]
    assert store.list_issuances(limit=0) == []
    assert len(store.list_issuances(limit=10)) == 5


def test_list_issuances_rejects_a_negative_limit(store: Store) -> None:
    with pytest.raises(ValueError, match="limit"):
        store.list_issuances(limit=-1)


def test_concurrent_threads_recording_issuances_lose_none(store: Store) -> None:
    threads, per_thread = 8, 250

    def record(worker: int) -> None:
        for n in range(per_thread):
            store.record_issuance(issuance(f"{worker:02x}{n:04x}", issued_at=n))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(record, range(threads)))

    recorded = store.list_issuances()
    assert len(recorded) == threads * per_thread
    assert len({i.serial for i in recorded}) == threads * per_thread


# -- registration entries ----------------------------------------------------------------


def test_create_entry_stores_it_at_revision_zero(store: Store) -> None:
    created = store.create_entry(entry("e1", revision=7))

    assert created == entry("e1", revision=0)
    assert store.get_entry("e1") == created


def test_create_entry_refuses_an_existing_entry_id(store: Store) -> None:
    store.create_entry(entry("e1"))

    with pytest.raises(AlreadyExists, match="registration entry 'e1' already exists"):
        store.create_entry(entry("e1", spiffe_id="spiffe://example.org/other"))


def test_create_entry_refuses_duplicate_selectors(store: Store) -> None:
    store.create_entry(entry("e1", selectors=(UID_1000, GID_50)))

    # Same SPIFFE ID, parent and selector set (order and repetition do not matter).
    duplicate = entry("e2", selectors=(GID_50, UID_1000, GID_50), hint="other")
    with pytest.raises(AlreadyExists, match="'e1'"):
        store.create_entry(duplicate)

    assert [e.entry_id for e in store.list_entries()] == ["e1"]


def test_create_entry_allows_the_same_selectors_for_another_id_or_parent(store: Store) -> None:
    store.create_entry(entry("e1"))
    store.create_entry(entry("e2", spiffe_id="spiffe://example.org/other"))
    store.create_entry(entry("e3", parent_id="spiffe://example.org/node/2"))
    store.create_entry(entry("e4", selectors=(UID_1000, GID_50)))

    assert len(store.list_entries()) == 4


def test_get_missing_entry_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="registration entry 'nope' not found"):
        store.get_entry("nope")


def test_list_entries_orders_by_created_at_then_entry_id(store: Store) -> None:
    store.create_entry(entry("b", created_at=2_000, hint="1"))
    store.create_entry(entry("c", created_at=1_000, selectors=(GID_50,)))
    store.create_entry(entry("a", created_at=2_000, selectors=(UID_1000, GID_50)))

    assert [e.entry_id for e in store.list_entries()] == ["c", "a", "b"]


def test_list_entries_applies_every_given_filter(store: Store) -> None:
    db = "spiffe://example.org/db"
    other_node = "spiffe://example.org/node/2"
    store.create_entry(entry("e1", created_at=1))
    store.create_entry(entry("e2", created_at=2, spiffe_id=db, selectors=(UID_1000, GID_50)))
    store.create_entry(entry("e3", created_at=3, parent_id=other_node, selectors=(GID_50,)))

    def ids(**filters: object) -> list[str]:
        return [e.entry_id for e in store.list_entries(**filters)]  # type: ignore[arg-type]

    assert ids(spiffe_id=db) == ["e2"]
    assert ids(parent_id=NODE) == ["e1", "e2"]
    assert ids(selector=GID_50) == ["e2", "e3"]
    assert ids(selector=UID_1000, parent_id=NODE, spiffe_id=WEB) == ["e1"]
    assert ids(selector=Selector("unix", "uid:0")) == []


def test_list_entries_selector_filter_matches_whole_selectors_only(store: Store) -> None:
    store.create_entry(entry("e1", selectors=(Selector("unix", "uid:10"),)))
    store.create_entry(entry("e2", selectors=(Selector("k8s", 'ns:"x"'),)))

    assert store.list_entries(selector=Selector("unix", "uid:1")) == []
    assert store.list_entries(selector=Selector("unix", "uid:100")) == []
    assert store.list_entries(selector=Selector("unix:uid", "10")) == []
    assert [e.entry_id for e in store.list_entries(selector=Selector("k8s", 'ns:"x"'))] == ["e2"]


def test_update_entry_increments_revision_and_keeps_created_at(store: Store) -> None:
    created = store.create_entry(entry("e1", created_at=1_000))
    changed = dataclasses.replace(created, hint="new", dns_names=(), created_at=5, revision=99)

    updated = store.update_entry(changed, expected_revision=0)

    assert updated == dataclasses.replace(changed, revision=1, created_at=1_000)
    assert store.get_entry("e1") == updated
    assert store.update_entry(updated, expected_revision=1).revision == 2


def test_update_entry_with_stale_revision_conflicts(store: Store) -> None:
    created = store.create_entry(entry("e1"))
    store.update_entry(dataclasses.replace(created, hint="first"), expected_revision=0)

    with pytest.raises(Conflict, match="'e1' is at revision 1, not 0"):
        store.update_entry(dataclasses.replace(created, hint="second"), expected_revision=0)

    assert store.get_entry("e1").hint == "first"


def test_update_missing_entry_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="registration entry 'nope' not found"):
        store.update_entry(entry("nope"), expected_revision=0)


def test_update_entry_refuses_the_selectors_of_another_entry(store: Store) -> None:
    store.create_entry(entry("e1", selectors=(UID_1000,)))
    second = store.create_entry(entry("e2", selectors=(GID_50,)))

    with pytest.raises(AlreadyExists, match="'e1'"):
        store.update_entry(dataclasses.replace(second, selectors=(UID_1000,)), expected_revision=0)

    assert store.get_entry("e2") == second


def test_delete_entry_forgets_it(store: Store) -> None:
    store.create_entry(entry("e1"))

    store.delete_entry("e1")

    assert store.list_entries() == []
    with pytest.raises(NotFound):
        store.get_entry("e1")
    store.create_entry(entry("e2"))  # its selectors are free again


def test_delete_missing_entry_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="registration entry 'nope' not found"):
        store.delete_entry("nope")


_text = st.text(max_size=20)
_unix_time = st.integers(min_value=0, max_value=2**62)
_selector = st.builds(Selector, type=_text, value=_text)
_entries = st.builds(
    RegistrationEntry,
    entry_id=st.text(min_size=1, max_size=20),
    spiffe_id=_text,
    parent_id=_text,
    selectors=st.lists(_selector, max_size=4).map(tuple),
    x509_svid_ttl=_unix_time,
    jwt_svid_ttl=_unix_time,
    dns_names=st.lists(_text, max_size=3).map(tuple),
    federates_with=st.lists(_text, max_size=3).map(tuple),
    admin=st.booleans(),
    downstream=st.booleans(),
    hint=st.text(),
    expires_at=_unix_time,
    revision=st.just(0),
    created_at=_unix_time,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(original=_entries, absent=_selector)
def test_registration_entries_round_trip_unchanged(
    store: Store, original: RegistrationEntry, absent: Selector
) -> None:
    try:
        assert store.create_entry(original) == original
        assert store.get_entry(original.entry_id) == original
        for selector in original.selectors:
            assert store.list_entries(selector=selector) == [original]
        if absent not in original.selectors:
            assert store.list_entries(selector=absent) == []
    finally:
        with suppress(NotFound):
            store.delete_entry(original.entry_id)


# -- revocations -------------------------------------------------------------------------


def test_get_revocation_returns_what_was_added(store: Store) -> None:
    revoked = revocation("0a1b", note="ключ утёк")
    store.add_revocation(revoked)

    assert store.get_revocation("serial", "0a1b") == revoked


def test_revoking_the_same_target_twice_raises_already_exists(store: Store) -> None:
    store.add_revocation(revocation("0a1b"))

    with pytest.raises(AlreadyExists, match="serial '0a1b' is already revoked"):
        store.add_revocation(revocation("0a1b", reason=4))

    assert store.get_revocation("serial", "0a1b").reason == 1


def test_the_same_target_under_another_kind_is_a_separate_revocation(store: Store) -> None:
    store.add_revocation(revocation("x", target_kind="entry"))
    store.add_revocation(revocation("x", target_kind="authority"))

    assert store.get_revocation("entry", "x").target_kind == "entry"
    with pytest.raises(NotFound, match="serial 'x' is not revoked"):
        store.get_revocation("serial", "x")


def test_remove_revocation_lifts_it(store: Store) -> None:
    store.add_revocation(revocation("0a1b"))

    store.remove_revocation("serial", "0a1b")

    assert store.list_revocations() == []
    store.add_revocation(revocation("0a1b"))  # can be revoked again


def test_remove_missing_revocation_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="spiffe_id 'spiffe://x/y' is not revoked"):
        store.remove_revocation("spiffe_id", "spiffe://x/y")


def test_list_revocations_orders_by_revoked_at_and_filters_by_kind(store: Store) -> None:
    late = revocation("01", revoked_at=3_000)
    early = revocation(WEB, target_kind="spiffe_id", revoked_at=1_000)
    middle = revocation("02", revoked_at=2_000)
    for revoked in (late, early, middle):
        store.add_revocation(revoked)

    assert store.list_revocations() == [early, middle, late]
    assert store.list_revocations("serial") == [middle, late]
    assert store.list_revocations("entry") == []


def test_revocation_record_rejects_unknown_kind_and_unused_reason() -> None:
    with pytest.raises(ValueError, match="target kind"):
        revocation(target_kind="ip")
    with pytest.raises(ValueError, match="CRLReason"):
        revocation(reason=7)


# -- federated bundles -------------------------------------------------------------------


def federated(trust_domain: str = "other.org", **changes: object) -> FederatedBundleRecord:
    record = FederatedBundleRecord(
        trust_domain=trust_domain,
        bundle_json='{"keys": [], "spiffe_sequence": 3}',
        sequence=3,
        refreshed_at=1_700_000_000,
        endpoint_url="https://other.org:8443/",
    )
    return dataclasses.replace(record, **changes)


def test_federated_bundle_is_returned_exactly_as_saved(store: Store) -> None:
    store.save_federated_bundle(federated())
    assert store.get_federated_bundle("other.org") == federated()


def test_saving_a_federated_bundle_again_replaces_it(store: Store, open_backend: Opener) -> None:
    store.save_federated_bundle(federated())
    store.save_federated_bundle(federated(sequence=4, bundle_json="{}"))
    store = reopen(store, open_backend)
    assert store.get_federated_bundle("other.org") == federated(sequence=4, bundle_json="{}")


def test_federated_bundles_are_listed_by_trust_domain(store: Store) -> None:
    for name in ("z.org", "a.org", "m.org"):
        store.save_federated_bundle(federated(name))
    assert [r.trust_domain for r in store.list_federated_bundles()] == ["a.org", "m.org", "z.org"]


def test_missing_federated_bundle_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get_federated_bundle("nope.org")
    with pytest.raises(NotFound):
        store.delete_federated_bundle("nope.org")


def test_deleted_federated_bundle_is_gone(store: Store) -> None:
    store.save_federated_bundle(federated("a.org"))
    store.save_federated_bundle(federated("b.org"))
    store.delete_federated_bundle("a.org")
    assert [r.trust_domain for r in store.list_federated_bundles()] == ["b.org"]


# -- node agents -------------------------------------------------------------------------


def join_token(token_hash: str = "ab" * 32, **changes: object) -> JoinTokenRecord:
    record = JoinTokenRecord(
        token_hash=token_hash,
        node_id="spiffe://example.org/node/a",
        expires_at=1_700_000_600,
        created_at=1_700_000_000,
    )
    return dataclasses.replace(record, **changes)


def agent(
    agent_id: str = "spiffe://example.org/authd/agent/join_token/t", **changes: object
) -> AgentRecord:
    record = AgentRecord(
        agent_id=agent_id,
        method="join_token",
        node_id="spiffe://example.org/node/a",
        serial="1f",
        attested_at=1_700_000_000,
        expires_at=1_700_003_600,
    )
    return dataclasses.replace(record, **changes)


def test_join_token_is_taken_once(store: Store, open_backend: Opener) -> None:
    store.save_join_token(join_token())
    store = reopen(store, open_backend)
    assert store.take_join_token("ab" * 32) == join_token()
    with pytest.raises(NotFound):
        store.take_join_token("ab" * 32)


def test_join_token_is_taken_by_one_of_many_concurrent_callers(store: Store) -> None:
    store.save_join_token(join_token())

    def take() -> bool:
        try:
            store.take_join_token("ab" * 32)
        except NotFound:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(lambda _: take(), range(8))) == [False] * 7 + [True]


def test_saving_the_same_join_token_twice_is_refused(store: Store) -> None:
    store.save_join_token(join_token())
    with pytest.raises(AlreadyExists):
        store.save_join_token(join_token(node_id="spiffe://example.org/other"))


def test_agent_is_returned_as_saved_and_replaced_on_save(
    store: Store, open_backend: Opener
) -> None:
    store.save_agent(agent())
    store.save_agent(agent(serial="20", banned=True))
    store = reopen(store, open_backend)
    assert store.get_agent(agent().agent_id) == agent(serial="20", banned=True)


def test_agents_are_listed_by_id_and_deleted(store: Store) -> None:
    for name in ("z", "a", "m"):
        store.save_agent(agent(f"spiffe://example.org/authd/agent/x509pop/{name}"))
    store.delete_agent("spiffe://example.org/authd/agent/x509pop/m")
    assert [a.agent_id.rsplit("/", 1)[1] for a in store.list_agents()] == ["a", "z"]
    with pytest.raises(NotFound):
        store.delete_agent("spiffe://example.org/authd/agent/x509pop/m")
    with pytest.raises(NotFound):
        store.get_agent("spiffe://example.org/authd/agent/x509pop/m")


# -- audit -------------------------------------------------------------------------------


def test_audit_chain_links_each_record_to_the_previous_hash(store: Store) -> None:
    appended = [
        store.append_audit(
            time=1_000 + n, actor="admin", action="entry.create", subject=f"e{n}", details={"n": n}
        )
        for n in range(3)
    ]

    assert [r.seq for r in appended] == [1, 2, 3]
    assert appended[0].prev_hash == AUDIT_GENESIS_HASH == "0" * 64
    assert [r.prev_hash for r in appended[1:]] == [r.hash for r in appended[:-1]]
    assert store.list_audit() == appended


def test_audit_hashes_are_recomputable_with_audit_record_hash(store: Store) -> None:
    store.append_audit(time=1, actor="a", action="x", subject="s", details={})
    store.append_audit(time=2, actor="b", action="y", subject="t", details={"k": [1, "é"]})

    for record in store.list_audit():
        assert record.hash == audit_record_hash(
            seq=record.seq,
            time=record.time,
            actor=record.actor,
            action=record.action,
            subject=record.subject,
            details=record.details,
            prev_hash=record.prev_hash,
        )


def test_audit_details_are_stored_as_their_json_round_trip(store: Store) -> None:
    appended = store.append_audit(
        time=1,
        actor="admin",
        action="entry.update",
        subject="e1",
        details={"selectors": ("unix", "uid:0"), "b": {"z": None, "a": 1.5}, "note": "ü\x00"},
    )

    expected = {"selectors": ["unix", "uid:0"], "b": {"z": None, "a": 1.5}, "note": "ü\x00"}
    assert appended.details == expected
    assert store.list_audit()[0] == appended


def test_audit_refuses_details_that_are_not_json_and_appends_nothing(store: Store) -> None:
    for details in ({"when": object()}, {"ratio": float("nan")}):
        with pytest.raises(StoreError, match="audit details"):
            store.append_audit(time=1, actor="a", action="x", subject="s", details=details)

    assert store.list_audit() == []
    assert store.append_audit(time=1, actor="a", action="x", subject="s", details={}).seq == 1


def test_list_audit_filters_by_time_subject_and_seq(store: Store) -> None:
    for n, subject in enumerate(["e1", "e2", "e1", "e1"], start=1):
        store.append_audit(time=n * 10, actor="a", action="x", subject=subject, details={})

    def seqs(**filters: object) -> list[int]:
        return [r.seq for r in store.list_audit(**filters)]  # type: ignore[arg-type]

    assert seqs(since=20) == [2, 3, 4]
    assert seqs(subject="e1") == [1, 3, 4]
    assert seqs(after_seq=2) == [3, 4]
    assert seqs(since=20, subject="e1", after_seq=3) == [4]


def test_audit_chain_continues_after_reopen(store: Store, open_backend: Opener) -> None:
    first = store.append_audit(time=1, actor="a", action="x", subject="s", details={})

    reopened = reopen(store, open_backend)
    second = reopened.append_audit(time=2, actor="a", action="y", subject="s", details={})

    assert second.seq == 2
    assert second.prev_hash == first.hash


def test_concurrent_audit_appends_form_one_unbroken_chain(store: Store) -> None:
    def append(n: int) -> None:
        store.append_audit(time=n, actor=f"t{n}", action="x", subject="s", details={"n": n})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(append, range(200)))

    records = store.list_audit()
    assert [r.seq for r in records] == list(range(1, 201))
    assert [r.prev_hash for r in records] == [AUDIT_GENESIS_HASH] + [r.hash for r in records[:-1]]


# -- a change, its audit and its sequence: one write --------------------------------------


def draft(subject: str, action: str = "test.change", **details: object) -> AuditDraft:
    return AuditDraft(time=1_000, actor="tester", action=action, subject=subject, details=details)


UNSTORABLE = {"not json": object()}

# Each change, applied to a store holding entry "e1", revocation serial "ab" and authority "a1".
CHANGES: dict[str, Callable[[Store, Sequence[AuditDraft]], object]] = {
    "create_entry": lambda s, audit: s.create_entry(entry("e2", spiffe_id=NODE), audit=audit),
    "update_entry": lambda s, audit: s.update_entry(
        entry("e1", hint="new"), expected_revision=0, audit=audit
    ),
    "delete_entry": lambda s, audit: s.delete_entry("e1", audit=audit),
    "add_revocation": lambda s, audit: s.add_revocation(
        revocation(WEB, target_kind="spiffe_id"), audit=audit
    ),
    "remove_revocation": lambda s, audit: s.remove_revocation("serial", "ab", audit=audit),
    "save_authorities": lambda s, audit: s.save_authorities(
        [authority("a2")], delete=["a1"], audit=audit, sequence="bundle"
    ),
}


def stored_state(store: Store) -> tuple[object, ...]:
    return (
        store.list_entries(),
        store.list_revocations(),
        store.list_authorities(),
        store.current_sequence("bundle"),
        store.list_audit(),
    )


def with_one_of_each(store: Store) -> Store:
    store.create_entry(entry("e1"))
    store.add_revocation(revocation("ab"))
    store.save_authorities([authority("a1")])
    return store


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_whose_audit_record_cannot_be_stored_leaves_nothing(
    store: Store, change: str
) -> None:
    with_one_of_each(store)
    before = stored_state(store)
    bad = AuditDraft(time=1, actor="tester", action="test.bad", subject="x", details=UNSTORABLE)
    with pytest.raises(StoreError, match="cannot be stored"):
        CHANGES[change](store, [draft("first"), bad])
    assert stored_state(store) == before


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_that_fails_before_its_commit_leaves_neither_it_nor_its_audit(
    store: Store, change: str
) -> None:
    with_one_of_each(store)
    before = stored_state(store)
    fault = fail_writes(store, at=1)
    with pytest.raises(StoreError, match="injected fault"):
        CHANGES[change](store, [draft(change)])
    assert fault.failed == [1]
    assert stored_state(store) == before
    CHANGES[change](store, [draft(change)])  # the retry is the first time it happens
    assert [r.subject for r in store.list_audit()] == [change]


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_and_its_audit_records_are_stored_together(store: Store, change: str) -> None:
    with_one_of_each(store)
    CHANGES[change](store, [draft(change, n=1), draft(change, n=2)])
    records = store.list_audit()
    assert [(r.seq, r.subject, r.details) for r in records] == [
        (1, change, {"n": 1}),
        (2, change, {"n": 2}),
    ]
    assert verify_chain(records).intact


def test_a_refused_change_appends_no_audit_record(store: Store) -> None:
    with_one_of_each(store)
    with pytest.raises(AlreadyExists):
        store.create_entry(entry("e1"), audit=draft("e1"))
    with pytest.raises(Conflict):
        store.update_entry(entry("e1"), expected_revision=7, audit=draft("e1"))
    with pytest.raises(Conflict):
        store.delete_entry("e1", expected_revision=7, audit=draft("e1"))
    with pytest.raises(AlreadyExists):
        store.add_revocation(revocation("ab"), audit=draft("ab"))
    with pytest.raises(NotFound):
        store.remove_revocation("serial", "cd", audit=draft("cd"))
    with pytest.raises(NotFound):
        store.save_authorities([authority("a2")], delete=["gone"], audit=draft("a2"))
    assert store.list_audit() == []
    assert [a.authority_id for a in store.list_authorities()] == ["a1"]


def test_save_authorities_moves_its_sequence_once_with_the_write(store: Store) -> None:
    store.save_authorities([authority("a1")], sequence="bundle")
    store.save_authorities([authority("a2")], delete=["a1"], sequence="bundle")
    store.save_authorities([authority("a2", state="retired")])
    assert store.current_sequence("bundle") == 2
    assert [a.authority_id for a in store.list_authorities()] == ["a2"]


def test_every_change_made_with_an_audit_record_is_in_one_intact_chain(store: Store) -> None:
    store.create_entry(entry("e1"), audit=draft("e1", "entry.create"))
    store.update_entry(
        entry("e1", hint="h"), expected_revision=0, audit=draft("e1", "entry.update")
    )
    store.add_revocation(revocation("e1", target_kind="entry"), audit=draft("entry:e1", "revoke"))
    store.append_audit(time=1, actor="tester", action="note", subject="-", details={})
    store.remove_revocation("entry", "e1", audit=draft("entry:e1", "unrevoke"))
    store.delete_entry("e1", expected_revision=1, audit=draft("e1", "entry.delete"))
    store.save_authorities([authority("a1")], audit=draft("a1", "authority.active"))
    records = store.list_audit()
    assert [r.action for r in records] == [
        "entry.create",
        "entry.update",
        "revoke",
        "note",
        "unrevoke",
        "entry.delete",
        "authority.active",
    ]
    assert verify_chain(records).intact
    assert store.position().audit_seq == 7


def test_concurrent_audited_changes_form_one_unbroken_chain(store: Store) -> None:
    def revoke(n: int) -> None:
        store.add_revocation(revocation(f"{n:x}"), audit=draft(f"serial:{n:x}"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(revoke, range(40)))
    records = store.list_audit()
    assert len(records) == 40 and verify_chain(records).intact
    assert {r.subject for r in records} == {f"serial:{n:x}" for n in range(40)}


# -- the store as a whole ----------------------------------------------------------------


def test_everything_survives_close_and_reopen(store: Store, open_backend: Opener) -> None:
    saved_authority = authority("a1", upstream_chain_der=(b"\x00\x01",))
    store.save_authorities([saved_authority])
    store.record_issuance(issuance("0a"))
    created = store.create_entry(entry("e1"))
    store.add_revocation(revocation("0a"))
    audited = store.append_audit(time=1, actor="a", action="x", subject="s", details={"k": 1})

    reopened = reopen(store, open_backend)

    assert reopened.list_authorities() == [saved_authority]
    assert reopened.list_issuances() == [issuance("0a")]
    assert reopened.list_entries() == [created]
    assert reopened.list_revocations() == [revocation("0a")]
    assert reopened.list_audit() == [audited]


def test_a_closed_store_refuses_calls_and_closing_again_is_harmless(store: Store) -> None:
    store.close()
    store.close()

    with pytest.raises(StoreError, match="closed"):
        store.get_entry("e1")
    with pytest.raises(StoreError, match="closed"):
        store.record_issuance(issuance("0a"))


def test_a_store_is_a_context_manager_that_closes(open_backend: Opener) -> None:
    with open_backend() as store:
        store.next_sequence("n")

    with pytest.raises(StoreError, match="closed"):
        store.current_sequence("n")


def test_schema_version_is_stable_across_reopen(store: Store, open_backend: Opener) -> None:
    version = store.schema_version()

    assert version >= 1
    assert reopen(store, open_backend).schema_version() == version


def test_two_handles_on_the_same_storage_see_each_other(open_backend: Opener) -> None:
    first, second = open_backend(), open_backend()

    first.create_entry(entry("e1"))
    values = {first.next_sequence("serial"), second.next_sequence("serial")}

    assert second.get_entry("e1") == entry("e1")
    assert values == {1, 2}


def test_a_shared_backend_feeds_every_handles_changes_to_the_others(open_backend: Opener) -> None:
    first, second = open_backend(), open_backend()
    feed = second.change_feed()
    if isinstance(second, SQLiteStore):
        assert feed is None  # one process writes the file: nothing to follow
        return
    assert feed is not None
    start = feed.latest_change_id()

    first.create_entry(entry("e1"))
    first.add_revocation(revocation("0a"))
    first.save_authorities([authority("a1")])
    first.next_sequence("serial")  # counters and audit are not followed
    first.append_audit(time=1, actor="a", action="x", subject="s", details={})

    last, changes = feed.changes_since(start)
    assert [(c["kind"], c["op"], c["key"]) for c in changes] == [
        ("entry", "add", "e1"),
        ("revocation", "add", "serial:0a"),
        ("authority", "add", "a1"),
    ]
    assert last == changes[-1]["id"] == feed.latest_change_id()


# -- SQLite backend specifics ------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_sqlite_files_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    previous = os.umask(0)  # a permissive umask must not widen the mode
    try:
        with SQLiteStore(path) as store:
            store.record_issuance(issuance("0a"))
            files = [p for p in tmp_path.iterdir() if p.name.startswith("store.db")]
            assert {p.name for p in files} >= {"store.db", "store.db-wal"}
            assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        os.umask(previous)


def test_sqlite_uses_wal_and_records_the_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SQLiteStore(path).close()

    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    raw.close()


def test_sqlite_refuses_a_database_from_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SQLiteStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()

    with pytest.raises(SchemaError, match=f"schema version {SCHEMA_VERSION + 1}"):
        SQLiteStore(path)

    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    raw.close()


def test_sqlite_reports_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"not a database, just some text that is long enough" * 100)

    with pytest.raises(StoreError, match="cannot open store"):
        SQLiteStore(path)


def test_sqlite_reports_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot create store file"):
        SQLiteStore(tmp_path / "missing" / "store.db")


def test_sqlite_handles_in_several_threads_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SQLiteStore(path).close()
    barrier = threading.Barrier(4)

    def count(_: int) -> list[int]:
        with SQLiteStore(path) as store:
            barrier.wait()
            return [store.next_sequence("serial") for _ in range(50)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        values = [v for chunk in pool.map(count, range(4)) for v in chunk]

    assert sorted(values) == list(range(1, 201))


# -- open_store --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///{tmp}/abs.db", "{tmp}/abs.db"),
        ("sqlite://rel.db", "{data}/rel.db"),
        ("bare.db", "{data}/bare.db"),
        ("{tmp}/bare-abs.db", "{tmp}/bare-abs.db"),
    ],
)
def test_open_store_resolves_sqlite_urls(tmp_path: Path, url: str, expected: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    names = {"tmp": str(tmp_path), "data": str(data_dir)}

    with open_store(url.format(**names), data_dir=data_dir) as store:
        assert isinstance(store, SQLiteStore)
        store.next_sequence("n")

    assert Path(expected.format(**names)).is_file()


def test_open_store_rejects_an_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unknown store backend 'postgres'"):
        open_store("postgres://db/authd", data_dir=tmp_path)


def test_open_store_rejects_a_url_without_a_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="names no database file"):
        open_store("sqlite://", data_dir=tmp_path)


# -- position ------------------------------------------------------------------------------


def test_a_store_has_one_generation_for_life(store: Store, open_backend: Opener) -> None:
    generation = store.position().generation
    assert len(generation) == 32
    assert reopen(store, open_backend).position().generation == generation


def test_every_new_store_has_its_own_generation(store: Store, tmp_path: Path) -> None:
    assert store.position().generation != SQLiteStore(tmp_path / "other.db").position().generation


def test_the_position_follows_the_head_of_the_audit_chain(store: Store) -> None:
    assert (store.position().audit_seq, store.position().audit_hash) == (0, AUDIT_GENESIS_HASH)
    store.append_audit(time=1, actor="t", action="a", subject="s", details={})
    last = store.append_audit(time=2, actor="t", action="a", subject="s", details={})
    assert (store.position().audit_seq, store.position().audit_hash) == (2, last.hash)

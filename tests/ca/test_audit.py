"""The audit chain: verified as a pure function of its records; what concerns a SPIFFE ID."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ca.audit import AuditVerdict, records_about, verify_chain
from ca.store import AUDIT_GENESIS_HASH, AuditRecord, SQLiteStore, audit_record_hash

WEB = "spiffe://example.org/web"


@pytest.fixture
def log(tmp_path: Path) -> Iterator[list[AuditRecord]]:
    """Six records chained by a real store, read back as a verifier would read them."""
    with SQLiteStore(tmp_path / "audit.db") as store:
        for n in range(1, 7):
            store.append_audit(
                time=1_790_000_000 + n,
                actor="admin:uid=0",
                action="revoke",
                subject=f"serial:{n:x}",
                details={"reason": "key-compromise", "note": f"ticket {n}", "tags": [n, None]},
            )
        yield store.list_audit()


def rehashed(record: AuditRecord) -> AuditRecord:
    """``record`` with its hash recomputed, as a forger who knows the scheme would write it."""
    digest = audit_record_hash(
        seq=record.seq,
        time=record.time,
        actor=record.actor,
        action=record.action,
        subject=record.subject,
        details=record.details,
        prev_hash=record.prev_hash,
    )
    return replace(record, hash=digest)


def broken(verdict: AuditVerdict) -> tuple[int | None, str]:
    assert not verdict.intact
    return verdict.broken_seq, verdict.problem


def test_intact_chain_verifies_and_reports_its_last_hash(log: list[AuditRecord]) -> None:
    verdict = verify_chain(log)
    assert verdict.intact
    assert (verdict.records, verdict.last_hash, verdict.problem) == (6, log[-1].hash, "")


def test_empty_log_is_intact_at_the_genesis_hash() -> None:
    assert verify_chain([]) == AuditVerdict(records=0, last_hash=AUDIT_GENESIS_HASH)


def test_altered_details_break_the_chain_at_that_record(log: list[AuditRecord]) -> None:
    log[2] = replace(log[2], details={**log[2].details, "reason": "unspecified"})
    assert broken(verify_chain(log)) == (
        3,
        "hash does not match the record's contents: the record was altered",
    )


@pytest.mark.parametrize(
    "field", [("time", 1), ("actor", "authd"), ("action", "unrevoke"), ("subject", "serial:ff")]
)
def test_every_field_is_covered_by_the_hash(
    log: list[AuditRecord], field: tuple[str, object]
) -> None:
    name, value = field
    log[4] = replace(log[4], **{name: value})  # type: ignore[arg-type]
    assert broken(verify_chain(log))[0] == 5


def test_altered_hash_breaks_the_chain_at_that_record(log: list[AuditRecord]) -> None:
    log[3] = replace(log[3], hash="f" * 64)
    seq, problem = broken(verify_chain(log))
    assert seq == 4
    assert problem.startswith("hash does not match the record's contents")


def test_altered_prev_hash_breaks_the_link_at_that_record(log: list[AuditRecord]) -> None:
    log[3] = rehashed(replace(log[3], prev_hash="a" * 64))
    assert broken(verify_chain(log)) == (
        4,
        "prev_hash does not match the hash of record 3: record 3 or this link was altered",
    )


def test_first_record_must_link_to_the_genesis_hash(log: list[AuditRecord]) -> None:
    log[0] = rehashed(replace(log[0], prev_hash="1" * 64))
    seq, problem = broken(verify_chain(log))
    assert seq == 1
    assert problem.startswith("prev_hash is not the genesis hash")


def test_a_forged_record_with_a_recomputed_hash_is_caught_by_the_next_link(
    log: list[AuditRecord],
) -> None:
    log[2] = rehashed(replace(log[2], details={"reason": "certificate-hold"}))
    # Record 3 is self-consistent now; record 4 still links to the original record 3.
    seq, problem = broken(verify_chain(log))
    assert seq == 4
    assert problem.startswith("prev_hash does not match the hash of record 3")


def test_deleted_record_is_named(log: list[AuditRecord]) -> None:
    del log[2]
    assert broken(verify_chain(log)) == (
        3,
        "record 3 is missing or out of place: record 4 follows record 2",
    )


def test_deleted_first_record_is_named(log: list[AuditRecord]) -> None:
    del log[0]
    assert broken(verify_chain(log)) == (
        1,
        "record 1 is missing or out of place: record 2 follows the start of the log",
    )


def test_reordered_records_break_the_chain_where_the_order_changes(
    log: list[AuditRecord],
) -> None:
    log[1], log[2] = log[2], log[1]
    seq, problem = broken(verify_chain(log))
    assert seq == 2
    assert problem == "record 2 is missing or out of place: record 3 follows record 1"


def test_renumbered_records_are_caught_by_their_hash(log: list[AuditRecord]) -> None:
    # Swapped and renumbered so that seq runs 1..6 again: the hashes give it away.
    log[1], log[2] = replace(log[2], seq=2), replace(log[1], seq=3)
    seq, problem = broken(verify_chain(log))
    assert seq == 2
    assert problem.startswith("prev_hash does not match the hash of record 1")


def test_repeated_record_is_named(log: list[AuditRecord]) -> None:
    log.insert(3, log[1])
    assert broken(verify_chain(log)) == (
        4,
        "record 2 is repeated or out of order: it follows record 3",
    )


def test_only_the_first_broken_record_is_named(log: list[AuditRecord]) -> None:
    log[4] = replace(log[4], hash="0" * 64)
    log[1] = replace(log[1], details={})
    assert broken(verify_chain(log))[0] == 2


def test_a_cut_at_the_end_is_seen_only_through_the_last_hash(log: list[AuditRecord]) -> None:
    kept_elsewhere = verify_chain(log).last_hash
    cut = verify_chain(log[:4])
    assert cut.intact  # a hash chain alone cannot show that its tail is gone
    assert cut.last_hash != kept_elsewhere


# --- records about a SPIFFE ID ----------------------------------------------------------


def record(seq: int, action: str, subject: str, **details: object) -> AuditRecord:
    return AuditRecord(seq, 0, "admin:uid=0", action, subject, dict(details), "", "")


def test_records_about_a_spiffe_id_follow_its_entries_serials_and_revocations() -> None:
    history = [
        record(1, "authority.active", "8fb3", kind="x509"),
        record(2, "entry.create", "e1", spiffe_id=WEB),
        record(3, "entry.create", "e2", spiffe_id=WEB + "2"),
        record(4, "revoke", "entry:e1", reason="superseded"),
        record(5, "revoke", "entry:e2", reason="superseded"),
        record(6, "revoke", "serial:abc", reason="key-compromise"),
        record(7, "revoke", "serial:def", reason="key-compromise"),
        record(8, "revoke", f"spiffe_id:{WEB}", reason="unspecified"),
        record(9, "revoke", f"spiffe_id:{WEB}/db", reason="unspecified"),
        record(10, "entry.delete", "e1", spiffe_id=WEB),
    ]
    about = records_about(WEB, history, history=history, serials=["abc"])
    assert [r.seq for r in about] == [2, 4, 6, 8, 10]


def test_records_about_find_entries_in_the_whole_history_not_only_in_the_page() -> None:
    history = [
        record(1, "entry.create", "e1", spiffe_id=WEB),
        record(2, "revoke", "entry:e1", reason="superseded"),
    ]
    assert records_about(WEB, history[1:], history=history) == [history[1]]
    assert records_about(WEB, history[1:], history=history[1:]) == []

"""Reading the hash-chained audit log: verifying the chain, and finding what concerns an identity.

Each record's hash covers its fields and the previous record's hash (``audit_record_hash``),
and ``seq`` runs 1, 2, 3, ... without gaps, so editing, deleting, inserting or reordering
records breaks the chain at the first record touched. What a chain alone cannot show is a cut
at its end: without its last records the log is shorter and still intact. Keep the
``last_hash`` of a verification somewhere else and compare it to catch that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ca.store import AUDIT_GENESIS_HASH, AuditRecord, audit_record_hash


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """The outcome of ``verify_chain``: intact, or the first place where the chain breaks."""

    records: int  # how many records were checked
    last_hash: str  # the hash of the last record that verified (genesis if none did)
    broken_seq: int | None = None  # the first seq that does not verify; those before it do
    problem: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_seq is None


def verify_chain(records: Sequence[AuditRecord]) -> AuditVerdict:
    """Check ``records`` (the whole log, in order) and name the first one that does not verify.

    For each position ``n`` (from 1): the record there must have seq ``n``, its ``prev_hash``
    must be the hash of record ``n - 1`` (the genesis hash for record 1), and its ``hash``
    must be the hash of its own contents.
    """
    prev_hash = AUDIT_GENESIS_HASH
    for seq, record in enumerate(records, start=1):
        problem = _problem(seq, record, prev_hash)
        if problem:
            return AuditVerdict(len(records), prev_hash, broken_seq=seq, problem=problem)
        prev_hash = record.hash
    return AuditVerdict(len(records), prev_hash)


def _problem(seq: int, record: AuditRecord, prev_hash: str) -> str:
    """What is wrong with ``record`` at position ``seq`` after a record hashed ``prev_hash``."""
    previous = f"record {seq - 1}" if seq > 1 else "the start of the log"
    if record.seq > seq:
        return f"record {seq} is missing or out of place: record {record.seq} follows {previous}"
    if record.seq < seq:
        return f"record {record.seq} is repeated or out of order: it follows {previous}"
    if record.prev_hash != prev_hash:
        if seq == 1:
            return "prev_hash is not the genesis hash: records before it were removed or altered"
        return (
            f"prev_hash does not match the hash of record {seq - 1}: "
            f"record {seq - 1} or this link was altered"
        )
    recomputed = audit_record_hash(
        seq=record.seq,
        time=record.time,
        actor=record.actor,
        action=record.action,
        subject=record.subject,
        details=record.details,
        prev_hash=record.prev_hash,
    )
    if record.hash != recomputed:
        return "hash does not match the record's contents: the record was altered"
    return ""


def records_about(
    spiffe_id: str,
    records: Iterable[AuditRecord],
    *,
    history: Iterable[AuditRecord],
    serials: Iterable[str] = (),
) -> list[AuditRecord]:
    """The records among ``records`` that concern ``spiffe_id``.

    That is: revocations of the SPIFFE ID itself, every change and revocation of a
    registration entry that ever mapped to it (found in ``history``, the whole log, so an
    entry deleted since still counts), and revocations of ``serials`` (those issued to it).
    Matching is exact: ``spiffe://td/web`` does not match ``spiffe://td/web2``.
    """
    entry_ids = {
        r.subject
        for r in history
        if r.action.startswith("entry.") and r.details.get("spiffe_id") == spiffe_id
    }
    subjects = {
        spiffe_id,
        f"spiffe_id:{spiffe_id}",
        *entry_ids,
        *(f"entry:{entry_id}" for entry_id in entry_ids),
        *(f"serial:{serial}" for serial in serials),
    }
    return [r for r in records if r.subject in subjects or r.details.get("spiffe_id") == spiffe_id]

"""The issuance log: records are written behind issuance, and none is lost on the way."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ca.issuance_log import IssuanceLog
from ca.store import IssuanceRecord, SQLiteStore, StoreError


def record(serial: int) -> IssuanceRecord:
    return IssuanceRecord(
        serial=format(serial, "x"),
        kind="x509",
        spiffe_id="spiffe://example.org/w",
        authority_id="a1",
        not_before=0,
        not_after=3600,
        requester="t",
        issued_at=serial,
    )


class FlakyStore(SQLiteStore):
    """A SQLite store whose next ``failures`` batch writes fail, like a busy database."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failures = 0
        self.batches: list[int] = []

    def record_issuances(self, records: Sequence[IssuanceRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("database is locked")
        self.batches.append(len(records))
        super().record_issuances(records)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FlakyStore]:
    store = FlakyStore(tmp_path / "store.db")
    yield store
    store.close()


def serials(store: SQLiteStore) -> set[str]:
    return {r.serial for r in store.list_issuances()}


def test_flush_makes_every_appended_record_visible(store: FlakyStore) -> None:
    log = IssuanceLog(store, max_delay=3600)
    try:
        for n in range(1, 101):
            log.append(record(n))
        log.flush()
        assert serials(store) == {format(n, "x") for n in range(1, 101)}
    finally:
        log.close()


def test_close_writes_every_queued_record_in_batches(store: FlakyStore) -> None:
    log = IssuanceLog(store, max_delay=3600, max_batch=64)
    for n in range(1, 2001):
        log.append(record(n))
    log.close()
    assert len(serials(store)) == 2000
    assert len(store.batches) < 2000  # group commit, not one transaction per record


def test_append_after_close_is_refused(store: FlakyStore) -> None:
    log = IssuanceLog(store)
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.append(record(1))


def test_closing_twice_is_harmless(store: FlakyStore) -> None:
    log = IssuanceLog(store)
    log.append(record(1))
    log.close()
    log.close()
    assert serials(store) == {"1"}


def test_records_of_a_failed_write_are_kept_for_the_next_one(store: FlakyStore) -> None:
    # A busy database must not cost the log its records: they find issued serials again
    # (audit, revocation by serial).
    log = IssuanceLog(store, max_delay=3600)
    try:
        log.append(record(1))
        log.append(record(2))
        store.failures = 1
        with pytest.raises(StoreError):
            log.flush()
        log.append(record(3))
        log.flush()
        assert serials(store) == {"1", "2", "3"}
    finally:
        log.close()

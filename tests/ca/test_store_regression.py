"""A store that went backwards is recognised: the comparison rule, the memory, the guard.

The rule: against the remembered position, a missing or different generation, an audit head
behind the remembered one, or a remembered record whose hash changed (history rewritten,
then maybe extended) is a regression; moving forward on the same chain is not.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.keys import KeyStore
from ca.spiffe_id import TrustDomain
from ca.store import SQLiteStore, StoreError, StorePosition
from ca.store.position_memory import PositionMemory
from ca.store.regression import RegressionGuard, find_regression

SEEN = StorePosition("g1", 5, "a" * 64)


def audit(store: SQLiteStore, n: int) -> None:
    for i in range(n):
        store.append_audit(time=i, actor="t", action="test", subject=f"s{i}", details={})


def test_first_contact_is_not_a_regression() -> None:
    assert find_regression(None, StorePosition("", 0, "0" * 64)) is None


def test_the_same_position_is_not_a_regression() -> None:
    assert find_regression(SEEN, SEEN) is None


def test_moving_forward_on_the_same_chain_is_not_a_regression() -> None:
    ahead = StorePosition("g1", 9, "b" * 64)
    assert find_regression(SEEN, ahead, remembered_hash_in_found=SEEN.audit_hash) is None


def test_a_missing_generation_is_a_regression() -> None:
    reason = find_regression(SEEN, StorePosition("", 0, "0" * 64))
    assert reason is not None and "no generation" in reason


def test_another_generation_is_a_regression_even_ahead() -> None:
    reason = find_regression(SEEN, StorePosition("g2", 50, "b" * 64))
    assert reason is not None and "g2" in reason and "g1" in reason


def test_an_audit_head_behind_the_remembered_one_is_a_regression() -> None:
    reason = find_regression(SEEN, StorePosition("g1", 4, "b" * 64))
    assert reason is not None and "behind record 5" in reason


def test_the_same_seq_with_another_hash_is_a_regression() -> None:
    reason = find_regression(SEEN, StorePosition("g1", 5, "b" * 64))
    assert reason is not None and "rewritten" in reason


def test_a_rewritten_history_extended_past_the_remembered_head_is_a_regression() -> None:
    ahead = StorePosition("g1", 9, "b" * 64)
    reason = find_regression(SEEN, ahead, remembered_hash_in_found="c" * 64)
    assert reason is not None and "rewritten" in reason


def test_the_memory_survives_a_restart_in_a_0600_file(tmp_path: Path) -> None:
    memory = PositionMemory(tmp_path / "position.json")
    assert memory.remembered is None
    memory.remember(SEEN)
    assert stat.S_IMODE(os.stat(tmp_path / "position.json").st_mode) == 0o600
    assert PositionMemory(tmp_path / "position.json").remembered == SEEN


def test_a_damaged_memory_is_refused_with_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "position.json").write_text("{not json")
    with pytest.raises(StoreError, match="damaged"):
        PositionMemory(tmp_path / "position.json")


def test_the_guard_follows_a_store_moving_forward(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.db")
    guard = RegressionGuard(store, PositionMemory(tmp_path / "position.json"))
    assert guard.in_step()
    audit(store, 3)
    assert guard.in_step() and not guard.regressed
    assert guard.remembered == store.position()


def test_the_guard_refuses_an_older_copy_of_a_sqlite_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "a.db")
    audit(store, 2)
    store.close()
    shutil.copy(tmp_path / "a.db", tmp_path / "old.db")
    store = SQLiteStore(tmp_path / "a.db")
    audit(store, 2)
    memory_path = tmp_path / "position.json"
    assert RegressionGuard(store, PositionMemory(memory_path)).in_step()
    store.close()
    shutil.copy(tmp_path / "old.db", tmp_path / "a.db")
    guard = RegressionGuard(SQLiteStore(tmp_path / "a.db"), PositionMemory(memory_path))
    with caplog.at_level(logging.ERROR):
        assert not guard.in_step()
        assert not guard.in_step()
    assert guard.regressed and "behind record 4" in guard.reason
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "one error per regression, not one per check"
    assert "authd store reseed" in errors[0].getMessage()
    # What it remembers is kept: the store is not adopted.
    assert PositionMemory(memory_path).remembered is not None
    assert PositionMemory(memory_path).remembered.audit_seq == 4  # type: ignore[union-attr]


def test_the_guard_refuses_a_history_rewritten_past_the_remembered_head(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.db")
    audit(store, 2)
    store.close()
    shutil.copy(tmp_path / "a.db", tmp_path / "old.db")
    store = SQLiteStore(tmp_path / "a.db")
    audit(store, 1)
    memory_path = tmp_path / "position.json"
    assert RegressionGuard(store, PositionMemory(memory_path)).in_step()
    store.close()
    shutil.copy(tmp_path / "old.db", tmp_path / "a.db")
    older = SQLiteStore(tmp_path / "a.db")
    older.append_audit(time=99, actor="t", action="other", subject="x", details={})
    audit(older, 3)  # past the remembered head, on another history
    guard = RegressionGuard(older, PositionMemory(memory_path))
    assert not guard.in_step() and "rewritten" in guard.reason


def test_the_guard_refuses_a_replaced_store(tmp_path: Path) -> None:
    memory_path = tmp_path / "position.json"
    assert RegressionGuard(SQLiteStore(tmp_path / "a.db"), PositionMemory(memory_path)).in_step()
    guard = RegressionGuard(SQLiteStore(tmp_path / "b.db"), PositionMemory(memory_path))
    assert not guard.in_step() and "generation" in guard.reason


def test_a_rotating_ca_makes_no_authorities_over_an_untrusted_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.db")
    trusted = False
    ca = CertificateAuthority(
        trust_domain=TrustDomain("example.org"),
        store=store,
        keystore=KeyStore(tmp_path / "keys"),
        clock=FakeClock(1_700_000_000),
        store_trusted=lambda: trusted,
    )
    assert store.list_authorities() == []
    assert not ca.rotate()
    assert store.list_authorities() == [] and store.position().audit_seq == 0
    trusted = True
    assert ca.rotate()
    assert {r.kind for r in store.list_authorities()} == {"x509", "jwt"}

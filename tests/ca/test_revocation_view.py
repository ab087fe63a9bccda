"""The in-memory revocation view: what the decision point asks, and how stale the answer is."""

from __future__ import annotations

import math

from ca.clock import FakeClock
from ca.revocation_view import RevocationQuery, RevocationView
from ca.store import Revocation


def revocation(kind: str, target: str) -> Revocation:
    return Revocation(
        target_kind=kind, target=target, reason=0, note="", revoked_at=0, revoked_by="t"
    )


def test_view_answers_for_each_part_of_a_query() -> None:
    view = RevocationView()
    view.load([revocation("serial", "4fa3"), revocation("entry", "e-1")])
    view.apply("jti", "token-42", revoked=True)
    view.apply("spiffe_id", "spiffe://example.org/web", revoked=True)
    assert view.is_revoked(RevocationQuery(serial="4fa3"))
    assert view.is_revoked(RevocationQuery(entry_id="e-1"))
    assert view.is_revoked(RevocationQuery(jti="token-42"))
    assert view.is_revoked(RevocationQuery(spiffe_id="spiffe://example.org/web"))
    assert not view.is_revoked(RevocationQuery(serial="4fa4", spiffe_id="spiffe://example.org/db"))
    assert not view.is_revoked(RevocationQuery())


def test_view_forgets_a_lifted_revocation() -> None:
    view = RevocationView()
    view.apply("entry", "e-1", revoked=True)
    view.apply("entry", "e-1", revoked=False)
    assert not view.contains("entry", "e-1")
    assert not view.is_revoked(RevocationQuery(entry_id="e-1"))


def test_view_without_a_clock_is_its_writers_own_and_never_stale() -> None:
    view = RevocationView()
    assert view.staleness() == 0.0
    view.load([], at=10.0)
    assert view.staleness() == 0.0


def test_view_with_a_clock_counts_staleness_from_its_last_sync() -> None:
    clock = FakeClock(1_000)
    view = RevocationView(clock)
    view.load([], at=clock.now())
    clock.advance(7)
    assert view.staleness() == 7.0
    view.synced_at = clock.now()  # what a follower does after each answered read
    assert view.staleness() == 0.0


def test_view_with_a_clock_that_never_synced_is_infinitely_stale() -> None:
    assert RevocationView(FakeClock(1_000)).staleness() == math.inf

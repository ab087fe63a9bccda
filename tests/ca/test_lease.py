"""The rotation lease as a pure decision: who may lead, under which fencing token."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.lease import (
    SAFETY_MARGIN,
    ClaimOutcome,
    Lease,
    admits,
    leads_until,
    plan_claim,
    plan_release,
)

TTL = 15.0


def test_a_free_lease_is_acquired_under_the_next_token() -> None:
    claim = plan_claim(None, "a", now=100, ttl=TTL, highest_token=0)
    assert claim.outcome is ClaimOutcome.ACQUIRED
    assert claim.lease == Lease("a", 1, 100 + TTL)


def test_a_live_lease_of_another_replica_is_refused() -> None:
    held = Lease("a", 1, 100 + TTL)
    claim = plan_claim(held, "b", now=100 + TTL - 0.001, ttl=TTL, highest_token=1)
    assert claim.outcome is ClaimOutcome.REFUSED
    assert claim.lease is None and not claim.granted
    assert claim.current == held


def test_the_holder_renews_its_live_lease_under_the_same_token() -> None:
    held = Lease("a", 4, 110)
    claim = plan_claim(held, "a", now=105, ttl=TTL, highest_token=4)
    assert claim.outcome is ClaimOutcome.RENEWED
    assert claim.lease == Lease("a", 4, 105 + TTL)


def test_an_expired_lease_is_taken_over_and_the_token_advances() -> None:
    held = Lease("a", 4, 110)
    claim = plan_claim(held, "b", now=110, ttl=TTL, highest_token=4)
    assert claim.outcome is ClaimOutcome.ACQUIRED
    assert claim.lease == Lease("b", 5, 110 + TTL)


def test_the_holder_of_an_expired_lease_starts_a_new_term() -> None:
    claim = plan_claim(Lease("a", 4, 110), "a", now=111, ttl=TTL, highest_token=4)
    assert claim.outcome is ClaimOutcome.ACQUIRED
    assert claim.lease is not None and claim.lease.token == 5


def test_a_lost_lease_record_never_lets_a_token_be_reused() -> None:
    # The lease hash was lost but the counter stands: the next term is still higher.
    claim = plan_claim(None, "b", now=0, ttl=TTL, highest_token=9)
    assert claim.lease is not None and claim.lease.token == 10


def test_a_lease_whose_token_is_behind_the_counter_is_not_renewed_in_place() -> None:
    claim = plan_claim(Lease("a", 3, 200), "a", now=100, ttl=TTL, highest_token=7)
    assert claim.outcome is ClaimOutcome.ACQUIRED
    assert claim.lease is not None and claim.lease.token == 8


def test_only_the_highest_token_is_admitted() -> None:
    assert admits(5, 5)
    assert not admits(4, 5)
    assert not admits(6, 5)


def test_release_is_for_the_holder_of_the_same_term_only() -> None:
    held = Lease("a", 4, 110)
    assert plan_release(held, "a", 4)
    assert not plan_release(held, "a", 3)
    assert not plan_release(held, "b", 4)
    assert not plan_release(None, "a", 4)


def test_a_leader_stops_before_anyone_else_may_claim() -> None:
    lease = Lease("a", 1, 100 + TTL)
    assert leads_until(lease, TTL) == 100 + TTL - TTL * SAFETY_MARGIN
    assert leads_until(lease, TTL) < lease.expires_at


def test_a_lease_needs_a_positive_ttl() -> None:
    with pytest.raises(ValueError, match="positive"):
        plan_claim(None, "a", now=0, ttl=0, highest_token=0)


claims = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 5, allow_nan=False)),
    min_size=1,
    max_size=60,
)


@given(claims)
def test_tokens_only_grow_and_two_replicas_never_hold_a_live_lease_at_once(
    steps: list[tuple[str, float]],
) -> None:
    stored: Lease | None = None
    highest = 0
    now = 0.0
    for claimant, pause in steps:
        now += pause
        before = stored
        claim = plan_claim(stored, claimant, now=now, ttl=TTL, highest_token=highest)
        if claim.lease is None:
            assert before is not None and before.live(now) and before.holder != claimant
            continue
        assert claim.lease.token >= highest
        if claim.outcome is ClaimOutcome.ACQUIRED:
            assert claim.lease.token == highest + 1
        else:
            assert before is not None and claim.lease.token == before.token
        # A different holder is granted only once the previous lease is no longer live.
        if before is not None and before.holder != claimant:
            assert not before.live(now)
        stored, highest = claim.lease, claim.lease.token

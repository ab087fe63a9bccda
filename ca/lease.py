"""The rotation lease: which replica leads rotation now, decided as a pure function.

Several replicas may sign (each holds the authority keys, see ``ca.key_wrap``), but only one
moves the shared timeline at a time: the holder of the lease. A claim is granted when the
lease is free, expired, or already the claimant's; a new holder gets a fencing token one
higher than any token ever granted, so tokens only grow. Every write of the rotation carries
its writer's token and the store refuses a token that is no longer the highest
(``ca.store.base.Fenced``): a leader that was paused past its lease and wakes up cannot
clobber what its successor wrote, even if it still believes it leads.

A holder counts itself leader only until ``expires_at - margin``, so it stops writing before
any other replica may claim the lease (clocks of replicas differ a little; the token, not the
clock, is what keeps writes safe). Nothing here touches a store or a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# The share of the TTL a leader gives up before expiry, and how often it renews.
SAFETY_MARGIN = 1 / 5
RENEW_EVERY = 1 / 3


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease as stored: who holds it, under which fencing token, until when."""

    holder: str
    token: int
    expires_at: float

    def live(self, now: float) -> bool:
        return now < self.expires_at


class ClaimOutcome(enum.Enum):
    ACQUIRED = "acquired"  # a new term: the token advanced
    RENEWED = "renewed"  # the claimant's own live lease, extended under the same token
    REFUSED = "refused"  # another replica holds a live lease


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim does: its outcome, and the lease to store (None when refused)."""

    outcome: ClaimOutcome
    lease: Lease | None
    current: Lease | None  # the lease that stood before the claim

    @property
    def granted(self) -> bool:
        return self.lease is not None


def plan_claim(
    current: Lease | None, claimant: str, *, now: float, ttl: float, highest_token: int
) -> Claim:
    """Decide a claim of the lease by ``claimant`` at ``now``.

    ``highest_token`` is the highest token ever granted (the store's fencing counter); a new
    term always gets the next one, even if the stored lease was lost.
    """
    if ttl <= 0:
        raise ValueError("the lease TTL must be positive")
    if current is not None and current.live(now):
        if current.holder != claimant:
            return Claim(ClaimOutcome.REFUSED, None, current)
        if current.token == highest_token:
            renewed = Lease(claimant, current.token, now + ttl)
            return Claim(ClaimOutcome.RENEWED, renewed, current)
    token = max(highest_token, current.token if current is not None else 0) + 1
    return Claim(ClaimOutcome.ACQUIRED, Lease(claimant, token, now + ttl), current)


def plan_release(current: Lease | None, holder: str, token: int) -> bool:
    """True if ``holder`` may give up ``current`` (it is its own, of the same term)."""
    return current is not None and current.holder == holder and current.token == token


def admits(write_token: int, highest_token: int) -> bool:
    """A fenced write is admitted only under the highest token ever granted."""
    return write_token == highest_token


def leads_until(lease: Lease, ttl: float) -> float:
    """Until when the holder of ``lease`` may act as leader: before anyone else may claim."""
    return lease.expires_at - ttl * SAFETY_MARGIN

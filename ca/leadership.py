"""This replica's view of the rotation lease: claim it, renew it, and know when it may write.

``tick()`` claims or renews the lease in the store (``ca.store.base.RotationLeaseStore``,
decided by ``ca.lease``); ``fence()`` is the token this replica writes under, or None when it
does not lead now: when another replica holds the lease, or when its own lease is too close to
expiry (a renewal that did not reach the store is not counted on). Time comes from the
injected clock.
"""

from __future__ import annotations

import logging
import threading

from ca.clock import Clock
from ca.lease import Claim, ClaimOutcome, Lease, leads_until
from ca.store.base import RotationLeaseStore, StoreError

log = logging.getLogger(__name__)


class RotationLeadership:
    """Whether ``replica`` leads rotation now, and under which fencing token."""

    def __init__(
        self, leases: RotationLeaseStore, *, replica: str, clock: Clock, ttl: float
    ) -> None:
        if ttl <= 0:
            raise ValueError("the lease TTL must be positive")
        self.replica = replica
        self.ttl = ttl
        self._leases = leases
        self._clock = clock
        self._lock = threading.Lock()
        self._lease: Lease | None = None  # our own lease as last granted
        self.seen: Lease | None = None  # the lease as last read, whoever holds it

    def tick(self) -> Claim | None:
        """Claim or renew the lease now; None if the store could not be reached."""
        try:
            claim = self._leases.claim(self.replica, now=self._clock.now(), ttl=self.ttl)
        except StoreError as exc:
            log.warning("cannot renew the rotation lease: %s", exc)
            return None
        with self._lock:
            before = self._lease
            self._lease = claim.lease
            self.seen = claim.lease or claim.current
        if claim.outcome is ClaimOutcome.ACQUIRED:
            log.info(
                "this replica (%s) leads rotation now, fencing token %d",
                self.replica,
                claim.lease.token if claim.lease else 0,
            )
        elif claim.outcome is ClaimOutcome.REFUSED and before is not None:
            holder = claim.current.holder if claim.current else "?"
            log.warning("rotation lease lost to %s; this replica follows", holder)
        return claim

    def fence(self) -> int | None:
        """The token to write under, or None if this replica must not write rotation now."""
        with self._lock:
            lease = self._lease
        if lease is None or self._clock.now() >= leads_until(lease, self.ttl):
            return None
        return lease.token

    @property
    def leads(self) -> bool:
        return self.fence() is not None

    @property
    def token(self) -> int:
        """The fencing token of the term last seen (ours or another's); 0 before any."""
        seen = self.seen
        return seen.token if seen is not None else 0

    def release(self) -> None:
        """Give the lease up (a clean stop), so another replica takes over at once."""
        with self._lock:
            lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            self._leases.release(self.replica, lease.token)
        except StoreError as exc:
            log.warning("cannot release the rotation lease (it expires by itself): %s", exc)

"""The rotation lease in Redis: one watched transaction per claim, decided by ``ca.lease``.

The lease is a hash (holder, token, expires_at) with a PX expiry as a backstop, beside the
fencing counter: a claim WATCHes both, reads them, lets ``ca.lease.plan_claim`` decide, and
writes the new lease and the counter in one MULTI/EXEC, so two replicas claiming at once are
serialised and one of them is refused. The expiry compared is the caller's clock (injected in
tests); the token, checked by every fenced write (``fence_check``), is what keeps a replica
whose clock or process lagged from writing over its successor.
"""

from __future__ import annotations

import math

from ca.lease import Claim, Lease, admits, plan_claim, plan_release
from ca.store.base import Fenced
from ca.store.redis.client import Pipe, RedisConnection, Write, reply_text
from ca.store.redis.keys import KeyLayout


class RedisRotationLease:
    """``ca.store.base.RotationLeaseStore`` over one Redis store's keys."""

    def __init__(self, redis: RedisConnection, keys: KeyLayout) -> None:
        self._redis = redis
        self._keys = keys

    def claim(self, claimant: str, *, now: float, ttl: float) -> Claim:
        keys = self._keys

        def prepare(pipe: Pipe) -> tuple[Write, Claim]:
            current, highest = _read(pipe, keys)
            claim = plan_claim(current, claimant, now=now, ttl=ttl, highest_token=highest)
            lease = claim.lease

            def write(pipe: Pipe) -> None:
                if lease is None:
                    return
                pipe.hset(
                    keys.rotation_lease,
                    mapping={
                        "holder": lease.holder,
                        "token": lease.token,
                        "expires_at": repr(lease.expires_at),
                    },
                )
                pipe.pexpire(keys.rotation_lease, max(1, math.ceil(ttl * 1000)))
                pipe.set(keys.rotation_fence, lease.token)

            return write, claim

        return self._redis.transaction([keys.rotation_lease, keys.rotation_fence], prepare)

    def release(self, holder: str, token: int) -> bool:
        keys = self._keys

        def prepare(pipe: Pipe) -> tuple[Write, bool]:
            current, _ = _read(pipe, keys)
            mine = plan_release(current, holder, token)

            def write(pipe: Pipe) -> None:
                if mine:
                    pipe.delete(keys.rotation_lease)

            return write, mine

        return self._redis.transaction([keys.rotation_lease], prepare)

    def current(self) -> tuple[Lease | None, int]:
        with self._redis.call() as client:
            return _read(client, self._keys)  # type: ignore[arg-type]


def _read(pipe: Pipe, keys: KeyLayout) -> tuple[Lease | None, int]:
    stored = pipe.hgetall(keys.rotation_lease)
    highest_text = pipe.get(keys.rotation_fence)
    highest = int(reply_text(highest_text)) if highest_text is not None else 0
    if not stored:
        return None, highest
    fields = {reply_text(k): reply_text(v) for k, v in stored.items()}
    try:
        lease = Lease(fields["holder"], int(fields["token"]), float(fields["expires_at"]))
    except (KeyError, ValueError):
        return None, highest  # unreadable: treated as free, the token still advances
    return lease, highest


def fence_check(pipe: Pipe, keys: KeyLayout, fence: int | None) -> None:
    """Inside a watched transaction (``keys.rotation_fence`` watched): ``Fenced`` unless
    ``fence`` is None or the highest token granted."""
    if fence is None:
        return
    stored = pipe.get(keys.rotation_fence)
    highest = int(reply_text(stored)) if stored is not None else 0
    if not admits(fence, highest):
        raise Fenced(
            f"rotation write refused: fencing token {fence} is stale, the rotation lease has"
            f" moved on to token {highest} (another replica leads rotation now)"
        )

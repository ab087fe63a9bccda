"""Every replica signs, one leads rotation: the key store and the rotation lease of a replica.

With ``ca.key_encryption_key`` set (a shared store only), the authority keys live wrapped in
the store (``ca.shared_keystore``) and every replica holding the KEK signs; replicas with
``ca.rotates = true`` take turns leading rotation under the store's lease
(``ca.leadership``), renewed every third of ``ca.rotation_lease_ttl`` and released on a clean
stop. Without it, the key directory under the data directory, as before: only the one
replica with ``ca.rotates = true`` holds the keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from authd.app.errors import StartupError
from authd.authz.metrics import AuthzMetrics
from authd.config.model import Config
from ca.clock import Clock
from ca.errors import InvalidRequest
from ca.key_wrap import KeyEncryptionKey
from ca.keys import KeyStore
from ca.leadership import RotationLeadership
from ca.lease import RENEW_EVERY, ClaimOutcome
from ca.shared_keystore import SharedKeyStore
from ca.store import Store

log = logging.getLogger("authd")


@dataclass
class HighAvailability:
    """This replica's key store, and its rotation lease when it may lead rotation."""

    keystore: KeyStore
    leadership: RotationLeadership | None = None

    @property
    def fence(self) -> Callable[[], int | None] | None:
        return self.leadership.fence if self.leadership is not None else None

    async def keep_lease(
        self, stopping: asyncio.Event, on_acquired: Callable[[], Awaitable[None]]
    ) -> None:
        """Renew the lease until ``stopping``; rotate at once on taking it over; release it."""
        leadership = self.leadership
        if leadership is None:
            return
        interval = leadership.ttl * RENEW_EVERY
        try:
            while not stopping.is_set():
                claim = await asyncio.to_thread(leadership.tick)
                if claim is not None and claim.outcome is ClaimOutcome.ACQUIRED:
                    await on_acquired()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=interval)
        finally:
            await asyncio.to_thread(leadership.release)


def open_high_availability(
    config: Config, store: Store, clock: Clock, *, replica: str, metrics: AuthzMetrics
) -> HighAvailability:
    """The key store (shared when ``ca.key_encryption_key`` is set) and, for a replica that
    may rotate, its lease, claimed once now so that the first leader makes the authorities."""
    keys_dir = config.data_dir / "keys"
    kek_path = config.key_encryption_key_path
    if kek_path is None:
        return HighAvailability(KeyStore(keys_dir))
    vault, leases = store.wrapped_keys(), store.rotation_lease()
    if vault is None or leases is None:
        raise StartupError(
            "ca.key_encryption_key needs a shared store (store.url = redis://...): with an "
            "embedded store there is no other replica to share the CA keys with; remove it"
        )
    try:
        kek = KeyEncryptionKey.load(kek_path)
    except InvalidRequest as exc:
        raise StartupError(str(exc)) from None
    leadership = None
    if config.ca.rotates:
        leadership = RotationLeadership(
            leases,
            replica=f"{replica}:{os.getpid()}",
            clock=clock,
            ttl=config.ca.rotation_lease_ttl,
        )
        leadership.tick()
    fence = leadership.fence if leadership is not None else (lambda: None)
    keystore = SharedKeyStore(keys_dir, kek=kek, vault=vault, fence=fence)
    if leadership is not None:
        held = leadership
        metrics.add_gauge_source(
            "authd_rotation_leader",
            "1 while this replica holds the rotation lease (it alone rotates the authorities)",
            lambda: 1.0 if held.leads else 0.0,
        )
        metrics.add_gauge_source(
            "authd_rotation_fencing_token",
            "the fencing token of the rotation lease's term last seen by this replica",
            lambda: float(held.token),
        )
    return HighAvailability(keystore, leadership)

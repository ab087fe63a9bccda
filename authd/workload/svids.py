"""SVIDs for attested workloads: issued on first request, rotated at half-life, pushed.

The local CA's ``IdentitySource``. This is the agent half of authd (what SPIRE's agent
does next to its server): for each registration entry a workload has asked for, one
current X.509-SVID with a key authd made for it. An SVID is re-issued once it has lived
half its life minus a random jitter (so a thousand workloads do not rotate in the same
second), at once when its authority is tainted or leaves the bundle, and when its entry
changes. Every change bumps ``version`` and wakes the streams (Workload API, SDS) waiting
in ``wait_for_change``, which then send their workload's complete new state.

Signing happens in memory; what waits on the store (the issuance log, written before an
SVID leaves authd so it can be revoked) happens in :meth:`SvidProvider.commit`, in a worker
thread, so a slow store never stalls the event loop that serves every other stream.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Sequence

from authd.ports.bundle_view import ForeignBundles
from authd.ports.identity_source import WorkloadX509Svid
from authd.workload.change_signal import ChangeSignal
from authd.workload.registry import EntryRegistry
from ca.bundle import TrustBundle
from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock
from ca.jwtsvid import JwtSvid
from ca.keys import KeyType
from ca.revoker import Revoker
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import RegistrationEntry, Selector

__all__ = ["SvidProvider", "WorkloadX509Svid", "rotation_time"]

log = logging.getLogger(__name__)

ROTATE_AT = 0.5  # of an SVID's lifetime
MAX_CACHED_JWT_SVIDS = 10_000
JITTER = 0.1  # up to this fraction of the lifetime earlier


def rotation_time(issued_at: float, expires_at: float, rng: random.Random) -> float:
    """Half-life minus a jitter of up to JITTER of the lifetime."""
    lifetime = expires_at - issued_at
    return issued_at + lifetime * (ROTATE_AT - JITTER * rng.random())


class SvidProvider:
    """SVIDs the local CA signs for attested workloads (an ``IdentitySource``)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        registry: EntryRegistry,
        clock: Clock,
        *,
        key_type: KeyType = KeyType.EC_P256,
        rng: random.Random | None = None,
        revocations: Revoker | None = None,
        federated: ForeignBundles | None = None,
        parent_id: str | None = None,
    ) -> None:
        """``parent_id``: serve only entries with this parent (with node agents, the
        server's own ID: the other entries are the agents' to serve)."""
        self._parent_id = parent_id
        self._ca = ca
        self._federated = federated
        self._registry = registry
        self._revocations = revocations
        self._clock = clock
        self._key_type = key_type
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._x509: dict[str, WorkloadX509Svid] = {}
        self._jwt: dict[tuple[str, tuple[str, ...]], tuple[JwtSvid, float]] = {}
        self._distrusted: frozenset[str] = frozenset()  # tainted or revoked authorities
        self._signal = ChangeSignal()
        self._signed = 0  # SVIDs signed so far
        self._committed = 0  # of those, how many are known to be in the issuance log
        ca.add_listener(self._authorities_changed)
        registry.add_listener(self._entries_changed)
        if revocations is not None:
            revocations.add_listener(self._entries_changed)
        if federated is not None:
            federated.add_listener(self._bump)  # a foreign bundle changed: streams resend

    # --- what the streams ask --------------------------------------------------------------

    def entries_for(self, selectors: Iterable[Selector]) -> list[RegistrationEntry]:
        """The entries granted to a workload with ``selectors``, less revoked ones."""
        entries = self._registry.match(selectors)
        if self._parent_id is not None:
            entries = [e for e in entries if e.parent_id == self._parent_id]
        revocations = self._revocations
        if revocations is None:
            return entries
        return [e for e in entries if not revocations.blocks_issuance(e.spiffe_id, e.entry_id)]

    @property
    def bundle(self) -> TrustBundle:
        return self._ca.bundle

    def federated_bundles(self, entries: Iterable[RegistrationEntry]) -> dict[str, TrustBundle]:
        """The foreign bundles ``entries`` federate with that federation holds now."""
        found: dict[str, TrustBundle] = {}
        if self._federated is None:
            return found
        for entry in entries:
            for name in entry.federates_with:
                if name not in found:
                    bundle = self._federated.get(TrustDomain(name))
                    if bundle is not None:
                        found[name] = bundle
        return dict(sorted(found.items()))

    def x509_svid(self, entry: RegistrationEntry) -> WorkloadX509Svid:
        """The entry's current SVID, issued now if there is none or it is due.

        A new SVID may leave authd only after :meth:`commit`.
        """
        svid = self._x509.get(entry.entry_id)
        if svid is None:
            svid = self._issue(entry)
        elif self._due(svid, entry, self._clock.now()):
            svid = self._issue(entry)
            self._bump()  # streams holding the old one must hear of the new one
        return svid

    async def commit(self) -> None:
        """Return once every SVID signed so far is in the issuance log (written in a thread)."""
        signed = self._signed
        if self._committed < signed:
            # flush() returns only after any flush already under way has written its batch.
            await asyncio.to_thread(self._ca.issuance_log.flush)
            self._committed = max(self._committed, signed)

    def verify_jwt_svid(self, token: str, audience: Sequence[str]) -> JwtSvid:
        return self._ca.verify_jwt_svid(token, audience)

    async def fetch_jwt_svid(self, entry: RegistrationEntry, audience: Sequence[str]) -> JwtSvid:
        """The port's form of :meth:`jwt_svid` (signed here, in memory)."""
        return self.jwt_svid(entry, audience)

    def jwt_svid(self, entry: RegistrationEntry, audience: Sequence[str]) -> JwtSvid:
        """A JWT-SVID for ``entry`` and ``audience``, reused until half its life has passed."""
        key = (entry.entry_id, tuple(sorted(audience)))
        now = self._clock.now()
        cached = self._jwt.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        if len(self._jwt) >= MAX_CACHED_JWT_SVIDS:
            # Audiences are the caller's choice: keep the cache bounded, dropping the stale
            # first and then the oldest.
            self._jwt = {k: v for k, v in self._jwt.items() if now < v[1]}
            while len(self._jwt) >= MAX_CACHED_JWT_SVIDS:
                del self._jwt[next(iter(self._jwt))]
        svid = self._ca.mint_jwt_svid(
            spiffe_id=SpiffeId.parse(entry.spiffe_id),
            audience=audience,
            ttl=entry.jwt_svid_ttl or None,
        )
        self._jwt[key] = (svid, now + (svid.expiry - now) * ROTATE_AT)
        return svid

    @property
    def version(self) -> int:
        return self._signal.version

    async def wait_for_change(self, version: int) -> int:
        """Return the new version once it differs from ``version`` (on the serving loop)."""
        await self._signal.wait(version)
        return self.version

    # --- rotation ---------------------------------------------------------------------

    def rotate_due(self) -> int:
        """Re-issue every SVID that is due; returns how many (call it every second)."""
        now = self._clock.now()
        rotated = 0
        for entry_id, svid in list(self._x509.items()):
            entry = self._registry.get(entry_id)
            if entry is not None and entry.expires_at and entry.expires_at <= now:
                entry = None  # expired: drop its SVID
            revocations = self._revocations
            if (
                entry is not None
                and revocations is not None
                and revocations.blocks_issuance(entry.spiffe_id, entry.entry_id)
            ):
                entry = None  # revoked: drop its SVID, issue nothing new
            if entry is None:
                del self._x509[entry_id]
                rotated += 1
            elif self._due(svid, entry, now):
                self._issue(entry)
                rotated += 1
        if rotated:
            self._bump()  # the streams commit before they send the new SVIDs
        return rotated

    def _due(self, svid: WorkloadX509Svid, entry: RegistrationEntry, now: float) -> bool:
        if now >= svid.rotate_at or entry.revision != svid.entry_revision:
            return True
        if svid.authority_id in self._distrusted:
            return True
        # Its serial revoked (say, the key leaked): a new key and certificate at once.
        revocations = self._revocations
        return revocations is not None and revocations.view.contains("serial", svid.serial)

    def _issue(self, entry: RegistrationEntry) -> WorkloadX509Svid:
        key = self._key_type.generate()
        issued = self._ca.sign_x509_svid(
            key.public_key(),
            spiffe_id=SpiffeId.parse(entry.spiffe_id),
            dns_names=entry.dns_names,
            ttl=entry.x509_svid_ttl or None,
            requester=f"entry:{entry.entry_id}",
        )
        issued_at = issued.leaf.not_valid_before_utc.timestamp()
        svid = WorkloadX509Svid(
            entry_id=entry.entry_id,
            entry_revision=entry.revision,
            spiffe_id=issued.spiffe_id,
            hint=entry.hint,
            chain=issued.chain,
            private_key=key,
            authority_id=self._ca.x509_authority.authority_id,
            issued_at=issued_at,
            expires_at=issued.expires_at,
            rotate_at=rotation_time(self._clock.now(), issued.expires_at, self._rng),
        )
        self._x509[entry.entry_id] = svid
        self._signed += 1
        return svid

    def _authorities_changed(self) -> None:
        # Tainted or revoked authorities: what they signed is re-issued at once. Any change
        # of the bundle is news for every stream too.
        self._distrusted = frozenset(
            r.authority_id for r in self._ca.authorities() if r.tainted or r.revoked
        )
        self._jwt.clear()  # never hand out a token signed by a key that left or was tainted
        self.rotate_due()
        self._bump()

    def _entries_changed(self) -> None:
        self.rotate_due()
        self._bump()

    def _bump(self) -> None:
        self._signal.bump()

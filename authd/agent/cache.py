"""The agent's cache: what its workloads are served from (SPIRE's agent ``cache``).

An ``IdentitySource``, so the Workload API and SDS serve from it exactly as they serve the
server's own SVIDs. It holds the entries the server last sent for this agent, the bundle, and
one X.509-SVID per entry with the key the agent made for it. It never reaches the server:
``AgentSync`` fills it. Through a server outage it keeps serving what it has until each SVID
expires; ``budget`` says how long that still is, for the operator's alert.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from authd.ports.identity_source import WorkloadX509Svid
from authd.workload.change_signal import ChangeSignal
from authd.workload.svids import rotation_time
from ca.bundle import TrustBundle
from ca.clock import Clock
from ca.errors import CAError
from ca.jwtsvid import JwtSvid, verify_jwt_svid
from ca.store import RegistrationEntry, Selector

__all__ = ["AgentCache"]

MAX_CACHED_JWT_SVIDS = 10_000


class AgentCache:
    """Entries, SVIDs and the bundle an agent serves (an ``IdentitySource``)."""

    def __init__(self, bundle: TrustBundle, clock: Clock, *, rng: random.Random | None = None):
        self._bundle = bundle
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._entries: dict[str, RegistrationEntry] = {}
        self._svids: dict[str, WorkloadX509Svid] = {}
        self._federated: dict[str, TrustBundle] = {}
        self._distrusted: tuple[x509.Certificate, ...] = ()
        self._distrusted_entries: set[str] = set()  # their SVIDs were signed by one of those
        self._jwt: dict[tuple[str, tuple[str, ...]], tuple[JwtSvid, float]] = {}
        # Set by AgentSync: (entry_id, audience) -> a token the server minted (in a thread).
        self.jwt_minter: Callable[[str, list[str]], str] | None = None
        self._signal = ChangeSignal()

    # --- what the workload servers ask ---------------------------------------------------

    @property
    def version(self) -> int:
        return self._signal.version

    async def wait_for_change(self, version: int) -> int:
        await self._signal.wait(version)
        return self.version

    @property
    def bundle(self) -> TrustBundle:
        return self._bundle

    def federated_bundles(self, entries: Iterable[RegistrationEntry]) -> dict[str, TrustBundle]:
        """The foreign bundles ``entries`` federate with, as the server last sent them."""
        names = {name for entry in entries for name in entry.federates_with}
        return {name: b for name, b in sorted(self._federated.items()) if name in names}

    def entries_for(self, selectors: Iterable[Selector]) -> list[RegistrationEntry]:
        """Entries whose selectors the workload has, that hold an unexpired SVID."""
        have = frozenset(selectors)
        now = self._clock.now()
        found = [
            entry
            for entry in self._entries.values()
            if entry.selectors
            and have.issuperset(entry.selectors)
            and (svid := self._svids.get(entry.entry_id)) is not None
            and svid.expires_at > now
        ]
        found.sort(key=lambda e: (e.created_at, e.entry_id))
        return found

    def x509_svid(self, entry: RegistrationEntry) -> WorkloadX509Svid:
        svid = self._svids.get(entry.entry_id)
        if svid is None:
            raise CAError(f"no SVID for entry {entry.entry_id} yet")
        return svid

    async def commit(self) -> None:
        return None  # the server logged each SVID before it sent it

    async def fetch_jwt_svid(self, entry: RegistrationEntry, audience: Sequence[str]) -> JwtSvid:
        """From the cache until half its life has passed, else minted by the server."""
        key = (entry.entry_id, tuple(sorted(audience)))
        now = self._clock.now()
        cached = self._jwt.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        if self.jwt_minter is None:
            raise CAError("this agent cannot reach its server for JWT-SVIDs yet")
        try:
            token = await asyncio.to_thread(self.jwt_minter, entry.entry_id, list(audience))
            svid = self.verify_jwt_svid(token, audience)
        except CAError:
            raise
        except Exception as exc:  # the server's refusal or absence, named to the workload
            raise CAError(f"cannot get a JWT-SVID now: {exc}") from None
        if len(self._jwt) >= MAX_CACHED_JWT_SVIDS:
            # Audiences are the caller's choice: the stale go first, then the oldest.
            self._jwt = {k: v for k, v in self._jwt.items() if now < v[1]}
            while len(self._jwt) >= MAX_CACHED_JWT_SVIDS:
                del self._jwt[next(iter(self._jwt))]
        self._jwt[key] = (svid, now + (svid.expiry - now) / 2)
        return svid

    def verify_jwt_svid(self, token: str, audience: Sequence[str]) -> JwtSvid:
        bundle = self._bundle
        return verify_jwt_svid(
            token,
            trust_domain=bundle.trust_domain,
            keys=bundle.jwt_authorities,
            audience=audience,
            now=self._clock.now(),
        )

    def rotate_due(self) -> int:
        """Drop SVIDs that expired (renewal is ``AgentSync``'s, which needs the server)."""
        now = self._clock.now()
        expired = [entry_id for entry_id, s in self._svids.items() if s.expires_at <= now]
        for entry_id in expired:
            del self._svids[entry_id]
        if expired:
            self._signal.bump()
        return len(expired)

    # --- what AgentSync tells it ---------------------------------------------------------

    def set_bundle(self, bundle: TrustBundle) -> None:
        if bundle.to_jwks() != self._bundle.to_jwks():
            self._bundle = bundle
            self._jwt.clear()  # never hand out a token signed by a key that left the bundle
            self._signal.bump()

    def set_federated(self, bundles: dict[str, TrustBundle]) -> None:
        if {k: b.to_jwks() for k, b in bundles.items()} != {
            k: b.to_jwks() for k, b in self._federated.items()
        }:
            self._federated = dict(bundles)
            self._signal.bump()

    def set_distrusted(self, authorities: Sequence[x509.Certificate]) -> None:
        """Tainted or revoked authorities: the SVIDs they signed fall due at once."""
        distrusted = tuple(authorities)
        if distrusted == self._distrusted:
            return
        self._distrusted = distrusted
        self._distrusted_entries = {
            entry_id
            for entry_id, svid in self._svids.items()
            if any(_issued_by(svid.chain[0], authority) for authority in distrusted)
        }
        self._jwt.clear()  # a JWT authority may have changed too: ask again

    def set_entries(self, entries: Iterable[RegistrationEntry]) -> None:
        fresh = {e.entry_id: e for e in entries}
        if fresh == self._entries:
            return
        self._entries = fresh
        self._jwt = {k: v for k, v in self._jwt.items() if k[0] in fresh}
        for entry_id in [e for e in self._svids if e not in fresh]:
            del self._svids[entry_id]
        self._signal.bump()

    def due(self) -> list[RegistrationEntry]:
        """Entries with no SVID, one past its renewal time, or one of an older revision."""
        now = self._clock.now()
        due = []
        for entry in self._entries.values():
            svid = self._svids.get(entry.entry_id)
            if (
                svid is None
                or now >= svid.rotate_at
                or svid.entry_revision != entry.revision
                or entry.entry_id in self._distrusted_entries
            ):
                due.append(entry)
        return due

    def put(self, svids: Iterable[WorkloadX509Svid]) -> None:
        changed = False
        for svid in svids:
            if svid.entry_id in self._entries:
                self._svids[svid.entry_id] = svid
                self._distrusted_entries.discard(svid.entry_id)
                changed = True
        if changed:
            self._signal.bump()

    def renewal_time(self, issued_at: float, expires_at: float) -> float:
        return rotation_time(issued_at, expires_at, self._rng)

    @property
    def svid_count(self) -> int:
        return len(self._svids)

    def earliest_expiry(self) -> float | None:
        return min((s.expires_at for s in self._svids.values()), default=None)


def _issued_by(leaf: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True

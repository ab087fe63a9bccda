"""The authority timeline: rotation state, persisted, and what follows from it.

SPIRE's ``manager/slot.go`` + ``journal.go``: the X.509 and JWT authorities, each prepared,
active or retired (and maybe tainted or revoked), live in the store. This class moves them
along (by the clock, through ``ca.rotation``'s plan, or by an operator's step), and rebuilds what
follows from the records: the trust bundle and the authorities this replica can sign with. It
never signs an SVID and never decides *when* to rotate.

Each step is one store write: its authority records (saved and pruned), its audit records and,
when the bundle's content changes, the bundle's own sequence number. So a crash leaves a step
wholly done or not at all, every stored step is audited, and no sequence number stands for two
bundle contents. A pruned authority's key is deleted only after that write.

With several replicas on one store, exactly one rotates (it holds the keys); the others
follow: ``reload()`` re-reads the records another replica changed. A store that is not
trusted (``store_trusted()`` false: it went backwards, see ``ca.store.regression``) is never
rotated, so authorities are never made over one that merely lost them.

With a rotation lease (``fence`` given: every replica holds the keys, see
``ca.shared_keystore``), several replicas may be configured to rotate; only the one whose
``fence()`` gives a token moves the timeline, and every step it stores carries that token, so
the store refuses it once the lease has moved on (``ca.store.base.Fenced``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca import rotation
from ca.authorities import SigningAuthorities
from ca.authority_factory import make_authority
from ca.bundle import TrustBundle
from ca.clock import Clock
from ca.errors import InvalidRequest
from ca.keys import KeyStore, PublicKey
from ca.settings import CASettings, UpstreamAuthority
from ca.spiffe_id import TrustDomain
from ca.store import AuditDraft, AuthorityRecord, NotFound, Store, StoreError

log = logging.getLogger(__name__)

BUNDLE_SEQUENCE = "bundle"
KINDS = ("x509", "jwt")


class AuthorityTimeline:
    """The persisted X.509 and JWT authority timelines, the bundle and signers they give."""

    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        store: Store,
        keystore: KeyStore,
        clock: Clock,
        settings: CASettings,
        upstream: UpstreamAuthority | None = None,
        rotates: bool = True,
        notify: Callable[[Callable[[], None]], object] | None = None,
        store_trusted: Callable[[], bool] = lambda: True,
        fence: Callable[[], int | None] | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.store = store
        self.keystore = keystore
        self.clock = clock
        self.settings = settings
        self.upstream = upstream
        self.rotates = rotates
        self._lock = threading.RLock()
        self._signing = SigningAuthorities()
        self._bundle = TrustBundle(trust_domain)
        self._listeners: list[Callable[[], None]] = []
        self._stale = False  # a step was stored but could not be read back: rotate() reloads
        self._dispatch = notify or (lambda listener: listener())  # e.g. onto the serving loop
        self._store_trusted = store_trusted
        self._fence = fence
        self._loaded = False
        if rotates and store_trusted() and self._token() != 0:
            self.rotate()
            signing = self._signing
            if signing.x509_active is None or signing.jwt_active is None:
                # The rotating replica is the CA: it must hold its active authorities' keys.
                for record in self.store.list_authorities():
                    if record.state == rotation.ACTIVE and not record.revoked:
                        self.keystore.load(record.key_ref)  # raises, naming the missing key
        if not self._loaded:
            self._load()

    # --- what follows from the records ----------------------------------------------------

    @property
    def bundle(self) -> TrustBundle:
        """The current trust bundle of this trust domain (one immutable snapshot)."""
        return self._bundle

    @property
    def signing(self) -> SigningAuthorities:
        """The authorities this replica can sign with now (one immutable snapshot)."""
        return self._signing

    def authorities(self) -> list[AuthorityRecord]:
        return self.store.list_authorities()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the authorities or the bundle."""
        self._listeners.append(listener)

    # --- moving along the timeline --------------------------------------------------------

    def rotate(self) -> bool:
        """Bring both timelines up to date with the clock; True if anything changed.

        Only the rotating replica moves the timeline (it holds the keys); the others follow.
        """
        if not self.rotates or not self._store_trusted():
            return False
        token = self._token()
        if token == 0:
            return False  # another replica leads rotation now
        with self._lock:
            now = self.clock.now()
            changed = False
            for kind in KINDS:
                plan = rotation.plan_rotation(self.store.list_authorities(kind), now)
                if not plan.is_empty:
                    self._stale = True  # until read back: the next kind's write may fail
                    self._apply(kind, plan, now, token)
                    changed = True
            if changed or self._stale or self._signing.x509_active is None:
                self._load()
            if changed:
                self._notify()
            return changed

    def reload(self) -> None:
        """Re-read the authorities from the store (another replica changed them)."""
        with self._lock:
            self._load()
        self._notify()

    # --- operator-driven steps (SPIRE's `localauthority` commands) -------------------------

    def prepare_authority(self, kind: str, *, actor: str = "authd") -> AuthorityRecord:
        """Prepare the next authority of ``kind`` now (it enters the bundle at once)."""
        token = self._require_rotating()
        with self._lock:
            if kind not in KINDS:
                raise InvalidRequest(f"authority kind must be x509 or jwt, not {kind!r}")
            if any(r.state == rotation.PREPARED for r in self.store.list_authorities(kind)):
                raise InvalidRequest(f"a prepared {kind} authority already exists")
            record = self._new_authority(kind, rotation.PREPARED, self.clock.now())
            self._changed([record], "", actor, fence=token)
            return record

    def activate_authority(self, kind: str, *, actor: str = "authd") -> AuthorityRecord:
        """Make the prepared authority of ``kind`` sign now; the active one is retired."""
        token = self._require_rotating()
        with self._lock:
            records = self.store.list_authorities(kind)
            prepared = [r for r in records if r.state == rotation.PREPARED]
            if not prepared:
                raise InvalidRequest(f"no prepared {kind} authority to activate; prepare one first")
            updates = [replace(prepared[-1], state=rotation.ACTIVE)]
            updates += [
                replace(r, state=rotation.RETIRED) for r in records if r.state == rotation.ACTIVE
            ]
            self._changed(updates, "", actor, fence=token)
            return updates[0]

    def taint_authority(self, authority_id: str, *, actor: str = "authd") -> AuthorityRecord:
        """Mark a retired authority tainted: everything it signed is re-issued at once."""
        with self._lock:
            record = self._record(authority_id)
            if record.state != rotation.RETIRED:
                raise InvalidRequest(
                    f"only a retired authority can be tainted; {authority_id} is {record.state}"
                    " (activate another one first)"
                )
            if record.tainted:
                raise InvalidRequest(f"authority {authority_id} is already tainted")
            tainted = replace(record, tainted=True)
            self._changed([tainted], "tainted", actor)
            return tainted

    def revoke_authority(self, authority_id: str, *, actor: str = "authd") -> AuthorityRecord:
        """Remove a tainted authority from the bundle: what it signed is no longer trusted."""
        with self._lock:
            record = self._record(authority_id)
            if not record.tainted:
                raise InvalidRequest(
                    f"authority {authority_id} must be tainted before it is revoked, so that "
                    "what it signed is re-issued first"
                )
            revoked = replace(record, revoked=True)
            self._changed([revoked], "revoked", actor)
            return revoked

    # --- internals ------------------------------------------------------------------------

    def _require_rotating(self) -> int | None:
        """The fencing token to write an operator's step under (None: no lease in use)."""
        if not self.rotates:
            raise InvalidRequest(
                "this replica does not rotate authorities (ca.rotates = false): prepare and "
                "activate on the replica that holds the CA keys (taint and revoke work anywhere)"
            )
        token = self._token()
        if token == 0:
            raise InvalidRequest(
                "this replica does not hold the rotation lease now: prepare and activate on "
                "the replica that leads rotation (authd_rotation_leader 1 in its metrics)"
            )
        return token

    def _token(self) -> int | None:
        """None without a lease (this replica always leads), 0 when another replica leads."""
        if self._fence is None:
            return None
        return self._fence() or 0

    def _record(self, authority_id: str) -> AuthorityRecord:
        try:
            return self.store.get_authority(authority_id)
        except NotFound:
            raise InvalidRequest(f"no authority {authority_id!r}") from None

    def _changed(
        self,
        updates: Sequence[AuthorityRecord],
        action: str,
        actor: str = "authd",
        *,
        fence: int | None = None,
    ) -> None:
        audit = [
            self._audit(
                f"authority.{action}" if action else f"authority.{record.state}", record, actor
            )
            for record in updates
        ]
        self.store.save_authorities(updates, audit=audit, sequence=BUNDLE_SEQUENCE, fence=fence)
        try:
            self._load()
        except StoreError as exc:
            # The step is stored and audited: it is not refused now; the next rotate() reloads.
            self._stale = True
            log.error("an authority step is stored, but could not be read back: %s", exc)
            return
        self._notify()

    def _apply(self, kind: str, plan: rotation.RotationPlan, now: float, fence: int | None) -> None:
        records = {r.authority_id: r for r in self.store.list_authorities(kind)}
        updates: list[AuthorityRecord] = []
        if plan.create_active or plan.prepare:
            state = rotation.ACTIVE if plan.create_active else rotation.PREPARED
            updates.append(self._new_authority(kind, state, now))
        if plan.activate:
            updates.append(replace(records[plan.activate], state=rotation.ACTIVE))
        updates.extend(replace(records[a], state=rotation.RETIRED) for a in plan.retire)
        pruned = [records[a] for a in plan.prune]
        audit = [self._audit(f"authority.{r.state}", r) for r in updates]
        audit += [self._audit("authority.pruned", r) for r in pruned]
        self.store.save_authorities(
            updates,
            delete=[r.authority_id for r in pruned],
            audit=audit,
            sequence=BUNDLE_SEQUENCE if plan.changes_bundle else None,
            fence=fence,
        )
        for record in pruned:  # after the write: a failed write still has its keys
            self.keystore.delete(record.key_ref)

    def _new_authority(self, kind: str, state: str, now: float) -> AuthorityRecord:
        return make_authority(
            kind,
            state,
            now,
            trust_domain=self.trust_domain,
            settings=self.settings,
            keystore=self.keystore,
            upstream=self.upstream,
        )

    def _audit(self, action: str, record: AuthorityRecord, actor: str = "authd") -> AuditDraft:
        return AuditDraft(
            time=int(self.clock.now()),
            actor=actor,
            action=action,
            subject=record.authority_id,
            details={"kind": record.kind, "not_after": record.not_after},
        )

    def _load(self) -> None:
        """Rebuild the signing authorities and the bundle from the persisted timeline."""
        self._stale = True
        x509_records = self.store.list_authorities("x509")
        jwt_records = self.store.list_authorities("jwt")
        roots = tuple(
            x509.load_der_x509_certificate(r.certificate_der) for r in x509_records if not r.revoked
        )
        if self.upstream is not None:
            roots = self.upstream.roots
        jwt_keys: dict[str, PublicKey] = {}
        for record in jwt_records:
            if not record.revoked:
                public_key = serialization.load_der_public_key(record.public_key_der)
                jwt_keys[record.authority_id] = public_key  # type: ignore[assignment]
        self._signing = SigningAuthorities.load(x509_records, jwt_records, self.keystore)
        self._bundle = TrustBundle(
            self.trust_domain,
            roots,
            jwt_keys,
            self.store.current_sequence(BUNDLE_SEQUENCE),
            self.settings.refresh_hint,
        )
        self._stale = False
        self._loaded = True

    def _notify(self) -> None:
        for listener in self._listeners:
            self._dispatch(listener)

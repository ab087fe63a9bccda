"""Revoking and un-revoking, durably, and the CRLs that say so (built by ``ca.crl``).

Every revocation is written to the store with its audit record, in one transaction, before it
is acknowledged, then applied to the in-memory ``RevocationView``: a revocation that raised
changed nothing, one that returned is stored and audited. Revoking a SPIFFE ID or a
registration entry also blocks new issuance for it until it is lifted. Only a
``certificateHold`` can be lifted (RFC 5280 5.3.1): every other reason is final.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock
from ca.crl import build_crl
from ca.errors import AlreadyRevoked, FinalRevocation, InvalidRequest, NotRevoked, UnknownTarget
from ca.revocation_view import RevocationReason, RevocationView
from ca.spiffe_id import SpiffeId
from ca.store import (
    AlreadyExists,
    AuditDraft,
    IssuanceRecord,
    NotFound,
    Revocation,
    Store,
    StoreError,
)

log = logging.getLogger(__name__)

CRL_NUMBER = "crl"


@dataclass(frozen=True, slots=True)
class _CachedCrls:
    by_authority: dict[str, x509.CertificateRevocationList]
    crls: list[x509.CertificateRevocationList]
    rebuild_at: float


class Revoker:
    """Revokes and un-revokes durably, keeps the ``RevocationView`` in step, serves CRLs."""

    def __init__(
        self,
        ca: CertificateAuthority,
        store: Store,
        clock: Clock,
        *,
        view: RevocationView | None = None,
        crl_refresh: int = 900,
        notify: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self._ca = ca
        self._store = store
        self._clock = clock
        self.view = view or RevocationView()
        self.crl_refresh = crl_refresh
        self._lock = threading.Lock()
        # The CRLs by issuing authority id (in live order), the same as one list (the same
        # object until they change: callers tell new CRLs by identity), and when to rebuild.
        self._crls: _CachedCrls | None = None
        self._listeners: list[Callable[[], None]] = []
        # How listeners are called: directly, or handed to the serving loop by a caller
        # whose changes arrive on another thread (a replica following the shared store).
        self._notify = notify or (lambda listener: listener())
        ca.add_listener(self._invalidate)
        self.sync()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every revocation change (e.g. to push new CRLs)."""
        self._listeners.append(listener)

    def sync(self) -> None:
        """Rebuild the view from the store (at start, and when a replica reconnects)."""
        revocations = self._store.list_revocations()
        self.view.load(revocations, at=self._clock.now())
        for revocation in revocations:
            if revocation.target_kind == "entry":
                self._apply(revocation, revoked=True)
        self._changed()

    def _apply(self, revocation: Revocation, *, revoked: bool) -> None:
        """Update the view; an entry's revocation also covers the serials it was issued."""
        self.view.apply(revocation.target_kind, revocation.target, revoked=revoked)
        if revocation.target_kind == "entry":
            now = self._clock.now()
            self._ca.issuance_log.flush()
            for issuance in self._issued_to(revocation):
                if issuance.not_after > now:
                    self.view.apply("serial", issuance.serial, revoked=revoked)

    # --- revoking --------------------------------------------------------------------------

    def revoke(
        self, kind: str, target: str, *, reason: int | str, note: str, actor: str
    ) -> Revocation:
        target = self._check_target(kind, target)
        reason_code = RevocationReason.parse(reason)
        if reason_code is RevocationReason.REMOVE_FROM_CRL:
            raise InvalidRequest("removeFromCRL is not a revocation; use unrevoke")
        revocation = Revocation(
            target_kind=kind,
            target=target,
            reason=int(reason_code),
            note=note,
            revoked_at=int(self._clock.now()),
            revoked_by=actor,
        )
        audit = AuditDraft(
            time=revocation.revoked_at,
            actor=actor,
            action="revoke",
            subject=f"{kind}:{target}",
            details={"reason": reason_code.label, "note": note},
        )
        try:
            self._store.add_revocation(revocation, audit=audit)
        except AlreadyExists:
            raise AlreadyRevoked(f"{kind} {target} is already revoked") from None
        self._applied(revocation, revoked=True)
        return revocation

    def unrevoke(self, kind: str, target: str, *, actor: str) -> Revocation:
        target = self._check_target(kind, target, must_exist=False)
        try:
            revocation = self._store.get_revocation(kind, target)
        except NotFound:
            raise NotRevoked(f"{kind} {target} is not revoked") from None
        if revocation.reason != RevocationReason.CERTIFICATE_HOLD:
            reason = RevocationReason(revocation.reason).label
            raise FinalRevocation(
                f"{kind} {target} was revoked for {reason}; only certificate-hold can be lifted"
            )
        audit = AuditDraft(
            time=int(self._clock.now()), actor=actor, action="unrevoke", subject=f"{kind}:{target}"
        )
        self._store.remove_revocation(kind, target, audit=audit)
        self._applied(revocation, revoked=False)
        return revocation

    def _applied(self, revocation: Revocation, *, revoked: bool) -> None:
        """Bring the view in step with a change the store has committed. The change stands
        even if the store fails now (reading an entry's serials): the caller is told it
        succeeded, the target itself is in the view, and the next ``sync`` completes it."""
        try:
            self._apply(revocation, revoked=revoked)
        except StoreError as exc:
            self.view.apply(revocation.target_kind, revocation.target, revoked=revoked)
            log.error(
                "%s %s %s is stored, but its serials could not be read to update the view: %s",
                "revoking" if revoked else "lifting the revocation of",
                revocation.target_kind,
                revocation.target,
                exc,
            )
        self._changed()

    def refresh(self, kind: str, target: str) -> None:
        """Re-read one revocation from the store (another replica changed it)."""
        try:
            revocation = self._store.get_revocation(kind, target)
        except NotFound:
            if self.view.contains(kind, target):
                self._apply(
                    Revocation(
                        target_kind=kind,
                        target=target,
                        reason=0,
                        note="",
                        revoked_at=0,
                        revoked_by="",
                    ),
                    revoked=False,
                )
                self._changed()
            return
        if not self.view.contains(kind, target):
            self._apply(revocation, revoked=True)
            self._changed()

    def blocks_issuance(self, spiffe_id: str, entry_id: str | None = None) -> bool:
        view = self.view
        return view.contains("spiffe_id", spiffe_id) or (
            entry_id is not None and view.contains("entry", entry_id)
        )

    def _check_target(self, kind: str, target: str, *, must_exist: bool = True) -> str:
        if kind == "serial":
            serial = target.lower().removeprefix("0x").replace(":", "")
            try:
                int(serial, 16)
            except ValueError:
                raise InvalidRequest(f"serial {target!r} is not hexadecimal") from None
            serial = serial.lstrip("0") or "0"
            if must_exist:
                self._ca.issuance_log.flush()
                try:
                    self._store.get_issuance(serial)
                except NotFound:
                    raise UnknownTarget(f"unknown serial {serial}: authd never issued it") from None
            return serial
        if kind == "spiffe_id":
            return str(SpiffeId.parse(target))  # InvalidSpiffeId says what is wrong
        if kind == "entry":
            if must_exist:
                try:
                    self._store.get_entry(target)
                except NotFound:
                    raise UnknownTarget(f"no registration entry {target!r}") from None
            return target
        if kind in ("jti", "txn"):
            # A token's id or a transaction's: refused wherever it is presented from now on.
            if not target or len(target) > 256 or not target.isprintable() or " " in target:
                raise InvalidRequest(f"{kind} {target[:64]!r} is not a token or transaction id")
            return target
        raise InvalidRequest(f"cannot revoke a {kind!r}; use serial, spiffe_id, entry, jti or txn")

    def _changed(self) -> None:
        self._invalidate()
        for listener in self._listeners:
            self._notify(listener)

    def _invalidate(self) -> None:
        with self._lock:
            self._crls = None

    # --- CRLs --------------------------------------------------------------------------

    def crls(self) -> list[x509.CertificateRevocationList]:
        """One CRL per live X.509 authority, rebuilt on change or before nextUpdate."""
        return self._cached().crls

    def crl_of(self, authority_id: str | None = None) -> x509.CertificateRevocationList | None:
        """The CRL of live X.509 authority ``authority_id`` (None: the active one), if any."""
        by_authority = self._cached().by_authority  # first: it may follow a rotation
        if authority_id is None:
            active = self._ca.timeline.signing.x509_active
            if active is None:
                return None
            authority_id = active.authority_id
        return by_authority.get(authority_id)

    def _cached(self) -> _CachedCrls:
        now = self._clock.now()
        with self._lock:
            cached = self._crls
            if cached is not None and now < cached.rebuild_at:
                return cached
            by_authority = self._build(now)
            # Rebuild at half the refresh so a relying party never holds an expired CRL.
            self._crls = _CachedCrls(
                by_authority, list(by_authority.values()), now + self.crl_refresh / 2
            )
            return self._crls

    def _build(self, now: float) -> dict[str, x509.CertificateRevocationList]:
        self._ca.issuance_log.flush()
        revoked: dict[str, list[tuple[IssuanceRecord, Revocation]]] = {}
        for revocation in self._store.list_revocations():
            for issuance in self._issued_to(revocation):
                if issuance.kind == "x509" and issuance.not_after > now:
                    # Expired certificates need not be listed (RFC 5280 3.3).
                    revoked.setdefault(issuance.authority_id, []).append((issuance, revocation))
        number = self._store.next_sequence(CRL_NUMBER)
        return {
            authority.authority_id: build_crl(
                authority,
                revoked.get(authority.authority_id, []),
                now=now,
                next_update=now + self.crl_refresh,
                number=number,
            )
            for authority in self._ca.live_x509_authorities()
        }

    def _issued_to(self, revocation: Revocation) -> list[IssuanceRecord]:
        """The SVIDs a revocation covers, from the issuance log."""
        kind, target = revocation.target_kind, revocation.target
        try:
            if kind == "serial":
                return [self._store.get_issuance(target)]
            if kind == "spiffe_id":
                return self._store.list_issuances(spiffe_id=target)
            if kind == "entry":
                entry = self._store.get_entry(target)
                requester = f"entry:{target}"
                return [
                    issuance
                    for issuance in self._store.list_issuances(spiffe_id=entry.spiffe_id)
                    if issuance.requester == requester
                ]
        except NotFound:
            pass
        return []

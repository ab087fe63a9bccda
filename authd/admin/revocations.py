"""Revocations as admin operations, through the daemon's ``Revoker``, which stores
and audits each one before it returns.

Refusals about what is stored rather than about the request say so: revoking what is
already revoked is a ``Duplicate``, lifting what is not revoked an ``UnknownTarget``, lifting
anything but a certificate-hold a ``FailedPrecondition``; the rest are ``InvalidArgument``.
"""

from __future__ import annotations

import logging

from authd.admin.callers import AdminCaller
from authd.admin.errors import (
    AdminError,
    Duplicate,
    FailedPrecondition,
    InvalidArgument,
    UnknownTarget,
    store_refusal,
)
from ca import errors as ca_errors
from ca.errors import AlreadyRevoked, FinalRevocation, InvalidRequest, InvalidSpiffeId, NotRevoked
from ca.revocation_view import RevocationReason
from ca.revoker import Revoker
from ca.store import Revocation, Store, StoreError

log = logging.getLogger(__name__)

REVOCATION_KINDS = ("serial", "spiffe_id", "entry", "jti", "txn")

_STATE_REFUSALS: tuple[tuple[type[InvalidRequest], type[AdminError]], ...] = (
    (AlreadyRevoked, Duplicate),
    (NotRevoked, UnknownTarget),
    (ca_errors.UnknownTarget, UnknownTarget),
    (FinalRevocation, FailedPrecondition),
)


def _refusal(exc: InvalidRequest | InvalidSpiffeId | StoreError) -> AdminError:
    if isinstance(exc, StoreError):
        return store_refusal(exc)
    for kind, refusal in _STATE_REFUSALS:
        if isinstance(exc, kind):
            return refusal(str(exc))
    return InvalidArgument(str(exc))


def check_kind(kind: str, *, optional: bool = False) -> str:
    if not (kind in REVOCATION_KINDS or (optional and not kind)):
        raise InvalidArgument(
            f"revocation kind must be serial, spiffe_id, entry, jti or txn, not {kind!r}"
        )
    return kind


class RevocationOperations:
    def __init__(self, revocations: Revoker, store: Store) -> None:
        self._revocations = revocations
        self._store = store

    def revoke(
        self, caller: AdminCaller, kind: str, target: str, *, reason: str, note: str
    ) -> Revocation:
        """Revokes ``target``; returned once stored and audited, the target canonical."""
        kind = check_kind(kind)
        try:
            revocation = self._revocations.revoke(
                kind, target, reason=reason or "unspecified", note=note, actor=caller.actor
            )
        except (InvalidRequest, InvalidSpiffeId, StoreError) as exc:
            raise _refusal(exc) from None
        label = RevocationReason(revocation.reason).label
        log.info("revoked %s %s (%s) by %s", kind, revocation.target, label, caller)
        return revocation

    def unrevoke(self, caller: AdminCaller, kind: str, target: str) -> Revocation:
        """Lifts a certificate-hold; returns the revocation that was lifted."""
        kind = check_kind(kind)
        try:
            lifted = self._revocations.unrevoke(kind, target, actor=caller.actor)
        except (InvalidRequest, InvalidSpiffeId, StoreError) as exc:
            raise _refusal(exc) from None
        log.info("lifted the revocation of %s %s by %s", kind, lifted.target, caller)
        return lifted

    def list(self, kind: str = "") -> list[Revocation]:
        kind = check_kind(kind, optional=True)
        try:
            return self._store.list_revocations(kind or None)
        except StoreError as exc:
            raise store_refusal(exc) from None

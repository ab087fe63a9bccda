"""The CA's authorities as admin operations: what they are, and the operator's rotation steps
(prepare, activate, taint, revoke: SPIRE's ``localauthority``). A step out of order is a
``FailedPrecondition`` with the CA's reason."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from authd.admin.callers import AdminCaller
from authd.admin.errors import FailedPrecondition, InvalidArgument, UnknownTarget, store_refusal
from ca.certificate_authority import CertificateAuthority
from ca.errors import InvalidRequest
from ca.store import AuthorityRecord, NotFound, StoreError

log = logging.getLogger(__name__)

AUTHORITY_KINDS = ("x509", "jwt")


@dataclass(frozen=True, slots=True)
class CAState:
    trust_domain: str
    authorities: list[AuthorityRecord]
    bundle_sequence: int
    upstream: bool


@dataclass(frozen=True, slots=True)
class AuthorityStep:
    """An authority as it is after a rotation step, and the bundle's sequence then."""

    authority: AuthorityRecord
    bundle_sequence: int


def check_kind(kind: str) -> str:
    if kind not in AUTHORITY_KINDS:
        raise InvalidArgument(f"authority kind must be x509 or jwt, not {kind!r}")
    return kind


class AuthorityOperations:
    def __init__(self, ca: CertificateAuthority) -> None:
        self._ca = ca

    def show(self) -> CAState:
        ca = self._ca
        try:
            authorities = ca.authorities()
        except StoreError as exc:
            raise store_refusal(exc) from None
        return CAState(
            trust_domain=str(ca.trust_domain),
            authorities=authorities,
            bundle_sequence=ca.bundle.sequence,
            upstream=ca.upstream is not None,
        )

    def prepare(self, caller: AdminCaller, kind: str) -> AuthorityStep:
        kind = check_kind(kind)
        return self._step(
            caller, lambda: self._ca.prepare_authority(kind, actor=caller.actor), "prepared"
        )

    def activate(self, caller: AdminCaller, kind: str) -> AuthorityStep:
        kind = check_kind(kind)
        return self._step(
            caller, lambda: self._ca.activate_authority(kind, actor=caller.actor), "activated"
        )

    def taint(self, caller: AdminCaller, kind: str, authority_id: str) -> AuthorityStep:
        record = self._authority(kind, authority_id)
        return self._step(
            caller,
            lambda: self._ca.taint_authority(record.authority_id, actor=caller.actor),
            "tainted",
        )

    def revoke(self, caller: AdminCaller, kind: str, authority_id: str) -> AuthorityStep:
        record = self._authority(kind, authority_id)
        if record.revoked:
            raise FailedPrecondition(f"authority {record.authority_id} is already revoked")
        return self._step(
            caller,
            lambda: self._ca.revoke_authority(record.authority_id, actor=caller.actor),
            "revoked",
        )

    def _authority(self, kind: str, authority_id: str) -> AuthorityRecord:
        """The authority ``authority_id``, which must exist and be of ``kind``."""
        kind = check_kind(kind)
        if not authority_id:
            raise InvalidArgument("authority_id is required")
        try:
            record = self._ca.store.get_authority(authority_id)
        except NotFound:
            raise UnknownTarget(f"no authority {authority_id!r}") from None
        except StoreError as exc:
            raise store_refusal(exc) from None
        if record.kind != kind:
            raise InvalidArgument(f"authority {authority_id} is of kind {record.kind}, not {kind}")
        return record

    def _step(
        self, caller: AdminCaller, change: Callable[[], AuthorityRecord], action: str
    ) -> AuthorityStep:
        try:
            record = change()
        except InvalidRequest as exc:
            raise FailedPrecondition(str(exc)) from None
        except StoreError as exc:
            raise store_refusal(exc) from None
        log.info("%s %s authority %s by %s", action, record.kind, record.authority_id, caller)
        return AuthorityStep(record, self._ca.bundle.sequence)

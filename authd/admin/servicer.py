"""The admin API (authd.admin.v1.Admin): a thin gRPC adapter over the CA and the entries.

Who may call it is decided in ``AdminService._authorize``, for two kinds of connection. On
the Unix socket, from the kernel's credentials of the caller's connection (see
``authd.transport.peercred``): root and the configured admin uids. Over mutual TLS (see
``authd.admin.remote``), from the client's X.509-SVID, its chain verified by the CA against
our own bundle: not revoked (serial or SPIFFE ID), and its SPIFFE ID that of an unexpired,
unrevoked registration entry with ``admin: true``. Everything else is translation:
request fields to CA and store calls, their errors to gRPC statuses with a message. What
makes an entry valid is ``authd.workload.entries``; every entry change is audited and
reloaded into the in-memory registry before the reply. Revocations go through the daemon's
``Revoker``, which stores and audits each one before the reply; what the audit chain
proves is ``ca.audit``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NoReturn, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authd.admin.remote import client_chain
from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.transport.peercred import PeerCredentials, PeerCredGateway
from authd.workload.entries import EntryError, EntryRules, parse_selector
from authd.workload.registry import EntryRegistry
from ca.audit import records_about, verify_chain
from ca.certificate_authority import CertificateAuthority
from ca.errors import (
    AlreadyRevoked,
    FinalRevocation,
    InvalidRequest,
    InvalidSpiffeId,
    NotRevoked,
    VerificationError,
)
from ca.revocation_view import RevocationQuery, RevocationReason
from ca.revoker import Revoker
from ca.spiffe_id import SpiffeId
from ca.store import (
    AlreadyExists,
    AuditRecord,
    AuthorityRecord,
    Conflict,
    CorruptRecord,
    IssuanceRecord,
    NotFound,
    RegistrationEntry,
    Revocation,
    Selector,
    StoreError,
)
from ca.store.records import canonical_json

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Context = grpc.aio.ServicerContext[Any, Any]

AUTHORITY_KINDS = ("x509", "jwt")
REVOCATION_KINDS = ("serial", "spiffe_id", "entry")

# Refusals about what is stored, not about the request, get the status that says so; the
# rest of Revoker's InvalidRequest refusals are INVALID_ARGUMENT.
_REVOCATION_STATE_REFUSALS: tuple[tuple[type[InvalidRequest], grpc.StatusCode], ...] = (
    (AlreadyRevoked, grpc.StatusCode.ALREADY_EXISTS),
    (NotRevoked, grpc.StatusCode.NOT_FOUND),
    (FinalRevocation, grpc.StatusCode.FAILED_PRECONDITION),
)


def entry_to_proto(entry: RegistrationEntry) -> admin_pb2.Entry:
    return admin_pb2.Entry(
        id=entry.entry_id,
        spiffe_id=entry.spiffe_id,
        parent_id=entry.parent_id,
        selectors=[admin_pb2.Selector(type=s.type, value=s.value) for s in entry.selectors],
        x509_svid_ttl=entry.x509_svid_ttl,
        jwt_svid_ttl=entry.jwt_svid_ttl,
        dns_names=entry.dns_names,
        federates_with=entry.federates_with,
        admin=entry.admin,
        downstream=entry.downstream,
        hint=entry.hint,
        expires_at=entry.expires_at,
        revision=entry.revision,
        created_at=entry.created_at,
    )


def entry_from_proto(message: admin_pb2.Entry) -> RegistrationEntry:
    """The entry as sent, unchecked; ``EntryRules.check`` decides whether it is valid."""
    return RegistrationEntry(
        entry_id=message.id,
        spiffe_id=message.spiffe_id,
        parent_id=message.parent_id,
        selectors=tuple(Selector(s.type, s.value) for s in message.selectors),
        x509_svid_ttl=message.x509_svid_ttl,
        jwt_svid_ttl=message.jwt_svid_ttl,
        dns_names=tuple(message.dns_names),
        federates_with=tuple(message.federates_with),
        admin=message.admin,
        downstream=message.downstream,
        hint=message.hint,
        expires_at=message.expires_at,
        revision=message.revision,
        created_at=message.created_at,
    )


def authority_to_proto(record: AuthorityRecord) -> admin_pb2.Authority:
    subject = ""
    if record.certificate_der:
        certificate = x509.load_der_x509_certificate(record.certificate_der)
        subject = certificate.subject.rfc4514_string()
    return admin_pb2.Authority(
        authority_id=record.authority_id,
        kind=record.kind,
        state=record.state,
        key_type=record.key_type,
        not_before=record.not_before,
        not_after=record.not_after,
        certificate_der=record.certificate_der,
        subject=subject,
        tainted=record.tainted,
        revoked=record.revoked,
    )


def revocation_to_proto(revocation: Revocation) -> admin_pb2.Revocation:
    reason = RevocationReason(revocation.reason)
    return admin_pb2.Revocation(
        kind=revocation.target_kind,
        target=revocation.target,
        reason=reason.label,
        reason_code=int(reason),
        note=revocation.note,
        revoked_at=revocation.revoked_at,
        revoked_by=revocation.revoked_by,
    )


def covering_revocation(
    issuance: IssuanceRecord, revocations: Mapping[tuple[str, str], Revocation]
) -> Revocation | None:
    """The revocation that covers an issued SVID: of its serial, its SPIFFE ID or its entry."""
    keys = [("serial", issuance.serial), ("spiffe_id", issuance.spiffe_id)]
    if issuance.requester.startswith("entry:"):
        keys.append(("entry", issuance.requester.removeprefix("entry:")))
    return next((revocations[key] for key in keys if key in revocations), None)


def svid_to_proto(issuance: IssuanceRecord, revocation: Revocation | None) -> admin_pb2.Svid:
    svid = admin_pb2.Svid(
        serial=issuance.serial,
        kind=issuance.kind,
        spiffe_id=issuance.spiffe_id,
        authority_id=issuance.authority_id,
        not_before=issuance.not_before,
        not_after=issuance.not_after,
        issued_at=issuance.issued_at,
        requester=issuance.requester,
    )
    if revocation is not None:
        svid.revocation.CopyFrom(revocation_to_proto(revocation))
    return svid


def audit_to_proto(record: AuditRecord) -> admin_pb2.AuditRecord:
    return admin_pb2.AuditRecord(
        seq=record.seq,
        time=record.time,
        actor=record.actor,
        action=record.action,
        subject=record.subject,
        details_json=canonical_json(record.details),
        prev_hash=record.prev_hash,
        hash=record.hash,
    )


def _revocation_refusal(exc: InvalidRequest) -> grpc.StatusCode:
    for kind, code in _REVOCATION_STATE_REFUSALS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INVALID_ARGUMENT


def _audit_details(entry: RegistrationEntry) -> dict[str, Any]:
    return {
        "spiffe_id": entry.spiffe_id,
        "parent_id": entry.parent_id,
        "selectors": [f"{s.type}:{s.value}" for s in entry.selectors],
        "revision": entry.revision,
    }


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")  # abort raises


async def _refuse(context: Context, exc: EntryError | StoreError) -> NoReturn:
    """Answer an entry operation that failed with the status its error stands for."""
    if isinstance(exc, EntryError):
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, NotFound):
        await _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, AlreadyExists):
        await _abort(context, grpc.StatusCode.ALREADY_EXISTS, str(exc))
    if isinstance(exc, Conflict):
        await _abort(
            context,
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{exc}: it changed since it was read; show it again and retry",
        )
    log.error("store failure in the admin API: %s", exc)
    await _abort(context, grpc.StatusCode.INTERNAL, f"store error: {exc}")


class NotAnAdmin(Exception):
    """A remote caller may not use the admin API; the message says why."""


@dataclass(frozen=True, slots=True)
class AdminCaller:
    """Who made an admin call: a local uid, or the verified SPIFFE ID of a TLS client."""

    name: str  # "uid=0" or "spiffe://example.org/ops"

    @classmethod
    def local(cls, credentials: PeerCredentials) -> AdminCaller:
        return cls(f"uid={credentials.uid}")

    @classmethod
    def remote(cls, spiffe_id: str) -> AdminCaller:
        return cls(spiffe_id)

    @property
    def actor(self) -> str:
        """How the audit and issuance logs name the caller (``admin:uid=0``)."""
        return f"admin:{self.name}"

    def __str__(self) -> str:
        return self.actor


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        ca: CertificateAuthority,
        gateway: PeerCredGateway,
        allows_uid: Callable[[int], bool],
        registry: EntryRegistry,
        revocations: Revoker | None = None,
    ) -> None:
        """``revocations`` is the daemon's list, the one ext_authz and the Workload API
        consult; without it the service keeps one of its own over the CA's store."""
        self._ca = ca
        self._store = ca.store
        self._gateway = gateway
        self._allows_uid = allows_uid
        self._registry = registry
        self._rules = EntryRules(ca.trust_domain, ca.settings.max_svid_ttl)
        self._revocations = revocations or Revoker(ca, ca.store, ca.clock)

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any]) -> AdminCaller:
        """The caller, if it may use the admin API; anyone else gets PERMISSION_DENIED."""
        local = self._gateway.peer_credentials(context)
        if local is not None:
            if self._allows_uid(local.uid):
                return AdminCaller.local(local)
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"uid {local.uid} is not an authd admin (root or admin.allowed_uids)",
            )
        chain = client_chain(context.auth_context())
        if chain is None:
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "unknown caller is not an authd admin (root or admin.allowed_uids)",
            )
        try:
            return self._remote_caller(chain)
        except NotAnAdmin as exc:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except StoreError as exc:
            await _refuse(context, exc)

    def _remote_caller(self, chain: list[x509.Certificate]) -> AdminCaller:
        """The admin behind a TLS client's chain; raises NotAnAdmin saying why it is not one.

        The TLS handshake already checked the chain, but the URI SAN is believed only once
        the CA has verified the chain itself (SPIFFE leaf rules, path to our bundle).
        """
        try:
            spiffe_id = str(self._ca.verify_x509_svid(chain))
        except (VerificationError, ValueError) as exc:  # ValueError: a malformed extension
            raise NotAnAdmin(f"client certificate rejected: {exc}") from None
        serial = format(chain[0].serial_number, "x")
        view = self._revocations.view
        if view.is_revoked(RevocationQuery(serial=serial)):
            raise NotAnAdmin(f"the X.509-SVID of {spiffe_id} (serial {serial}) is revoked")
        if view.is_revoked(RevocationQuery(spiffe_id=spiffe_id)):
            raise NotAnAdmin(f"{spiffe_id} is revoked")
        for stored in self._store.list_entries(spiffe_id=spiffe_id):
            # The registry's copy, as attestation sees it: gone once expired.
            entry = self._registry.get(stored.entry_id)
            if (
                stored.admin
                and entry is not None
                and entry.admin
                and not self._revocations.blocks_issuance(spiffe_id, entry.entry_id)
            ):
                return AdminCaller.remote(spiffe_id)
        raise NotAnAdmin(f"{spiffe_id} is not an admin: no registration entry with admin: true")

    @staticmethod
    async def _invalid(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def ShowCA(
        self,
        request: admin_pb2.ShowCARequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.ShowCAResponse:
        await self._authorize(context)
        ca = self._ca
        authorities = [authority_to_proto(record) for record in ca.authorities()]
        return admin_pb2.ShowCAResponse(
            trust_domain=str(ca.trust_domain),
            authorities=authorities,
            bundle_sequence=ca.bundle.sequence,
            upstream=ca.upstream is not None,
        )

    async def _refuse_revoked(self, context: Context, spiffe_id: str) -> None:
        """A revoked SPIFFE ID gets no new SVID until the revocation is lifted."""
        if self._revocations.blocks_issuance(spiffe_id):
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{spiffe_id} is revoked: no new SVIDs until `authd unrevoke spiffe-id`",
            )

    async def MintX509SVID(
        self,
        request: admin_pb2.MintX509SVIDRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.MintX509SVIDResponse:
        caller = await self._authorize(context)
        await self._refuse_revoked(context, request.spiffe_id)
        try:
            svid = self._ca.issue_x509_svid(
                request.csr,
                spiffe_id=SpiffeId.parse(request.spiffe_id),
                dns_names=list(request.dns_names),
                ttl=request.ttl_seconds or None,
                requester=caller.actor,
            )
        except (InvalidRequest, InvalidSpiffeId) as exc:
            await self._invalid(context, exc)
            raise
        # Acknowledged means logged: a serial the caller holds can always be revoked.
        await asyncio.to_thread(self._ca.issuance_log.flush)
        log.info("minted X.509-SVID %s serial %s for %s", svid.spiffe_id, svid.serial, caller)
        return admin_pb2.MintX509SVIDResponse(
            cert_chain=svid.chain_der(),
            bundle=[
                c.public_bytes(serialization.Encoding.DER) for c in self._ca.bundle.x509_authorities
            ],
            expires_at=svid.expires_at,
            serial=svid.serial,
        )

    async def MintJWTSVID(
        self,
        request: admin_pb2.MintJWTSVIDRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.MintJWTSVIDResponse:
        caller = await self._authorize(context)
        await self._refuse_revoked(context, request.spiffe_id)
        try:
            svid = self._ca.mint_jwt_svid(
                spiffe_id=SpiffeId.parse(request.spiffe_id),
                audience=list(request.audience),
                ttl=request.ttl_seconds or None,
            )
        except (InvalidRequest, InvalidSpiffeId) as exc:
            await self._invalid(context, exc)
            raise
        log.info("minted JWT-SVID %s for %s", svid.spiffe_id, caller)
        return admin_pb2.MintJWTSVIDResponse(token=svid.token, expires_at=svid.expiry)

    async def GetBundle(
        self,
        request: admin_pb2.GetBundleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.GetBundleResponse:
        await self._authorize(context)
        bundle = self._ca.bundle
        return admin_pb2.GetBundleResponse(
            spiffe_jwks=bundle.to_json(),
            pem=bundle.to_pem().decode("ascii"),
            sequence=bundle.sequence,
            refresh_hint_seconds=bundle.refresh_hint,
        )

    # --- registration entries -------------------------------------------------------------

    def _entries_changed(self, caller: AdminCaller, action: str, entry: RegistrationEntry) -> None:
        self._registry.refresh(entry.entry_id)
        self._store.append_audit(
            time=int(self._ca.clock.now()),
            actor=caller.actor,
            action=action,
            subject=entry.entry_id,
            details=_audit_details(entry),
        )
        log.info("%s %s (%s) by %s", action, entry.entry_id, entry.spiffe_id, caller)

    async def CreateEntry(
        self, request: admin_pb2.CreateEntryRequest, context: Context
    ) -> admin_pb2.CreateEntryResponse:
        caller = await self._authorize(context)
        now = self._ca.clock.now()
        wanted = replace(entry_from_proto(request.entry), revision=0, created_at=int(now))
        try:
            entry = self._store.create_entry(self._rules.check(wanted, now=now))
        except (EntryError, StoreError) as exc:
            await _refuse(context, exc)
        self._entries_changed(caller, "entry.create", entry)
        return admin_pb2.CreateEntryResponse(entry=entry_to_proto(entry))

    async def GetEntry(
        self, request: admin_pb2.GetEntryRequest, context: Context
    ) -> admin_pb2.GetEntryResponse:
        await self._authorize(context)
        try:
            entry = self._store.get_entry(request.id)
        except StoreError as exc:
            await _refuse(context, exc)
        return admin_pb2.GetEntryResponse(entry=entry_to_proto(entry))

    async def ListEntries(
        self, request: admin_pb2.ListEntriesRequest, context: Context
    ) -> admin_pb2.ListEntriesResponse:
        await self._authorize(context)
        for field, value in (("spiffe_id", request.spiffe_id), ("parent_id", request.parent_id)):
            try:
                if value:
                    SpiffeId.parse(value)
            except InvalidSpiffeId as exc:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"filter {field!r}: {exc}")
        selector = None
        if request.selector:
            try:
                selector = parse_selector(request.selector)
            except EntryError as exc:
                await _abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, f"filter 'selector': {exc.why}"
                )
        try:
            entries = self._store.list_entries(
                spiffe_id=request.spiffe_id or None,
                parent_id=request.parent_id or None,
                selector=selector,
            )
        except StoreError as exc:
            await _refuse(context, exc)
        return admin_pb2.ListEntriesResponse(entries=[entry_to_proto(e) for e in entries])

    async def UpdateEntry(
        self, request: admin_pb2.UpdateEntryRequest, context: Context
    ) -> admin_pb2.UpdateEntryResponse:
        caller = await self._authorize(context)
        wanted = entry_from_proto(request.entry)
        try:
            if not wanted.entry_id:
                raise EntryError("entry_id", "is required to update an entry")
            checked = self._rules.check(wanted, now=self._ca.clock.now())
            entry = self._store.update_entry(checked, expected_revision=wanted.revision)
        except (EntryError, StoreError) as exc:
            await _refuse(context, exc)
        self._entries_changed(caller, "entry.update", entry)
        return admin_pb2.UpdateEntryResponse(entry=entry_to_proto(entry))

    async def DeleteEntry(
        self, request: admin_pb2.DeleteEntryRequest, context: Context
    ) -> admin_pb2.DeleteEntryResponse:
        caller = await self._authorize(context)
        try:
            entry = self._store.get_entry(request.id)
            self._store.delete_entry(request.id)
        except StoreError as exc:
            await _refuse(context, exc)
        self._entries_changed(caller, "entry.delete", entry)
        return admin_pb2.DeleteEntryResponse()

    # --- operator-driven rotation -----------------------------------------------------------

    async def _kind(self, context: Context, kind: str) -> str:
        if kind not in AUTHORITY_KINDS:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"authority kind must be x509 or jwt, not {kind!r}",
            )
        return kind

    async def _authority(self, context: Context, kind: str, authority_id: str) -> AuthorityRecord:
        """The authority ``authority_id``, which must exist and be of ``kind``."""
        kind = await self._kind(context, kind)
        if not authority_id:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "authority_id is required")
        try:
            record = self._store.get_authority(authority_id)
        except NotFound:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no authority {authority_id!r}")
        if record.kind != kind:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"authority {authority_id} is of kind {record.kind}, not {kind}",
            )
        return record

    async def _rotate(
        self,
        context: Context,
        caller: AdminCaller,
        change: Callable[[], AuthorityRecord],
        action: str,
    ) -> admin_pb2.AuthorityResponse:
        """Run one rotation step of the CA; a step out of order is FAILED_PRECONDITION."""
        try:
            record = change()
        except InvalidRequest as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.info("%s %s authority %s by %s", action, record.kind, record.authority_id, caller)
        return admin_pb2.AuthorityResponse(
            authority=authority_to_proto(record), bundle_sequence=self._ca.bundle.sequence
        )

    async def PrepareAuthority(
        self, request: admin_pb2.PrepareAuthorityRequest, context: Context
    ) -> admin_pb2.AuthorityResponse:
        caller = await self._authorize(context)
        kind = await self._kind(context, request.kind)
        return await self._rotate(
            context, caller, lambda: self._ca.prepare_authority(kind), "prepared"
        )

    async def ActivateAuthority(
        self, request: admin_pb2.ActivateAuthorityRequest, context: Context
    ) -> admin_pb2.AuthorityResponse:
        caller = await self._authorize(context)
        kind = await self._kind(context, request.kind)
        return await self._rotate(
            context, caller, lambda: self._ca.activate_authority(kind), "activated"
        )

    async def TaintAuthority(
        self, request: admin_pb2.TaintAuthorityRequest, context: Context
    ) -> admin_pb2.AuthorityResponse:
        caller = await self._authorize(context)
        record = await self._authority(context, request.kind, request.authority_id)
        return await self._rotate(
            context, caller, lambda: self._ca.taint_authority(record.authority_id), "tainted"
        )

    async def RevokeAuthority(
        self, request: admin_pb2.RevokeAuthorityRequest, context: Context
    ) -> admin_pb2.AuthorityResponse:
        caller = await self._authorize(context)
        record = await self._authority(context, request.kind, request.authority_id)
        if record.revoked:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"authority {record.authority_id} is already revoked",
            )
        return await self._rotate(
            context, caller, lambda: self._ca.revoke_authority(record.authority_id), "revoked"
        )

    # --- revocation ---------------------------------------------------------------------------

    async def _revocation_kind(self, context: Context, kind: str, *, optional: bool = False) -> str:
        if not (kind in REVOCATION_KINDS or (optional and not kind)):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"revocation kind must be serial, spiffe_id or entry, not {kind!r}",
            )
        return kind

    async def _refuse_revocation(self, context: Context, exc: Exception) -> NoReturn:
        if isinstance(exc, InvalidRequest):
            await _abort(context, _revocation_refusal(exc), str(exc))
        if isinstance(exc, InvalidSpiffeId):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        assert isinstance(exc, StoreError)
        await _refuse(context, exc)

    async def Revoke(
        self, request: admin_pb2.RevokeRequest, context: Context
    ) -> admin_pb2.RevokeResponse:
        caller = await self._authorize(context)
        kind = await self._revocation_kind(context, request.kind)
        try:
            # Stored and audited before it returns: the reply acknowledges a durable revocation.
            revocation = self._revocations.revoke(
                kind,
                request.target,
                reason=request.reason or "unspecified",
                note=request.note,
                actor=caller.actor,
            )
        except (InvalidRequest, InvalidSpiffeId, StoreError) as exc:
            await self._refuse_revocation(context, exc)
        log.info(
            "revoked %s %s (%s) by %s",
            kind,
            revocation.target,
            RevocationReason(revocation.reason).label,
            caller,
        )
        return admin_pb2.RevokeResponse(revocation=revocation_to_proto(revocation))

    async def Unrevoke(
        self, request: admin_pb2.UnrevokeRequest, context: Context
    ) -> admin_pb2.UnrevokeResponse:
        caller = await self._authorize(context)
        kind = await self._revocation_kind(context, request.kind)
        try:
            lifted = self._revocations.unrevoke(kind, request.target, actor=caller.actor)
        except (InvalidRequest, InvalidSpiffeId, StoreError) as exc:
            await self._refuse_revocation(context, exc)
        log.info("lifted the revocation of %s %s by %s", kind, lifted.target, caller)
        return admin_pb2.UnrevokeResponse(lifted=revocation_to_proto(lifted))

    async def ListRevocations(
        self, request: admin_pb2.ListRevocationsRequest, context: Context
    ) -> admin_pb2.ListRevocationsResponse:
        await self._authorize(context)
        kind = await self._revocation_kind(context, request.kind, optional=True)
        try:
            revocations = self._store.list_revocations(kind or None)
        except StoreError as exc:
            await _refuse(context, exc)
        return admin_pb2.ListRevocationsResponse(
            revocations=[revocation_to_proto(r) for r in revocations]
        )

    async def _spiffe_id_filter(self, context: Context, value: str) -> str | None:
        if not value:
            return None
        try:
            return str(SpiffeId.parse(value))
        except InvalidSpiffeId as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"filter 'spiffe_id': {exc}")

    async def ListSvids(
        self, request: admin_pb2.ListSvidsRequest, context: Context
    ) -> admin_pb2.ListSvidsResponse:
        await self._authorize(context)
        if not request.authority_id:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "authority_id is required")
        spiffe_id = await self._spiffe_id_filter(context, request.spiffe_id)
        try:
            self._ca.issuance_log.flush()  # what was just issued is listed too
            issuances = self._store.list_issuances(
                authority_id=request.authority_id, spiffe_id=spiffe_id
            )
            revocations = {(r.target_kind, r.target): r for r in self._store.list_revocations()}
        except StoreError as exc:
            await _refuse(context, exc)
        return admin_pb2.ListSvidsResponse(
            svids=[svid_to_proto(i, covering_revocation(i, revocations)) for i in issuances]
        )

    # --- audit --------------------------------------------------------------------------------

    async def _audit_records(
        self, context: Context, *, since: int | None = None, subject: str | None = None
    ) -> list[AuditRecord]:
        try:
            return self._store.list_audit(since=since, subject=subject)
        except CorruptRecord as exc:
            # A row that no longer parses (details that are not JSON) is damage as well.
            await _abort(context, grpc.StatusCode.DATA_LOSS, f"cannot read the audit log: {exc}")
        except StoreError as exc:
            await _refuse(context, exc)

    async def ListAudit(
        self, request: admin_pb2.ListAuditRequest, context: Context
    ) -> admin_pb2.ListAuditResponse:
        await self._authorize(context)
        spiffe_id = await self._spiffe_id_filter(context, request.spiffe_id)
        since, subject = request.since or None, request.subject or None
        records = await self._audit_records(context, since=since, subject=subject)
        if spiffe_id is not None:
            try:
                self._ca.issuance_log.flush()
                serials = [i.serial for i in self._store.list_issuances(spiffe_id=spiffe_id)]
            except StoreError as exc:
                await _refuse(context, exc)
            # Entries are recognised by their own records, which may precede the filters.
            filtered = since is not None or subject is not None
            history = await self._audit_records(context) if filtered else records
            records = records_about(spiffe_id, records, history=history, serials=serials)
        return admin_pb2.ListAuditResponse(records=[audit_to_proto(r) for r in records])

    async def VerifyAudit(
        self, request: admin_pb2.VerifyAuditRequest, context: Context
    ) -> admin_pb2.VerifyAuditResponse:
        caller = await self._authorize(context)
        verdict = verify_chain(await self._audit_records(context))
        if verdict.intact:
            log.info("audit log intact: %d records (checked by %s)", verdict.records, caller)
        else:
            log.warning("audit log broken at record %d: %s", verdict.broken_seq, verdict.problem)
        return admin_pb2.VerifyAuditResponse(
            intact=verdict.intact,
            records=verdict.records,
            broken_seq=verdict.broken_seq or 0,
            problem=verdict.problem,
            last_hash=verdict.last_hash,
        )

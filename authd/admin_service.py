"""The admin API (authd.admin.v1.Admin): a thin gRPC adapter over the CA and the entries.

Who may call it is decided from the kernel's credentials of the caller's connection (see
``authd.peercred``): root and the configured admin uids. Everything else is translation:
request fields to CA and store calls, their errors to gRPC statuses with a message. What
makes an entry valid is ``authd.workload.entries``; every entry change is audited and
reloaded into the in-memory registry before the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.peercred import PeerCredentials, PeerCredGateway
from authd.workload.entries import EntryError, EntryRules, parse_selector
from authd.workload.registry import EntryRegistry
from ca.certificate_authority import CertificateAuthority
from ca.errors import InvalidRequest, InvalidSpiffeId
from ca.spiffe_id import SpiffeId
from ca.store import (
    AlreadyExists,
    AuthorityRecord,
    Conflict,
    NotFound,
    RegistrationEntry,
    Selector,
    StoreError,
)

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Context = grpc.aio.ServicerContext[Any, Any]

AUTHORITY_KINDS = ("x509", "jwt")


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


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        ca: CertificateAuthority,
        gateway: PeerCredGateway,
        allows_uid: Callable[[int], bool],
        registry: EntryRegistry,
    ) -> None:
        self._ca = ca
        self._store = ca.store
        self._gateway = gateway
        self._allows_uid = allows_uid
        self._registry = registry
        self._rules = EntryRules(ca.trust_domain, ca.settings.max_svid_ttl)

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any]) -> PeerCredentials:
        caller = self._gateway.peer_credentials(context)
        if caller is None or not self._allows_uid(caller.uid):
            who = "unknown caller" if caller is None else f"uid {caller.uid}"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{who} is not an authd admin (root or admin.allowed_uids)",
            )
            raise AssertionError("unreachable")  # abort raises
        return caller

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

    async def MintX509SVID(
        self,
        request: admin_pb2.MintX509SVIDRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.MintX509SVIDResponse:
        caller = await self._authorize(context)
        try:
            svid = self._ca.issue_x509_svid(
                request.csr,
                spiffe_id=SpiffeId.parse(request.spiffe_id),
                dns_names=list(request.dns_names),
                ttl=request.ttl_seconds or None,
                requester=f"admin:uid={caller.uid}",
            )
        except (InvalidRequest, InvalidSpiffeId) as exc:
            await self._invalid(context, exc)
            raise
        log.info(
            "minted X.509-SVID %s serial %s for uid %d", svid.spiffe_id, svid.serial, caller.uid
        )
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
        try:
            svid = self._ca.mint_jwt_svid(
                spiffe_id=SpiffeId.parse(request.spiffe_id),
                audience=list(request.audience),
                ttl=request.ttl_seconds or None,
            )
        except (InvalidRequest, InvalidSpiffeId) as exc:
            await self._invalid(context, exc)
            raise
        log.info("minted JWT-SVID %s for uid %d", svid.spiffe_id, caller.uid)
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

    def _entries_changed(
        self, caller: PeerCredentials, action: str, entry: RegistrationEntry
    ) -> None:
        self._registry.reload()
        self._store.append_audit(
            time=int(self._ca.clock.now()),
            actor=f"admin:uid={caller.uid}",
            action=action,
            subject=entry.entry_id,
            details=_audit_details(entry),
        )
        log.info("%s %s (%s) by uid %d", action, entry.entry_id, entry.spiffe_id, caller.uid)

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
        caller: PeerCredentials,
        change: Callable[[], AuthorityRecord],
        action: str,
    ) -> admin_pb2.AuthorityResponse:
        """Run one rotation step of the CA; a step out of order is FAILED_PRECONDITION."""
        try:
            record = change()
        except InvalidRequest as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.info(
            "%s %s authority %s by uid %d", action, record.kind, record.authority_id, caller.uid
        )
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

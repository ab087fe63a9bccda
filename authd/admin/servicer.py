"""The admin API (authd.admin.v1.Admin): a thin gRPC adapter over the admin operations.

Each call is: who is calling (the Unix socket's peer credentials or the TLS client's chain,
decided by ``authd.admin.callers``), request fields to an operation, its result to a reply,
its refusal (``authd.admin.errors``) to a status with the message. Operations run on the
``OperationWorker``'s thread, so a slow store never blocks the event loop.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import grpc
from cryptography.hazmat.primitives import serialization

from authd.admin import proto
from authd.admin.agents import AgentOperations
from authd.admin.audit import AuditOperations
from authd.admin.authorities import AuthorityOperations
from authd.admin.callers import AdminCaller, AdminGate
from authd.admin.entries import EntryOperations
from authd.admin.errors import (
    AdminError,
    DataLoss,
    Duplicate,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    StoreUnavailable,
    UnknownTarget,
)
from authd.admin.issuance import IssuanceOperations
from authd.admin.remote import client_chain
from authd.admin.revocations import RevocationOperations
from authd.admin.store_ops import StoreOperations
from authd.admin.worker import OperationWorker
from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.nodes.agents import NodeAuthority
from authd.transport.peercred import PeerCredGateway
from authd.workload.registry import EntryRegistry
from authd.workload.sds_stream import SdsStreamStatus
from authd.xds.report import XdsReport
from ca.certificate_authority import CertificateAuthority
from ca.revoker import Revoker

T = TypeVar("T")

BACKUP_CHUNK = 1 << 20  # bytes per message of a backup file, well under gRPC's 4 MiB
MAX_RESTORE_BYTES = 4 << 30  # an upload past this is refused before it fills the disk
Context = grpc.aio.ServicerContext[Any, Any]

STATUS_OF_REFUSAL: dict[type[AdminError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownTarget: grpc.StatusCode.NOT_FOUND,
    Duplicate: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    DataLoss: grpc.StatusCode.DATA_LOSS,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_of(refusal: AdminError) -> grpc.StatusCode:
    return STATUS_OF_REFUSAL.get(type(refusal), grpc.StatusCode.INTERNAL)


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        ca: CertificateAuthority,
        gateway: PeerCredGateway,
        allows_uid: Callable[[int], bool],
        registry: EntryRegistry,
        revocations: Revoker | None = None,
        store: StoreOperations | None = None,
        sds_status: Callable[[], Sequence[SdsStreamStatus]] | None = None,
        federated_bundles: Callable[[], list[admin_pb2.FederatedBundle]] | None = None,
        xds_report: Callable[[], XdsReport] | None = None,
        nodes: NodeAuthority | None = None,
    ) -> None:
        """``revocations`` is the daemon's list, the one ext_authz and the Workload API
        consult; without it the service keeps one of its own over the CA's store.
        ``store`` serves ShowStore and ReseedStore (without it they are refused).
        ``sds_status`` reads the open SDS streams, on the loop (None: no workload socket)."""
        revocations = revocations or Revoker(ca, ca.store, ca.clock)
        self._gateway = gateway
        self._gate = AdminGate(ca, allows_uid, registry, revocations)
        self._entries = EntryOperations(ca, registry)
        self._authorities = AuthorityOperations(ca)
        self._issuance = IssuanceOperations(ca, revocations)
        self._revocations = RevocationOperations(revocations, ca.store)
        self._audit = AuditOperations(ca)
        self._store = store
        self._sds_status = sds_status
        self._federated_bundles = federated_bundles
        self._xds_report = xds_report
        self._worker = OperationWorker()
        self._agents = AgentOperations(nodes)

    def close(self) -> None:
        self._worker.close()

    async def _serve(self, context: Context, operation: Callable[[AdminCaller], T]) -> T:
        """``operation(caller)`` on the worker if the caller is an admin; a refusal aborts
        the call with its status and message."""
        local = self._gateway.peer_credentials(context)
        chain = None if local is not None else client_chain(context.auth_context())
        try:
            return await self._worker.run(lambda: operation(self._gate.admit(local, chain)))
        except AdminError as exc:
            await context.abort(status_of(exc), str(exc))
            raise AssertionError("unreachable") from exc  # abort raises

    async def ShowCA(
        self, request: admin_pb2.ShowCARequest, context: Context
    ) -> admin_pb2.ShowCAResponse:
        state = await self._serve(context, lambda _: self._authorities.show())
        return proto.ca_state_to_proto(state)

    async def MintX509SVID(
        self, request: admin_pb2.MintX509SVIDRequest, context: Context
    ) -> admin_pb2.MintX509SVIDResponse:
        def mint(caller: AdminCaller) -> admin_pb2.MintX509SVIDResponse:
            svid = self._issuance.mint_x509_svid(
                caller,
                csr=request.csr,
                spiffe_id=request.spiffe_id,
                dns_names=request.dns_names,
                ttl=request.ttl_seconds,
            )
            roots = self._issuance.bundle().x509_authorities
            return admin_pb2.MintX509SVIDResponse(
                cert_chain=svid.chain_der(),
                bundle=[c.public_bytes(serialization.Encoding.DER) for c in roots],
                expires_at=svid.expires_at,
                serial=svid.serial,
            )

        return await self._serve(context, mint)

    async def MintJWTSVID(
        self, request: admin_pb2.MintJWTSVIDRequest, context: Context
    ) -> admin_pb2.MintJWTSVIDResponse:
        svid = await self._serve(
            context,
            lambda caller: self._issuance.mint_jwt_svid(
                caller,
                spiffe_id=request.spiffe_id,
                audience=request.audience,
                ttl=request.ttl_seconds,
            ),
        )
        return admin_pb2.MintJWTSVIDResponse(token=svid.token, expires_at=svid.expiry)

    async def GetBundle(
        self, request: admin_pb2.GetBundleRequest, context: Context
    ) -> admin_pb2.GetBundleResponse:
        bundle = await self._serve(context, lambda _: self._issuance.bundle())
        return admin_pb2.GetBundleResponse(
            spiffe_jwks=bundle.to_json(),
            pem=bundle.to_pem().decode("ascii"),
            sequence=bundle.sequence,
            refresh_hint_seconds=bundle.refresh_hint,
        )

    # --- registration entries -------------------------------------------------------------

    async def CreateEntry(
        self, request: admin_pb2.CreateEntryRequest, context: Context
    ) -> admin_pb2.CreateEntryResponse:
        wanted = proto.entry_from_proto(request.entry)
        entry = await self._serve(context, lambda caller: self._entries.create(caller, wanted))
        return admin_pb2.CreateEntryResponse(entry=proto.entry_to_proto(entry))

    async def GetEntry(
        self, request: admin_pb2.GetEntryRequest, context: Context
    ) -> admin_pb2.GetEntryResponse:
        entry = await self._serve(context, lambda _: self._entries.get(request.id))
        return admin_pb2.GetEntryResponse(entry=proto.entry_to_proto(entry))

    async def ListEntries(
        self, request: admin_pb2.ListEntriesRequest, context: Context
    ) -> admin_pb2.ListEntriesResponse:
        entries = await self._serve(
            context,
            lambda _: self._entries.list(
                spiffe_id=request.spiffe_id,
                parent_id=request.parent_id,
                selector=request.selector,
            ),
        )
        return admin_pb2.ListEntriesResponse(entries=[proto.entry_to_proto(e) for e in entries])

    async def UpdateEntry(
        self, request: admin_pb2.UpdateEntryRequest, context: Context
    ) -> admin_pb2.UpdateEntryResponse:
        wanted = proto.entry_from_proto(request.entry)
        entry = await self._serve(context, lambda caller: self._entries.update(caller, wanted))
        return admin_pb2.UpdateEntryResponse(entry=proto.entry_to_proto(entry))

    async def DeleteEntry(
        self, request: admin_pb2.DeleteEntryRequest, context: Context
    ) -> admin_pb2.DeleteEntryResponse:
        await self._serve(context, lambda caller: self._entries.delete(caller, request.id))
        return admin_pb2.DeleteEntryResponse()

    # --- operator-driven rotation -----------------------------------------------------------

    async def PrepareAuthority(
        self, request: admin_pb2.PrepareAuthorityRequest, context: Context
    ) -> admin_pb2.AuthorityResponse:
        step = await self._serve(
            context, lambda caller: self._authorities.prepare(caller, request.kind)
        )
        return proto.authority_step_to_proto(step)

    async def ActivateAuthority(
        self, request: admin_pb2.ActivateAuthorityRequest, context: Context
    ) -> admin_pb2.AuthorityResponse:
        step = await self._serve(
            context, lambda caller: self._authorities.activate(caller, request.kind)
        )
        return proto.authority_step_to_proto(step)

    async def TaintAuthority(
        self, request: admin_pb2.TaintAuthorityRequest, context: Context
    ) -> admin_pb2.AuthorityResponse:
        step = await self._serve(
            context,
            lambda caller: self._authorities.taint(caller, request.kind, request.authority_id),
        )
        return proto.authority_step_to_proto(step)

    async def RevokeAuthority(
        self, request: admin_pb2.RevokeAuthorityRequest, context: Context
    ) -> admin_pb2.AuthorityResponse:
        step = await self._serve(
            context,
            lambda caller: self._authorities.revoke(caller, request.kind, request.authority_id),
        )
        return proto.authority_step_to_proto(step)

    # --- revocation ---------------------------------------------------------------------------

    async def Revoke(
        self, request: admin_pb2.RevokeRequest, context: Context
    ) -> admin_pb2.RevokeResponse:
        revocation = await self._serve(
            context,
            lambda caller: self._revocations.revoke(
                caller, request.kind, request.target, reason=request.reason, note=request.note
            ),
        )
        return admin_pb2.RevokeResponse(revocation=proto.revocation_to_proto(revocation))

    async def Unrevoke(
        self, request: admin_pb2.UnrevokeRequest, context: Context
    ) -> admin_pb2.UnrevokeResponse:
        lifted = await self._serve(
            context,
            lambda caller: self._revocations.unrevoke(caller, request.kind, request.target),
        )
        return admin_pb2.UnrevokeResponse(lifted=proto.revocation_to_proto(lifted))

    async def ListRevocations(
        self, request: admin_pb2.ListRevocationsRequest, context: Context
    ) -> admin_pb2.ListRevocationsResponse:
        revocations = await self._serve(context, lambda _: self._revocations.list(request.kind))
        return admin_pb2.ListRevocationsResponse(
            revocations=[proto.revocation_to_proto(r) for r in revocations]
        )

    async def ListSvids(
        self, request: admin_pb2.ListSvidsRequest, context: Context
    ) -> admin_pb2.ListSvidsResponse:
        svids = await self._serve(
            context,
            lambda _: self._issuance.list_svids(
                authority_id=request.authority_id, spiffe_id=request.spiffe_id
            ),
        )
        return admin_pb2.ListSvidsResponse(svids=[proto.svid_to_proto(s) for s in svids])

    # --- audit --------------------------------------------------------------------------------

    async def ListAudit(
        self, request: admin_pb2.ListAuditRequest, context: Context
    ) -> admin_pb2.ListAuditResponse:
        records = await self._serve(
            context,
            lambda _: self._audit.records(
                since=request.since, subject=request.subject, spiffe_id=request.spiffe_id
            ),
        )
        return admin_pb2.ListAuditResponse(records=[proto.audit_to_proto(r) for r in records])

    async def VerifyAudit(
        self, request: admin_pb2.VerifyAuditRequest, context: Context
    ) -> admin_pb2.VerifyAuditResponse:
        verdict = await self._serve(context, self._audit.verify)
        return proto.audit_verdict_to_proto(verdict)

    async def ListSdsStreams(
        self, request: admin_pb2.ListSdsStreamsRequest, context: Context
    ) -> admin_pb2.ListSdsStreamsResponse:
        await self._serve(context, lambda _: None)  # admins only
        if self._sds_status is None:
            return admin_pb2.ListSdsStreamsResponse(serving=False)
        # Read on the loop, where the streams live.
        streams = [proto.sds_stream_to_proto(s) for s in self._sds_status()]
        return admin_pb2.ListSdsStreamsResponse(streams=streams, serving=True)

    async def ListFederatedBundles(
        self, request: admin_pb2.ListFederatedBundlesRequest, context: Context
    ) -> admin_pb2.ListFederatedBundlesResponse:
        await self._serve(context, lambda _: None)  # admins only
        # Read on the loop, where the poller keeps its state.
        found = self._federated_bundles() if self._federated_bundles is not None else []
        return admin_pb2.ListFederatedBundlesResponse(bundles=found)

    # --- the native fast path ---------------------------------------------------------------

    async def _xds(self, context: Context) -> XdsReport:
        await self._serve(context, lambda _: None)  # admins only
        if self._xds_report is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the daemon has no policy loaded")
            raise AssertionError("abort raises")
        return self._xds_report()  # on the loop, where the streams live

    async def ExplainNativePolicy(
        self, request: admin_pb2.ExplainNativePolicyRequest, context: Context
    ) -> admin_pb2.ExplainNativePolicyResponse:
        return proto.native_policy_to_proto(await self._xds(context))

    async def ListXdsNodes(
        self, request: admin_pb2.ListXdsNodesRequest, context: Context
    ) -> admin_pb2.ListXdsNodesResponse:
        return proto.xds_nodes_to_proto(await self._xds(context), time.time())

    # --- store regression ---------------------------------------------------------------------

    def _store_ops(self) -> StoreOperations:
        if self._store is None:
            raise FailedPrecondition("this server does not watch its store for regression")
        return self._store

    async def ShowStore(
        self, request: admin_pb2.ShowStoreRequest, context: Context
    ) -> admin_pb2.ShowStoreResponse:
        state = await self._serve(context, lambda _: self._store_ops().show())
        return proto.store_state_to_proto(state)

    async def ReseedStore(
        self, request: admin_pb2.ReseedStoreRequest, context: Context
    ) -> admin_pb2.ReseedStoreResponse:
        result = await self._serve(context, lambda caller: self._store_ops().reseed(caller))
        return admin_pb2.ReseedStoreResponse(
            audit_seq=result.audit_seq,
            audit_hash=result.audit_hash,
            kept_revocations=result.kept_revocations,
            kept_audit_records=result.kept_audit_records,
        )

    async def AcceptStore(
        self, request: admin_pb2.AcceptStoreRequest, context: Context
    ) -> admin_pb2.AcceptStoreResponse:
        previous, adopted = await self._serve(
            context, lambda caller: self._store_ops().accept(caller, request.audit_hash)
        )
        return admin_pb2.AcceptStoreResponse(
            previous=proto.position_to_proto(previous), adopted=proto.position_to_proto(adopted)
        )

    # --- backups --------------------------------------------------------------------------

    async def BackupStore(
        self, request: admin_pb2.BackupStoreRequest, context: Context
    ) -> AsyncIterator[admin_pb2.BackupChunk]:
        path, _ = await self._serve(
            context, lambda caller: self._store_ops().backups.backup(caller)
        )
        try:
            with path.open("rb") as backup:
                while chunk := backup.read(BACKUP_CHUNK):
                    yield admin_pb2.BackupChunk(data=chunk)
        finally:
            path.unlink(missing_ok=True)

    async def RestoreStore(
        self, request_iterator: AsyncIterator[admin_pb2.RestoreStoreRequest], context: Context
    ) -> admin_pb2.RestoreStoreResponse:
        await self._serve(context, lambda caller: self._store_ops().backups)  # admins only
        force, size = False, 0
        with tempfile.SpooledTemporaryFile(max_size=BACKUP_CHUNK * 8) as upload:
            first = True
            async for message in request_iterator:
                if first:
                    force, first = message.force, False
                size += len(message.data)
                if size > MAX_RESTORE_BYTES:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"backup file refused, store untouched: larger than "
                        f"{MAX_RESTORE_BYTES >> 20} MiB",
                    )
                upload.write(message.data)
            upload.seek(0)
            result = await self._serve(
                context,
                lambda caller: self._store_ops().backups.restore(
                    caller,
                    upload,
                    force=force,
                ),
            )
        counts = result.counts
        return admin_pb2.RestoreStoreResponse(
            replaced=proto.position_to_proto(result.replaced),
            restored=proto.position_to_proto(result.restored),
            position=proto.position_to_proto(result.position),
            authorities=counts["authorities"],
            entries=counts["entries"],
            revocations=counts["revocations"],
            issuances=counts["issuances"],
            audit_records=counts["audit"],
            forced=result.forced,
        )

    # --- node agents ----------------------------------------------------------------------

    async def CreateJoinToken(
        self, request: admin_pb2.CreateJoinTokenRequest, context: Context
    ) -> admin_pb2.CreateJoinTokenResponse:
        token, expires_at = await self._serve(
            context,
            lambda caller: self._agents.create_join_token(caller, request.spiffe_id, request.ttl),
        )
        return admin_pb2.CreateJoinTokenResponse(token=token, expires_at=expires_at)

    async def ListAgents(
        self, request: admin_pb2.ListAgentsRequest, context: Context
    ) -> admin_pb2.ListAgentsResponse:
        agents = await self._serve(context, lambda _: self._agents.list())
        return admin_pb2.ListAgentsResponse(
            agents=[
                admin_pb2.Agent(
                    agent_id=a.agent_id,
                    method=a.method,
                    node_id=a.node_id,
                    serial=a.serial,
                    attested_at=a.attested_at,
                    expires_at=a.expires_at,
                    banned=a.banned,
                )
                for a in agents
            ]
        )

    async def EvictAgent(
        self, request: admin_pb2.EvictAgentRequest, context: Context
    ) -> admin_pb2.EvictAgentResponse:
        revoked = await self._serve(
            context, lambda caller: self._agents.evict(caller, request.agent_id)
        )
        return admin_pb2.EvictAgentResponse(revoked=revoked)

    async def BanAgent(
        self, request: admin_pb2.BanAgentRequest, context: Context
    ) -> admin_pb2.BanAgentResponse:
        revoked = await self._serve(
            context, lambda caller: self._agents.ban(caller, request.agent_id)
        )
        return admin_pb2.BanAgentResponse(revoked=revoked)

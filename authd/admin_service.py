"""The admin API (authd.admin.v1.Admin): a thin gRPC adapter over the CA.

Who may call it is decided from the kernel's credentials of the caller's connection (see
``authd.peercred``): root and the configured admin uids. Everything else is translation:
request fields to CA calls, CA errors to gRPC statuses with a message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.peercred import PeerCredentials, PeerCredGateway
from ca.certificate_authority import CertificateAuthority
from ca.errors import InvalidRequest, InvalidSpiffeId
from ca.spiffe_id import SpiffeId

log = logging.getLogger(__name__)

Request = TypeVar("Request")


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        ca: CertificateAuthority,
        gateway: PeerCredGateway,
        allows_uid: Callable[[int], bool],
    ) -> None:
        self._ca = ca
        self._gateway = gateway
        self._allows_uid = allows_uid

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
        authorities = []
        for record in ca.authorities():
            subject = ""
            if record.certificate_der:
                certificate = x509.load_der_x509_certificate(record.certificate_der)
                subject = certificate.subject.rfc4514_string()
            authorities.append(
                admin_pb2.Authority(
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
            )
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

"""The node API servicer (``authd.agent.v1.Node``): a thin adapter over ``NodeAuthority``.

``Attest`` runs on the attestation listener (server TLS: the agent has no SVID yet); the other
methods on the node API listener (mutual TLS), where the caller is the agent whose SVID the
TLS session carries, verified again here against the CA's bundle and the agent records.
Every call into ``NodeAuthority`` waits on the store, so it runs in a worker thread; every
attestation step has a deadline, so a peer that stops talking holds nothing for long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from authd.api.authd.agent.v1 import node_pb2, node_pb2_grpc
from authd.nodes import join_tokens, x509pop
from authd.nodes.agents import NodeAuthority, NodeRefused
from authd.ports.bundle_view import ForeignBundles
from authd.transport.tls_peer import client_chain
from ca.bundle import TrustBundle
from ca.errors import InvalidRequest, InvalidSpiffeId
from ca.spiffe_id import TrustDomain
from ca.store import AgentRecord, RegistrationEntry, StoreError
from ca.x509svid import X509Svid

__all__ = ["NODE_API_TLS_NAME", "NodeApiService", "entry_to_proto"]

log = logging.getLogger(__name__)

#: The DNS SAN on the server's node API SVID; agents verify it (ssl_target_name_override).
NODE_API_TLS_NAME = "authd-server"
STEP_TIMEOUT = 10.0  # seconds for each message of an attestation

_T = TypeVar("_T")


class NodeApiService(node_pb2_grpc.NodeServicer):
    def __init__(
        self,
        authority: NodeAuthority,
        bundle: Callable[[], TrustBundle],
        federated: ForeignBundles | None = None,
    ) -> None:
        self._authority = authority
        self._bundle = bundle
        self._federated = federated

    async def Attest(
        self,
        request_iterator: AsyncIterator[node_pb2.AttestRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[node_pb2.AttestResponse]:
        first = await self._next(request_iterator, context)
        if first.WhichOneof("step") != "params":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "send AttestParams first")
        params = first.params
        if params.method == join_tokens.METHOD:
            _, svid = await self._call(
                context, self._authority.attest_join_token, params.join_token, params.csr
            )
        elif params.method == x509pop.METHOD:
            leaf = await self._call(
                context, self._authority.x509pop_leaf, list(params.certificates)
            )
            nonce = x509pop.new_nonce()
            yield node_pb2.AttestResponse(challenge=nonce)
            answer = await self._next(request_iterator, context)
            if answer.WhichOneof("step") != "challenge_response":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "answer the challenge")
            _, svid = await self._call(
                context,
                self._authority.attest_x509pop,
                leaf,
                nonce,
                answer.challenge_response,
                params.csr,
            )
        else:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown attestation method {params.method[:64]!r} (join_token, x509pop)",
            )
        yield node_pb2.AttestResponse(svid=self._agent_svid(svid))

    async def RenewAgent(
        self, request: node_pb2.RenewAgentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> node_pb2.RenewAgentResponse:
        agent = await self._caller(context)
        svid = await self._call(context, self._authority.renew, agent, request.csr)
        return node_pb2.RenewAgentResponse(svid=self._agent_svid(svid))

    async def FetchEntries(
        self, request: node_pb2.FetchEntriesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> node_pb2.FetchEntriesResponse:
        agent = await self._caller(context)
        entries = await self._call(context, self._authority.entries, agent)
        return node_pb2.FetchEntriesResponse(
            entries=[entry_to_proto(e) for e in entries],
            bundle_json=self._bundle().to_json(indent=None),
            federated_bundles=self._federated_json(entries),
            distrusted_authorities=self._authority.distrusted_authorities(),
        )

    def _federated_json(self, entries: list[RegistrationEntry]) -> dict[str, str]:
        """The foreign bundles the entries federate with that the server trusts now."""
        found: dict[str, str] = {}
        if self._federated is None:
            return found
        for name in sorted({n for e in entries for n in e.federates_with}):
            try:
                bundle = self._federated.get(TrustDomain.parse(name))
            except InvalidSpiffeId:
                continue
            if bundle is not None:
                found[name] = bundle.to_json(indent=None)
        return found

    async def SignX509Svids(
        self, request: node_pb2.SignX509SvidsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> node_pb2.SignX509SvidsResponse:
        agent = await self._caller(context)
        wanted = [(r.entry_id, r.csr) for r in request.requests]
        outcome = await self._call(context, self._authority.sign, agent, wanted)
        return node_pb2.SignX509SvidsResponse(
            svids=[
                node_pb2.SignedSvid(
                    entry_id=entry_id, cert_chain=svid.chain_der(), expires_at=svid.expires_at
                )
                for entry_id, svid in outcome.signed
            ],
            refused=outcome.refused,
        )

    async def MintJwtSvid(
        self, request: node_pb2.MintJwtSvidRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> node_pb2.MintJwtSvidResponse:
        agent = await self._caller(context)
        svid = await self._call(
            context, self._authority.mint_jwt, agent, request.entry_id, list(request.audience)
        )
        return node_pb2.MintJwtSvidResponse(token=svid.token, expires_at=int(svid.expiry))

    # --- helpers ------------------------------------------------------------------------

    def _agent_svid(self, svid: X509Svid) -> node_pb2.AgentSvid:
        return node_pb2.AgentSvid(
            spiffe_id=str(svid.spiffe_id),
            cert_chain=svid.chain_der(),
            expires_at=svid.expires_at,
            bundle_json=self._bundle().to_json(indent=None),
        )

    async def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> AgentRecord:
        chain = client_chain(context.auth_context())
        return await self._call(context, self._authority.authenticate, chain)

    async def _next(
        self,
        requests: AsyncIterator[node_pb2.AttestRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> node_pb2.AttestRequest:
        try:
            return await asyncio.wait_for(anext(requests), STEP_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "attestation step not sent")
            raise AssertionError("unreachable") from None

    async def _call(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        function: Callable[..., _T],
        *args: object,
    ) -> _T:
        try:
            return await asyncio.to_thread(function, *args)
        except NodeRefused as exc:
            log.warning("node API refused %s: %s", context.peer(), exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StoreError as exc:
            log.warning("node API: store unavailable: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the store is unavailable")
        except Exception:
            log.exception("node API call failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable")


def entry_to_proto(entry: RegistrationEntry) -> node_pb2.Entry:
    return node_pb2.Entry(
        entry_id=entry.entry_id,
        spiffe_id=entry.spiffe_id,
        parent_id=entry.parent_id,
        selectors=[f"{s.type}:{s.value}" for s in entry.selectors],
        x509_svid_ttl=entry.x509_svid_ttl,
        jwt_svid_ttl=entry.jwt_svid_ttl,
        dns_names=list(entry.dns_names),
        federates_with=list(entry.federates_with),
        hint=entry.hint,
        expires_at=entry.expires_at,
        revision=entry.revision,
        created_at=entry.created_at,
    )

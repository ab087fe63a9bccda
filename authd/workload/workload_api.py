"""The SPIFFE Workload API (``SpiffeWorkloadAPI``): a thin gRPC adapter over an IdentitySource.

Workloads find the endpoint through ``SPIFFE_ENDPOINT_SOCKET``, which for authd is
``unix:///abs/path/to/the/public.sock`` (``unix:`` plus an absolute path, hence three
slashes; the spec's other form, ``tcp://IP:port``, cannot carry kernel credentials and is not
served). Every request must carry the metadata ``workload.spiffe.io: true``, else
INVALID_ARGUMENT. There is no TLS and no client authentication: the caller is attested from
the kernel credentials of its connection (``PeerCredGateway``), turned into selectors by
``attest`` (one path for both services: :mod:`authd.workload.caller`), and gets the SVIDs of
every registration entry those selectors satisfy. A caller
with no entry is PERMISSION_DENIED ("no identity issued"), on every method.

The streams (``FetchX509SVID``, ``FetchX509Bundles``, ``FetchJWTBundles``) answer at once and
then wait for ``IdentitySource.wait_for_change``. Each change re-matches the caller's entries
(an entry added, changed or removed for it counts; none left ends the stream with
PERMISSION_DENIED) and sends the complete new state, but only if what this caller would
receive differs from what it last got: a fingerprint of (entry ID, leaf serial) pairs and the
bundle sequence for X.509-SVIDs, the bundle sequence for bundles. :meth:`close` ends every
open stream with UNAVAILABLE, so a server can stop without waiting out its grace period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

import grpc
from cryptography.hazmat.primitives import serialization

from authd.api.spiffe.workload import workload_pb2, workload_pb2_grpc
from authd.ports.identity_source import IdentitySource
from authd.transport.peercred import PeerCredGateway
from authd.workload.caller import AttestCredentials, Caller, abort, attested_caller
from ca.bundle import TrustBundle
from ca.errors import CAError, InvalidSpiffeId, VerificationError
from ca.spiffe_id import SpiffeId
from ca.store import RegistrationEntry

__all__ = ["WORKLOAD_API_HEADER", "WorkloadApiService"]

log = logging.getLogger(__name__)

WORKLOAD_API_HEADER = ("workload.spiffe.io", "true")

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")


def _has_workload_header(context: Context) -> bool:
    key, expected = WORKLOAD_API_HEADER
    values = [value for name, value in context.invocation_metadata() or () if name == key]
    return values == [expected]


def _der_roots(bundle: TrustBundle) -> bytes:
    """The bundle's X.509 authorities as the Workload API carries them: DER, concatenated."""
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in bundle.x509_authorities)


def _sequences(bundles: Mapping[str, TrustBundle]) -> tuple[tuple[str, int, int], ...]:
    """What says whether a set of bundles changed: each one's name, sequence and identity."""
    return tuple((name, b.sequence, id(b)) for name, b in sorted(bundles.items()))


def _unique_hints(
    items: Sequence[tuple[RegistrationEntry, T]],
) -> list[tuple[RegistrationEntry, T]]:
    """Drop every item whose entry repeats a non-empty hint of an earlier one (the first wins)."""
    seen: set[str] = set()
    kept = []
    for entry, item in items:
        if entry.hint:
            if entry.hint in seen:
                log.warning("entry %s repeats hint %r; not sent", entry.entry_id, entry.hint)
                continue
            seen.add(entry.hint)
        kept.append((entry, item))
    return kept


class WorkloadApiService(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def __init__(
        self,
        *,
        identities: IdentitySource,
        gateway: PeerCredGateway,
        attest: AttestCredentials,
    ) -> None:
        self._identities = identities
        self._gateway = gateway
        self._attest = attest
        self._closing = asyncio.Event()
        self._open_streams = 0

    @property
    def open_streams(self) -> int:
        """Streams currently being served (they end on cancel, denial or :meth:`close`)."""
        return self._open_streams

    def close(self) -> None:
        """End every open stream with UNAVAILABLE and refuse new ones (call on the server loop)."""
        self._closing.set()

    # --- who is calling ---------------------------------------------------------------

    async def _caller(self, context: Context) -> Caller:
        if not _has_workload_header(context):
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "missing or invalid workload.spiffe.io header",
            )
        return await attested_caller(context, self._gateway, self._attest)

    async def _entries(self, context: Context, caller: Caller) -> list[RegistrationEntry]:
        entries = self._identities.entries_for(caller.selectors)
        if not entries:
            log.info(
                "no identity for uid %d (pid %d)", caller.credentials.uid, caller.credentials.pid
            )
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
        return entries

    # --- the streams --------------------------------------------------------------------

    async def _states(self, context: Context) -> AsyncGenerator[list[RegistrationEntry], None]:
        """The caller's entries now, then again after every change, until the stream ends."""
        caller = await self._caller(context)
        self._open_streams += 1
        try:
            while True:
                if self._closing.is_set():
                    await abort(
                        context, grpc.StatusCode.UNAVAILABLE, "the Workload API is shutting down"
                    )
                # Read the version first: a change while the state is built is not missed.
                version = self._identities.version
                yield await self._entries(context, caller)
                await self._next_change(version)
        finally:
            self._open_streams -= 1

    async def _next_change(self, version: int) -> None:
        """Return once the identity source is past ``version`` or the service is closing."""
        changed = asyncio.ensure_future(self._identities.wait_for_change(version))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait((changed, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when this stream is cancelled: neither waiter may outlive it.
            changed.cancel()
            closing.cancel()
            await asyncio.gather(changed, closing, return_exceptions=True)

    async def FetchX509SVID(
        self, request: workload_pb2.X509SVIDRequest, context: Context
    ) -> AsyncIterator[workload_pb2.X509SVIDResponse]:
        sent: object = None
        async with aclosing(self._states(context)) as states:
            async for entries in states:
                response, fingerprint = await self._x509_state(context, entries)
                if fingerprint != sent:
                    sent = fingerprint
                    await self._identities.commit()  # no SVID leaves before it can be revoked
                    yield response

    async def _x509_state(
        self, context: Context, entries: Sequence[RegistrationEntry]
    ) -> tuple[workload_pb2.X509SVIDResponse, object]:
        bundle = self._identities.bundle
        roots = _der_roots(bundle)
        svids = []
        failures = []
        for entry in entries:
            try:
                svids.append((entry, self._identities.x509_svid(entry)))
            except CAError as exc:
                log.error("cannot issue an X.509-SVID for entry %s: %s", entry.entry_id, exc)
                failures.append(f"{entry.entry_id}: {exc}")
        svids = _unique_hints(svids)
        if not svids:
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"no X.509-SVID could be issued ({'; '.join(failures)})",
            )
        federated = self._identities.federated_bundles(entry for entry, _ in svids)
        response = workload_pb2.X509SVIDResponse(
            federated_bundles={
                str(foreign.trust_domain.id): _der_roots(foreign) for foreign in federated.values()
            },
            svids=[
                workload_pb2.X509SVID(
                    spiffe_id=str(svid.spiffe_id),
                    x509_svid=svid.chain_der,
                    x509_svid_key=svid.key_der,
                    bundle=roots,
                    hint=svid.hint,
                )
                for _, svid in svids
            ],
        )
        fingerprint = (
            tuple((entry.entry_id, svid.chain[0].serial_number) for entry, svid in svids),
            bundle.sequence,
            _sequences(federated),
        )
        return response, fingerprint

    async def FetchX509Bundles(
        self, request: workload_pb2.X509BundlesRequest, context: Context
    ) -> AsyncIterator[workload_pb2.X509BundlesResponse]:
        sent: object = None
        async with aclosing(self._states(context)) as states:
            async for entries in states:
                bundles = self._bundles(entries)
                if _sequences(bundles) != sent:
                    sent = _sequences(bundles)
                    yield workload_pb2.X509BundlesResponse(
                        bundles={name: _der_roots(bundle) for name, bundle in bundles.items()}
                    )

    async def FetchJWTBundles(
        self, request: workload_pb2.JWTBundlesRequest, context: Context
    ) -> AsyncIterator[workload_pb2.JWTBundlesResponse]:
        sent: object = None
        async with aclosing(self._states(context)) as states:
            async for entries in states:
                bundles = self._bundles(entries)
                if _sequences(bundles) != sent:
                    sent = _sequences(bundles)
                    yield workload_pb2.JWTBundlesResponse(
                        bundles={
                            name: bundle.jwt_jwks_json().encode()
                            for name, bundle in bundles.items()
                        }
                    )

    def _bundles(self, entries: Sequence[RegistrationEntry]) -> dict[str, TrustBundle]:
        """Our bundle and the foreign ones ``entries`` federate with, by trust domain ID."""
        own = self._identities.bundle
        found = {str(own.trust_domain.id): own}
        for foreign in self._identities.federated_bundles(entries).values():
            found[str(foreign.trust_domain.id)] = foreign
        return found

    # --- JWT-SVIDs ----------------------------------------------------------------------

    async def FetchJWTSVID(
        self, request: workload_pb2.JWTSVIDRequest, context: Context
    ) -> workload_pb2.JWTSVIDResponse:
        caller = await self._caller(context)
        audience = list(request.audience)
        if not audience or not all(audience):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        entries = await self._entries(context, caller)
        if request.spiffe_id:
            try:
                wanted = str(SpiffeId.parse(request.spiffe_id))
            except InvalidSpiffeId as exc:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            entries = [e for e in entries if e.spiffe_id == wanted]
            if not entries:
                await abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"no identity issued for {wanted}",
                )
        try:
            svids = [
                (entry, await self._identities.fetch_jwt_svid(entry, audience)) for entry in entries
            ]
        except CAError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return workload_pb2.JWTSVIDResponse(
            svids=[
                workload_pb2.JWTSVID(
                    spiffe_id=str(svid.spiffe_id), svid=svid.token, hint=entry.hint
                )
                for entry, svid in _unique_hints(svids)
            ]
        )

    async def ValidateJWTSVID(
        self, request: workload_pb2.ValidateJWTSVIDRequest, context: Context
    ) -> workload_pb2.ValidateJWTSVIDResponse:
        caller = await self._caller(context)
        if not request.audience:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")
        await self._entries(context, caller)
        try:
            svid = self._identities.verify_jwt_svid(request.svid, [request.audience])
        except VerificationError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        response = workload_pb2.ValidateJWTSVIDResponse(spiffe_id=str(svid.spiffe_id))
        response.claims.update(dict(svid.claims))
        return response

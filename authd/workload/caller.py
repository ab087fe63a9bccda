"""Who is calling the workload endpoint: one attestation path for the Workload API and SDS.

A caller is known by the kernel credentials of its connection, recorded by the
peer-credential gateway, and by the selectors an attestation function makes of them; never
by anything it sends. A connection that bypassed the gateway, or a caller that cannot be
attested, is PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from authd.transport.peercred import PeerCredentials, PeerCredGateway
from authd.workload.attestation import AttestationError
from ca.store import Selector

__all__ = ["AttestCredentials", "Caller", "abort", "attested_caller"]

log = logging.getLogger(__name__)

AttestCredentials = Callable[[PeerCredentials], frozenset[Selector]]
"""A blocking function from a connection's kernel credentials to the caller's selectors
(``authd.workload.attestation.attest`` in the daemon)."""

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True, slots=True)
class Caller:
    """An attested caller: its kernel credentials and the selectors they map to."""

    credentials: PeerCredentials
    selectors: frozenset[Selector]


async def abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort raises")


async def attested_caller(
    context: Context, gateway: PeerCredGateway, attest: AttestCredentials
) -> Caller:
    """The caller of this call, attested in a worker thread; aborts the call if it cannot be."""
    credentials = gateway.peer_credentials(context)
    if credentials is None:
        await abort(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            "caller not attested: connect through authd's workload socket",
        )
    try:
        # Blocking: it reads /proc and may hash the caller's binary the first time.
        selectors = frozenset(await asyncio.to_thread(attest, credentials))
    except Exception as exc:  # any attestation failure denies (fail closed)
        log.warning(
            "attestation of pid %d (uid %d) failed: %s",
            credentials.pid,
            credentials.uid,
            exc,
            exc_info=not isinstance(exc, AttestationError),
        )
        await abort(context, grpc.StatusCode.PERMISSION_DENIED, f"attestation failed: {exc}")
    return Caller(credentials, selectors)

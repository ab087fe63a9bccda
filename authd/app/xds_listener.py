"""The native fast path (``[xds] enabled``): the RBAC publisher and ECDS on the workload socket.

The publisher compiles the policy in force (``AuthzListeners.policy``) with the revocations
of the daemon's revoker: a revoked SPIFFE ID is denied in Envoy, a revoked entry's SPIFFE ID
is always handed to ext_authz (only authd knows which serials the entry was issued). It
recompiles at once on every revocation change and within ``interval`` of a policy reload.
With ``[xds] revoked_filter_name`` (the default) the revoked SPIFFE IDs go into that second,
small filter instead, so a revocation pushes only it; with ``[xds] native_only`` they always
go into the rules filter (``XdsConfig.served_revoked_filter_name``): that sidecar runs one
RBAC filter, and a revocation re-assembles the rules config around the cached rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
from envoy.service.extension.v3 import config_discovery_pb2_grpc
from prometheus_client import CollectorRegistry

from authd.config.model import Config
from authd.transport.peercred import PeerCredGateway
from authd.workload.registry import EntryRegistry
from authd.xds.ecds import ExtensionConfigDiscovery
from authd.xds.metrics import XdsMetrics
from authd.xds.publisher import RbacInputs, RbacPublisher, compile_inputs
from authd.xds.report import XdsReport
from authd.xds.stream import XdsNodeStatus
from ca.revoker import Revoker

__all__ = ["NativeFastPath", "credential_headers", "explain_without_xds"]

log = logging.getLogger("authd")


def credential_headers(config: Config) -> tuple[str, ...]:
    """Headers that may carry a credential authd verifies: a request with one goes to
    ext_authz (the credential may change who the caller is, or be invalid)."""
    authz = config.authz
    headers = {authz.jwt_svid_header}
    headers.update(issuer.header for issuer in authz.issuers)
    if authz.api_keys_file:
        headers.add(authz.api_key_header)
    return tuple(sorted(h.lower() for h in headers if h))


class NativeFastPath:
    """Owns the publisher, its refresh task and the ECDS servicer."""

    def __init__(
        self,
        config: Config,
        *,
        policy: Callable[[], object],
        revocations: Revoker,
        entries: EntryRegistry,
        registry: CollectorRegistry,
    ) -> None:
        self._revocations = revocations
        self._entries = entries
        self._native_only = config.xds.native_only
        self.publisher = RbacPublisher(
            filter_name=config.xds.served_filter_name,
            policy=policy,
            revoked=self._revoked,
            rule_set=config.xds.rule_set,
            credential_headers=credential_headers(config),
            everything_to_extauthz="authz.dry_run is on" if config.authz.dry_run else "",
            revoked_filter_name=config.xds.served_revoked_filter_name,
            native_only=config.xds.native_only,
        )
        self._servicer: ExtensionConfigDiscovery | None = None
        self._task: asyncio.Task[None] | None = None
        registry.register(XdsMetrics(self.publisher, self.status))

    def _revoked(self) -> tuple[frozenset[str], frozenset[str]]:
        view = self._revocations.view
        entry_ids = set()
        for entry_id in view.targets("entry"):
            entry = self._entries.get(entry_id)
            if entry is not None:
                entry_ids.add(str(entry.spiffe_id))
        return view.targets("spiffe_id"), frozenset(entry_ids)

    def add_service(self, server: grpc.aio.Server, gateway: PeerCredGateway) -> None:
        self._servicer = ExtensionConfigDiscovery(self.publisher, gateway)
        config_discovery_pb2_grpc.add_ExtensionConfigDiscoveryServiceServicer_to_server(
            self._servicer, server
        )

    async def start(self) -> None:
        """Compile the first config (before any Envoy can ask), then follow changes."""
        await self.publisher.refresh()
        self._revocations.add_listener(self.publisher.mark_dirty)
        self._task = asyncio.create_task(self.publisher.run())
        current = self.publisher.current
        log.info(
            "native fast path: RBAC filter %r over ECDS on the workload socket, config %s; "
            "revocation filter %r%s",
            self.publisher.filter_name,
            current.version if current is not None else "(none: refused, see above)",
            self.publisher.revoked_filter_name or "(none: revocations in the rules filter)",
            "; native only: what would go to ext_authz is denied" if self._native_only else "",
        )

    def report(self) -> XdsReport:
        publisher = self.publisher
        return XdsReport(
            enabled=True,
            compiled=publisher.current,
            compiled_at=publisher.compiled_at,
            last_refusal=publisher.last_refusal,
            nodes=tuple(self.status()),
            revocations=publisher.revocations,
            revocations_at=publisher.revocations_at,
        )

    def status(self) -> list[XdsNodeStatus]:
        return self._servicer.status() if self._servicer is not None else []

    async def close(self) -> None:
        if self._servicer is not None:
            self._servicer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def explain_without_xds(config: Config, policy: object) -> XdsReport:
    """With ``[xds]`` off: what the routing would be (no revocations, no Envoys)."""
    inputs = RbacInputs(
        policy=policy,
        rule_set=config.xds.rule_set,
        revoked=frozenset(),
        to_extauthz=frozenset(),
        credential_headers=credential_headers(config),
        everything_to_extauthz="authz.dry_run is on" if config.authz.dry_run else "",
        native_only=config.xds.native_only,
    )
    return XdsReport(
        enabled=False,
        compiled=compile_inputs(inputs, config.xds.served_filter_name),
        compiled_at=0.0,
        last_refusal="",
        nodes=(),
    )

"""Envoy ECDS (``envoy.service.extension.v3.ExtensionConfigDiscoveryService``): the RBAC filter.

Served on authd's workload socket, next to SDS: a sidecar Envoy already reaches it there,
and the kernel says who connected (the peer-credential gateway; a connection that bypassed
it is PERMISSION_DENIED). Each stream is state of the world (``authd.xds.stream``): the
resources are ``TypedExtensionConfig``s named ``[xds] filter_name`` (the rules) and
``[xds] revoked_filter_name`` (the revocation filter), from ``RbacPublisher``; any other name
is left out (Envoy keeps waiting for it). Envoy opens one stream per filter; a stream asking
for several names gets them all in one response, its version the resources' versions joined
by "+". A new config is pushed on the streams that asked for it, and only on those; an ACK
records the version each node enforces, a NACK is logged with Envoy's reason and that node
keeps enforcing its last accepted version. Incremental (delta) xDS is not served: one
resource per stream, so state of the world costs the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.extension.v3 import config_discovery_pb2_grpc
from google.protobuf import any_pb2

from authd.transport.peercred import PeerCredentials, PeerCredGateway
from authd.xds.publisher import RbacPublisher, served_version
from authd.xds.stream import XdsNodeStatus, XdsStream

__all__ = ["TYPED_EXTENSION_CONFIG_URL", "ExtensionConfigDiscovery"]

log = logging.getLogger(__name__)

TYPED_EXTENSION_CONFIG_URL = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

Context = grpc.aio.ServicerContext[Any, Any]


class ExtensionConfigDiscovery(config_discovery_pb2_grpc.ExtensionConfigDiscoveryServiceServicer):
    """ECDS over the peer-credential gateway, serving the publisher's RBAC config."""

    def __init__(self, publisher: RbacPublisher, gateway: PeerCredGateway) -> None:
        self._publisher = publisher
        self._gateway = gateway
        self._closing = asyncio.Event()
        self._streams: dict[XdsStream, tuple[PeerCredentials, float]] = {}

    def status(self) -> list[XdsNodeStatus]:
        """The open streams, oldest first."""
        return [
            stream.status(pid=creds.pid, uid=creds.uid, opened_at=opened_at)
            for stream, (creds, opened_at) in self._streams.items()
        ]

    def close(self) -> None:
        self._closing.set()

    def _response(self, names: tuple[str, ...], nonce: str = "") -> tuple[Any, str]:
        served = self._publisher.resources()
        chosen = [served[name] for name in names if name in served]
        response = discovery_pb2.DiscoveryResponse(type_url=TYPED_EXTENSION_CONFIG_URL, nonce=nonce)
        for compiled in chosen:
            packed = any_pb2.Any()
            packed.Pack(compiled.config, deterministic=True)
            response.resources.append(packed)
        response.version_info = served_version(served, names)
        return response, response.version_info

    async def _caller(self, context: Context) -> PeerCredentials:
        creds = self._gateway.peer_credentials(context)
        if creds is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "caller not attested: connect through authd's workload socket",
            )
            raise AssertionError("abort raises")
        return creds

    async def FetchExtensionConfigs(self, request: Any, context: Context) -> Any:
        await self._caller(context)
        response, _ = self._response(tuple(request.resource_names))
        return response

    async def DeltaExtensionConfigs(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "authd serves ECDS as state of the world (GRPC)"
        )
        yield  # pragma: no cover  (an async generator)

    async def StreamExtensionConfigs(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        creds = await self._caller(context)
        publisher = self._publisher
        stream = XdsStream()
        generation = publisher.generation
        requests = aiter(request_iterator)
        reader: asyncio.Future[Any] = asyncio.ensure_future(anext(requests, None))
        change: asyncio.Future[int] = asyncio.ensure_future(publisher.wait_for_change(generation))
        closing = asyncio.ensure_future(self._closing.wait())
        self._streams[stream] = (creds, time.time())
        log.info("ECDS: stream opened by pid %d (uid %d)", creds.pid, creds.uid)
        try:
            while not self._closing.is_set():
                await asyncio.wait({reader, change, closing}, return_when=asyncio.FIRST_COMPLETED)
                must_answer = look_again = False
                if reader.done():
                    request = reader.result()
                    if request is None:
                        return
                    reader = asyncio.ensure_future(anext(requests, None))
                    if request.type_url not in ("", TYPED_EXTENSION_CONFIG_URL):
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"type_url must be {TYPED_EXTENSION_CONFIG_URL}",
                        )
                    nacked = request.HasField("error_detail") and (
                        request.response_nonce == stream.nonce
                    )
                    must_answer = stream.on_request(request, time.time())
                    if nacked:
                        log.warning(
                            "ECDS: node %r (pid %d) refused %s config %s, keeps %s: %s",
                            stream.node_id,
                            creds.pid,
                            ",".join(stream.names or ()),
                            stream.nacked_version,
                            stream.acked_version or "its default_config",
                            stream.last_nack,
                        )
                    elif request.response_nonce and request.response_nonce == stream.nonce:
                        log.debug("ECDS: node %r applied %s", stream.node_id, stream.acked_version)
                if change.done():
                    generation = change.result()
                    change = asyncio.ensure_future(publisher.wait_for_change(generation))
                    look_again = stream.names is not None
                if not (must_answer or look_again):
                    continue
                assert stream.names is not None
                response, version = self._response(stream.names)
                if not version or (not must_answer and not stream.needs_push(version)):
                    continue  # nothing of ours asked for (yet), or nothing new
                response.nonce = stream.sent(version, time.time())
                yield response
        finally:
            for task in (reader, change, closing):
                task.cancel()
            await asyncio.gather(reader, change, closing, return_exceptions=True)
            del self._streams[stream]
            log.info(
                "ECDS: stream of node %r (pid %d) ended after %d responses, %d NACKs",
                stream.node_id,
                creds.pid,
                stream.responses,
                stream.nacks,
            )

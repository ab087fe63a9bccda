"""An SDS world for tests: a real CA, entries, SVID provider and peer-credential gateway,
and a client that speaks SDS the way Envoy does."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from authd.transport.peercred import PeerCredentials, PeerCredGateway
from authd.workload.registry import EntryRegistry
from authd.workload.sds import (
    SECRET_TYPE_URL,
    SecretDiscoveryService,
)
from authd.workload.svids import SvidProvider
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.keys import KeyStore
from ca.revoker import Revoker
from ca.spiffe_id import TrustDomain
from ca.store import RegistrationEntry, Selector, SQLiteStore

T = TypeVar("T")
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

TRUST_DOMAIN = TrustDomain("example.org")

WEB = "spiffe://example.org/web"

ORDERS = "spiffe://example.org/orders"

ELSEWHERE = "spiffe://example.org/elsewhere"

SVID_TTL = 600

ME = os.getuid()

SOMEONE_ELSE = 4242

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]

READ_TIMEOUT = 10.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner() as runner:
        return runner.run(coro)


def uid_selectors(creds: PeerCredentials) -> frozenset[Selector]:
    """The tests' attestor: a caller is its uid."""
    return frozenset({Selector("unix", f"uid:{creds.uid}")})


@dataclass
class World:
    clock: FakeClock
    store: SQLiteStore
    ca: CertificateAuthority
    registry: EntryRegistry
    provider: SvidProvider
    gateway: PeerCredGateway
    service: SecretDiscoveryService
    revocations: Revoker | None = None

    def add_entry(self, spiffe_id: str, uid: int = ME, ttl: int = SVID_TTL) -> RegistrationEntry:
        """A registration entry for callers of ``uid``; later entries are younger."""
        self.clock.advance(1)  # created_at orders "default"
        entry = self.store.create_entry(
            RegistrationEntry(
                entry_id=spiffe_id.rpartition("/")[2] + f"-{uid}",
                spiffe_id=spiffe_id,
                parent_id="spiffe://example.org/authd",
                selectors=(Selector("unix", f"uid:{uid}"),),
                x509_svid_ttl=ttl,
                created_at=int(self.clock.now()),
            )
        )
        self.registry.reload()
        return entry

    def channel(self, target: str | None = None) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(
            target or f"unix:{self.gateway.public_path}", options=OWN_CONNECTION
        )

    async def until(self, what: str, condition: Callable[[], bool]) -> None:
        """Until ``condition()`` holds (the server works on the same event loop), or fail."""
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"gave up waiting for {what}")

    async def settled(self) -> None:
        """Until every open stream has looked at the provider's current version."""
        version = self.provider.version
        await self.until(
            f"every stream to see provider version {version}",
            lambda: all(s.provider_version == version for s in self.service.streams),
        )

    async def streams_open(self, count: int) -> None:
        await self.until(f"{count} open streams", lambda: self.service.active_streams == count)


@contextlib.asynccontextmanager
async def world(
    directory: Path,
    attest: Callable[[PeerCredentials], frozenset[Selector]] = uid_selectors,
    *,
    crl_refresh: int | None = None,
    crl_check_interval: float | None = None,
    store_type: type[SQLiteStore] = SQLiteStore,
) -> AsyncIterator[World]:
    """With ``crl_refresh``, SDS (and only SDS: the provider does not hear of revocations,
    so a push after one is SDS's own doing) gets a ``Revoker`` refreshed that often.
    ``store_type``: a ``SQLiteStore`` subclass to build the store with."""
    clock = FakeClock()
    store = store_type(directory / "store.db")
    ca = CertificateAuthority(
        trust_domain=TRUST_DOMAIN, store=store, keystore=KeyStore(directory / "keys"), clock=clock
    )
    registry = EntryRegistry(store, clock)
    provider = SvidProvider(ca, registry, clock)
    revocations = (
        Revoker(ca, store, clock, crl_refresh=crl_refresh) if crl_refresh is not None else None
    )
    gateway = PeerCredGateway(directory / "workload.sock", directory / "private", public_mode=0o666)
    await gateway.start()
    service = SecretDiscoveryService(
        identities=provider,
        gateway=gateway,
        attest=attest,
        revocations=revocations,
        crl_check_interval=crl_check_interval,
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(service, server)
    server.add_insecure_port(gateway.internal_address)
    await server.start()
    try:
        yield World(clock, store, ca, registry, provider, gateway, service, revocations)
    finally:
        service.close()
        await server.stop(grace=1)
        await gateway.close()
        ca.close()
        store.close()


def request(
    names: Sequence[str],
    *,
    after: Any = None,
    error: str = "",
    type_url: str = SECRET_TYPE_URL,
) -> Any:
    """A DiscoveryRequest for ``names``; ``after``: the response it ACKs (or NACKs)."""
    message = discovery_pb2.DiscoveryRequest(resource_names=names, type_url=type_url)
    message.node.id = "sidecar~127.0.0.1~web~example"
    message.node.cluster = "web"
    if after is not None:
        message.response_nonce = after.nonce
        message.version_info = after.version_info
    if error:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


class EnvoyStream:
    """One StreamSecrets call, used the way Envoy's SDS subscription uses it."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call: Any = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).StreamSecrets()
        self.last: Any = None

    async def ask(self, names: Sequence[str], *, error: str = "") -> None:
        await self.call.write(request(names, after=self.last, error=error))

    async def ask_refused(self, names: Sequence[str]) -> None:
        """Ask on a stream authd refuses as it opens: the write may meet the status."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.ask(names)

    async def ack(self, names: Sequence[str]) -> None:
        await self.ask(names)

    async def response(self) -> Any:
        message = await asyncio.wait_for(self.call.read(), READ_TIMEOUT)
        assert message is not EOF, "the stream ended"
        assert message.type_url == SECRET_TYPE_URL
        assert message.nonce and message.version_info
        self.last = message
        return message

    async def status(self) -> grpc.StatusCode:
        """The status the stream ended with (reading until it ends)."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            while await asyncio.wait_for(self.call.read(), READ_TIMEOUT) is not EOF:
                pass
        code: grpc.StatusCode = await self.call.code()
        return code


def secrets(response: Any) -> dict[str, Any]:
    """The secrets of a response by name, in order."""
    found: dict[str, Any] = {}
    for resource in response.resources:
        assert resource.type_url == SECRET_TYPE_URL
        secret = secret_pb2.Secret()
        assert resource.Unpack(secret)
        found[secret.name] = secret
    return found


def chain_of(secret: Any) -> list[x509.Certificate]:
    assert secret.HasField("tls_certificate")
    return x509.load_pem_x509_certificates(secret.tls_certificate.certificate_chain.inline_bytes)


def uri_of(certificate: x509.Certificate) -> str:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (uri,) = san.get_values_for_type(x509.UniformResourceIdentifier)
    return str(uri)


def roots_of(secret: Any) -> list[x509.Certificate]:
    context = secret.validation_context
    assert context.HasField("trusted_ca")
    return x509.load_pem_x509_certificates(context.trusted_ca.inline_bytes)


def serial_of(response: Any, name: str = "default") -> int:
    return chain_of(secrets(response)[name])[0].serial_number

"""The agent's client of the node API: how it reaches the server (SPIRE's agent ``client``).

Attestation goes to ``agent.attestation_address`` over server TLS, trusting the roots of
``agent.trust_bundle_path`` (or, with ``agent.insecure_bootstrap``, the top of whatever chain
the server presents first); everything else to ``agent.node_api_address`` over mutual TLS
with the agent SVID, trusting the bundle the server last sent. The server's certificate is
checked for the DNS SAN ``authd-server`` (grpc's Python client cannot check a URI SAN). A
refusal (evicted, banned, bad token) is ``AgentRefused``; anything else that fails is
``ServerUnavailable``, which the agent rides out from its cache.
"""

from __future__ import annotations

import _ssl
import queue
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from authd.api.authd.agent.v1 import node_pb2, node_pb2_grpc
from authd.nodeapi.servicer import NODE_API_TLS_NAME
from authd.nodes import join_tokens, x509pop
from authd.transport.sockets import parse_host_port
from ca.keys import PrivateKey
from ca.spiffe_id import SpiffeId

__all__ = [
    "NODE_API_TLS_NAME",
    "AgentCredentials",
    "AgentDenied",
    "AgentRefused",
    "IssuedAgentSvid",
    "NodeClient",
    "ServerUnavailable",
    "bootstrap_roots",
    "make_csr",
]

CALL_TIMEOUT = 10.0
JWT_TIMEOUT = 3.0  # a workload waits on it
_REFUSALS = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
)


class AgentRefused(Exception):
    """The server refused the agent (bad or used token, evicted, banned): the message says."""


class AgentDenied(AgentRefused):
    """The server does not (or no longer) know this agent: evicted, banned, never attested."""


class ServerUnavailable(Exception):
    """The server could not be reached or did not answer; try again later."""


@dataclass(frozen=True, slots=True)
class IssuedAgentSvid:
    spiffe_id: str
    chain: tuple[x509.Certificate, ...]
    expires_at: int
    bundle_json: str


def make_csr(key: PrivateKey, spiffe_id: str | None = None) -> bytes:
    """A DER CSR for ``key``, with ``spiffe_id`` as its one URI SAN if given."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "authd-agent")])
    )
    if spiffe_id:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def bootstrap_roots(address: str, timeout: float = CALL_TIMEOUT) -> bytes:
    """``agent.insecure_bootstrap``: the top certificate the server presents, unverified."""
    host, port = parse_host_port(address)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw) as tls,
        ):
            chain = tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    except OSError as exc:
        raise ServerUnavailable(f"cannot reach {address}: {exc}") from None
    if not chain:
        raise ServerUnavailable(f"{address} presented no certificate")
    top = x509.load_der_x509_certificate(chain[-1].public_bytes(_ssl.ENCODING_DER))
    return top.public_bytes(serialization.Encoding.PEM)


def _chain(ders: Sequence[bytes]) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_der_x509_certificate(der) for der in ders)


def _svid(message: node_pb2.AgentSvid) -> IssuedAgentSvid:
    return IssuedAgentSvid(
        spiffe_id=message.spiffe_id,
        chain=_chain(message.cert_chain),
        expires_at=message.expires_at,
        bundle_json=message.bundle_json,
    )


def _failure(exc: grpc.RpcError, what: str) -> Exception:
    code = exc.code()
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return AgentDenied(f"{what} refused: {exc.details()}")
    if code in _REFUSALS:
        return AgentRefused(f"{what} refused: {exc.details()}")
    return ServerUnavailable(f"{what}: {code.name} {exc.details()}")


class NodeClient:
    """Synchronous calls to the server's node API (the agent calls them from a thread)."""

    def __init__(self, attestation_address: str, node_api_address: str) -> None:
        self._attestation_address = attestation_address
        self._node_api_address = node_api_address

    def attest(
        self,
        roots_pem: bytes,
        csr: bytes,
        *,
        join_token: str = "",
        x509pop_chain: Sequence[bytes] = (),
        x509pop_key: object = None,
    ) -> IssuedAgentSvid:
        """Attest with a join token, or with an x509pop certificate and its key."""
        credentials = grpc.ssl_channel_credentials(root_certificates=roots_pem)
        with self._channel(self._attestation_address, credentials) as channel:
            stub = node_pb2_grpc.NodeStub(channel)
            if join_token:
                params = node_pb2.AttestParams(
                    method=join_tokens.METHOD, join_token=join_token, csr=csr
                )
            else:
                params = node_pb2.AttestParams(
                    method=x509pop.METHOD, certificates=list(x509pop_chain), csr=csr
                )
            try:
                return self._attest(stub, params, x509pop_key)
            except grpc.RpcError as exc:
                raise _failure(exc, "attestation") from None

    def _attest(
        self, stub: node_pb2_grpc.NodeStub, params: node_pb2.AttestParams, key: object
    ) -> IssuedAgentSvid:
        # The request stream is fed from this thread as the server's steps arrive.
        requests: queue.Queue[node_pb2.AttestRequest | None] = queue.Queue()
        requests.put(node_pb2.AttestRequest(params=params))

        def feed() -> Iterator[node_pb2.AttestRequest]:
            while (item := requests.get()) is not None:
                yield item

        try:
            for response in stub.Attest(feed(), timeout=CALL_TIMEOUT):
                if response.WhichOneof("step") == "challenge":
                    answer = x509pop.sign_challenge(key, response.challenge)
                    requests.put(node_pb2.AttestRequest(challenge_response=answer))
                elif response.WhichOneof("step") == "svid":
                    return _svid(response.svid)
        finally:
            requests.put(None)
        raise ServerUnavailable("attestation ended without an SVID")

    def renew(self, agent: AgentCredentials, csr: bytes) -> IssuedAgentSvid:
        with self._mtls(agent) as stub:
            try:
                return _svid(
                    stub.RenewAgent(node_pb2.RenewAgentRequest(csr=csr), timeout=CALL_TIMEOUT).svid
                )
            except grpc.RpcError as exc:
                raise _failure(exc, "agent SVID renewal") from None

    def fetch_entries(self, agent: AgentCredentials) -> node_pb2.FetchEntriesResponse:
        with self._mtls(agent) as stub:
            try:
                response: node_pb2.FetchEntriesResponse = stub.FetchEntries(
                    node_pb2.FetchEntriesRequest(), timeout=CALL_TIMEOUT
                )
            except grpc.RpcError as exc:
                raise _failure(exc, "fetching entries") from None
        return response

    def sign(
        self, agent: AgentCredentials, requests: Sequence[tuple[str, bytes]]
    ) -> node_pb2.SignX509SvidsResponse:
        with self._mtls(agent) as stub:
            try:
                response: node_pb2.SignX509SvidsResponse = stub.SignX509Svids(
                    node_pb2.SignX509SvidsRequest(
                        requests=[node_pb2.SvidRequest(entry_id=e, csr=c) for e, c in requests]
                    ),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.RpcError as exc:
                raise _failure(exc, "signing SVIDs") from None
        return response

    def mint_jwt(self, agent: AgentCredentials, entry_id: str, audience: Sequence[str]) -> str:
        with self._mtls(agent) as stub:
            try:
                response: node_pb2.MintJwtSvidResponse = stub.MintJwtSvid(
                    node_pb2.MintJwtSvidRequest(entry_id=entry_id, audience=list(audience)),
                    timeout=JWT_TIMEOUT,
                )
            except grpc.RpcError as exc:
                raise _failure(exc, "minting a JWT-SVID") from None
        return response.token

    def _mtls(self, agent: AgentCredentials) -> _StubContext:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=agent.roots_pem,
            private_key=agent.key_pem,
            certificate_chain=agent.chain_pem,
        )
        return _StubContext(self._channel(self._node_api_address, credentials))

    @staticmethod
    def _channel(address: str, credentials: grpc.ChannelCredentials) -> grpc.Channel:
        return grpc.secure_channel(
            address, credentials, options=[("grpc.ssl_target_name_override", NODE_API_TLS_NAME)]
        )


@dataclass(frozen=True, slots=True)
class AgentCredentials:
    """What the agent presents and trusts on the mutual-TLS node API, in PEM."""

    spiffe_id: SpiffeId
    chain_pem: bytes
    key_pem: bytes
    roots_pem: bytes


class _StubContext:
    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel

    def __enter__(self) -> node_pb2_grpc.NodeStub:
        return node_pb2_grpc.NodeStub(self._channel)

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

"""The node API answers what a peer must not do with a status and a reason, never a crash."""

from __future__ import annotations

import grpc
import pytest

from authd.admin.agents import AgentOperations
from authd.admin.callers import AdminCaller
from authd.admin.errors import FailedPrecondition
from authd.agent.client import NODE_API_TLS_NAME, bootstrap_roots, make_csr
from authd.api.authd.agent.v1 import node_pb2, node_pb2_grpc
from ca.keys import KeyType
from tests.support.agents import Server


def stub(server: Server, address: str) -> tuple[grpc.Channel, node_pb2_grpc.NodeStub]:
    roots = bootstrap_roots(server.attestation_address)
    channel = grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(root_certificates=roots),
        options=[("grpc.ssl_target_name_override", NODE_API_TLS_NAME)],
    )
    return channel, node_pb2_grpc.NodeStub(channel)


def attest(node: node_pb2_grpc.NodeStub, *requests: node_pb2.AttestRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        list(node.Attest(iter(requests), timeout=10))
    return caught.value  # type: ignore[return-value]


def test_malformed_attestations_are_refused_with_reasons(server: Server) -> None:
    channel, node = stub(server, server.attestation_address)
    with channel:
        csr = make_csr(KeyType.EC_P256.generate())
        unknown = attest(node, node_pb2.AttestRequest(params=node_pb2.AttestParams(method="aws")))
        assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown attestation method 'aws'" in (unknown.details() or "")

        answer_first = attest(node, node_pb2.AttestRequest(challenge_response=b"x"))
        assert answer_first.code() == grpc.StatusCode.INVALID_ARGUMENT

        bad_token = attest(
            node,
            node_pb2.AttestRequest(
                params=node_pb2.AttestParams(method="join_token", join_token="guess", csr=csr)
            ),
        )
        assert bad_token.code() == grpc.StatusCode.PERMISSION_DENIED

        good_token_bad_csr = attest(
            node,
            node_pb2.AttestRequest(
                params=node_pb2.AttestParams(
                    method="join_token", join_token=server.join_token(), csr=b"not a csr"
                )
            ),
        )
        assert good_token_bad_csr.code() == grpc.StatusCode.INVALID_ARGUMENT

        no_pop_ca = attest(
            node,
            node_pb2.AttestRequest(
                params=node_pb2.AttestParams(method="x509pop", certificates=[b"junk"], csr=csr)
            ),
        )
        assert no_pop_ca.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "x509pop attestation is not configured" in (no_pop_ca.details() or "")


def test_the_node_api_needs_an_agent_svid(server: Server) -> None:
    channel, node = stub(server, server.attestation_address)  # TLS, but no client certificate
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            node.FetchEntries(node_pb2.FetchEntriesRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_agent_admin_operations_say_how_to_enable_agents() -> None:
    with pytest.raises(FailedPrecondition, match=r"agent\.attestation_address"):
        AgentOperations(None).create_join_token(AdminCaller("uid=0"), "", 0)

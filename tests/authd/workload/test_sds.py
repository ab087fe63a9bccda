"""SDS for the attested caller, spoken to the way Envoy speaks it.

Each test runs a real grpc.aio server behind a real peer-credential gateway, a real CA on
SQLite, the registration entries and the SVID provider on a fake clock. The client is a
gRPC stub that behaves like Envoy's SDS subscription: it asks for names, ACKs with the
version and nonce it got, NACKs with an ``error_detail``. Rotation is driven by advancing
the clock and calling ``provider.rotate_due()``, never by waiting.

To show that a request is *not* answered, the test sends a second request that must be
answered right after it (a changed name list); requests on a stream are handled in order,
so a wrongly answered first request would arrive before the expected answer. To show that a
change is *not* pushed, the test waits until the stream has looked at the provider's new
version before making the change that must be pushed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_spiffe_validator_config_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from authd.transport.peercred import PeerCredentials
from authd.workload.attestation import AttestationError
from authd.workload.sds import (
    SECRET_TYPE_URL,
    SdsStream,
    secrets_version,
)
from authd.workload.sds_stream import MAX_NACK_CHARS, MAX_NODE_CHARS
from ca.store import Selector
from tests.support.sds import (
    ORDERS,
    SOMEONE_ELSE,
    SVID_TTL,
    WEB,
    EnvoyStream,
    chain_of,
    request,
    roots_of,
    run,
    secrets,
    serial_of,
    uri_of,
    world,
)


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.DEBUG):
        yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


# --- the world: CA, entries, provider, SDS behind the gateway ------------------------------


# --- an Envoy-like client -------------------------------------------------------------------


# --- what each name gives -------------------------------------------------------------------


def test_default_is_the_callers_svid_leaf_first_with_its_key(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["default"])
                response = await envoy.response()
            (name,) = secrets(response)
            secret = secrets(response)["default"]
            chain = chain_of(secret)
            assert name == "default"
            assert uri_of(chain[0]) == WEB
            assert str(w.ca.verify_x509_svid(chain)) == WEB
            key = serialization.load_pem_private_key(
                secret.tls_certificate.private_key.inline_bytes, password=None
            )
            public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            assert key.public_key().public_bytes(*public) == chain[0].public_key().public_bytes(
                *public
            )

    run(scenario())


def test_default_is_the_oldest_entry_and_a_spiffe_id_names_its_own(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            w.add_entry(ORDERS)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask([ORDERS, "default", WEB])
                found = secrets(await envoy.response())
            assert list(found) == [ORDERS, "default", WEB]
            assert uri_of(chain_of(found[ORDERS])[0]) == ORDERS
            assert uri_of(chain_of(found["default"])[0]) == WEB
            assert chain_of(found[WEB]) == chain_of(found["default"])

    run(scenario())


def test_rootca_and_the_trust_domain_id_are_the_bundle(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ROOTCA", "spiffe://example.org"])
                found = secrets(await envoy.response())
            assert list(found) == ["ROOTCA", "spiffe://example.org"]
            for secret in found.values():
                assert roots_of(secret) == list(w.ca.bundle.x509_authorities)
                assert len(roots_of(secret)) == 1
                assert not secret.validation_context.HasField("custom_validator_config")

    run(scenario())


def test_all_is_envoys_spiffe_validator_with_the_trust_domains_bundle(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ALL"])
                found = secrets(await envoy.response())
            context = found["ALL"].validation_context
            assert not context.HasField("trusted_ca")
            validator = context.custom_validator_config
            assert validator.name == "envoy.tls.cert_validator.spiffe"
            config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
            assert validator.typed_config.Unpack(config)
            (domain,) = config.trust_domains
            assert domain.name == "example.org"
            assert domain.trust_bundle.inline_bytes == w.ca.bundle.to_pem()

    run(scenario())


def test_unknown_names_and_other_workloads_ids_are_left_out(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            w.add_entry(ORDERS, uid=SOMEONE_ELSE)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                names = ["nonsense", ORDERS, "default", "spiffe://other.org", "spiffe://Bad"]
                await envoy.ask([*names, "ROOTCA", "default"])
                found = secrets(await envoy.response())
            assert list(found) == ["default", "ROOTCA"]

    run(scenario())
    (left_out,) = [r for r in caplog.records if "not among its entries" in r.getMessage()]
    for name in ("nonsense", ORDERS, "spiffe://other.org", "spiffe://Bad"):
        assert repr(name) in left_out.getMessage()


# --- who may ask ----------------------------------------------------------------------------


def test_a_caller_the_gateway_did_not_attest_is_denied(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            # Straight to the internal socket, past the gateway: no credentials recorded.
            async with w.channel(w.gateway.internal_address) as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask_refused(["ROOTCA"])
                assert await envoy.status() == grpc.StatusCode.PERMISSION_DENIED
                stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await stub.FetchSecrets(request(["ROOTCA"]))
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert w.service.active_streams == 0

    run(scenario())


def test_a_caller_without_an_entry_gets_no_certificate_but_the_bundle(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB, uid=SOMEONE_ELSE)
            async with w.channel() as channel:
                stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
                for names in (["default"], [WEB], ["ROOTCA", "default"]):
                    envoy = EnvoyStream(channel)
                    await envoy.ask(names)
                    assert await envoy.status() == grpc.StatusCode.PERMISSION_DENIED, names
                    with pytest.raises(grpc.aio.AioRpcError) as denied:
                        await stub.FetchSecrets(request(names))
                    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
                bundle = await stub.FetchSecrets(request(["ROOTCA"]))
                assert roots_of(secrets(bundle)["ROOTCA"]) == list(w.ca.bundle.x509_authorities)

    run(scenario())


def test_a_caller_that_cannot_be_attested_is_denied(workdir: Path) -> None:
    def gone(creds: PeerCredentials) -> frozenset[Selector]:
        raise AttestationError(f"caller process {creds.pid} has exited or been replaced")

    async def scenario() -> None:
        async with world(workdir, attest=gone) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask_refused(["ROOTCA"])
                assert await envoy.status() == grpc.StatusCode.PERMISSION_DENIED
                stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await stub.FetchSecrets(request(["ROOTCA"]))
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "has exited" in (denied.value.details() or "")

    run(scenario())


def test_a_caller_whose_entry_is_deleted_mid_stream_is_cut_off(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            entry = w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["default"])
                await envoy.response()
                w.store.delete_entry(entry.entry_id)
                w.registry.reload()
                assert await envoy.status() == grpc.StatusCode.PERMISSION_DENIED

    run(scenario())


def test_a_request_for_another_type_is_invalid(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            cluster = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.call.write(request(["default"], type_url=cluster))
                assert await envoy.status() == grpc.StatusCode.INVALID_ARGUMENT

    run(scenario())


# --- the xDS conversation ---------------------------------------------------------------


def test_an_ack_is_not_answered(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["default"])
                first = await envoy.response()
                await envoy.ack(["default"])
                await envoy.ask(["default", "ROOTCA"])  # answered at once
                second = await envoy.response()
                assert list(secrets(second)) == ["default", "ROOTCA"]
                assert second.nonce != first.nonce
                assert serial_of(second) == serial_of(first)
                (stream,) = w.service.streams
                assert (stream.responses, stream.acks, stream.nacks) == (2, 1, 0)

    run(scenario())


def test_a_changed_name_list_is_answered_at_once_even_when_nothing_else_changed(
    workdir: Path,
) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            w.add_entry(ORDERS)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["default", ORDERS])
                first = await envoy.response()
                await envoy.ask([ORDERS])
                second = await envoy.response()
                await envoy.ask(["default", ORDERS])
                third = await envoy.response()
            assert list(secrets(second)) == [ORDERS]
            assert chain_of(secrets(second)[ORDERS]) == chain_of(secrets(first)[ORDERS])
            assert third.version_info == first.version_info
            assert len({first.nonce, second.nonce, third.nonce}) == 3

    run(scenario())


def test_a_nack_is_logged_and_not_answered_until_something_changes(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["default"])
                first = await envoy.response()
                await envoy.ask(["default"], error="Failed to load certificate chain")
                (stream,) = w.service.streams
                await w.until("the NACK", lambda: stream.nacks == 1)
                (status,) = w.service.status()
                assert status.last_nack == "Failed to load certificate chain"
                assert status.nacked_version == status.sent_version == first.version_info
                assert status.acked_version == ""
                assert (status.node_id, status.cluster) == ("sidecar~127.0.0.1~web~example", "web")
                # A change elsewhere (the bundle) leaves this stream's secret as it was.
                await w.settled()
                w.ca.prepare_authority("x509")
                await w.settled()
                w.clock.advance(SVID_TTL * 0.6)
                assert w.provider.rotate_due() == 1
                second = await envoy.response()
                assert serial_of(second) != serial_of(first)
                assert (stream.responses, stream.acks, stream.nacks) == (2, 0, 1)
                await envoy.ack(["default"])
                await w.until("the ACK", lambda: stream.acks == 1)
                (status,) = w.service.status()
                assert status.acked_version == status.sent_version == second.version_info
                assert status.nacked_version == first.version_info  # the refusal it got over

    run(scenario())
    rejections = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Failed to load certificate chain" in m for m in rejections), rejections


def test_a_request_answering_an_older_response_is_ignored() -> None:
    stream = SdsStream()
    assert stream.on_request(request(["default"]))
    first = discovery_pb2.DiscoveryResponse(nonce=stream.sent("v1"), version_info="v1")
    assert not stream.on_request(request(["default"], after=first))  # ACK
    second = discovery_pb2.DiscoveryResponse(nonce=stream.sent("v2"), version_info="v2")
    # Envoy's request for other names crossed our push: it names the older nonce.
    assert not stream.on_request(request(["ROOTCA"], after=first))
    assert stream.names == ("default",)
    assert stream.on_request(request(["ROOTCA"], after=second))
    assert (stream.acks, stream.stale, stream.names) == (1, 1, ("ROOTCA",))


def test_what_an_envoy_says_of_itself_is_kept_bounded() -> None:
    stream = SdsStream()
    first = request(["default"])
    first.node.id = "n" * 10_000
    assert stream.on_request(first)
    nack = request(["default"], after=discovery_pb2.DiscoveryResponse(nonce=stream.sent("v1")))
    nack.node.id = "m" * 10_000
    nack.error_detail.message = "x" * 100_000
    stream.on_request(nack)
    status = stream.status(pid=1, uid=2, opened_at=0.0)
    assert len(status.node_id) == MAX_NODE_CHARS and len(status.last_nack) == MAX_NACK_CHARS
    assert (status.nacks, status.acked_version, status.nacked_version) == (1, "", "v1")


def test_a_push_needs_a_stream_that_has_asked_and_secrets_that_differ() -> None:
    stream = SdsStream()
    assert not stream.needs_push("v1")
    assert stream.on_request(request(["default"]))
    stream.sent("v1")
    assert not stream.needs_push("v1")
    assert stream.needs_push("v2")


def test_the_version_is_not_derived_from_the_private_key() -> None:
    def secret(key: bytes) -> Any:
        message = secret_pb2.Secret(name="default")
        message.tls_certificate.certificate_chain.inline_bytes = b"chain"
        message.tls_certificate.private_key.inline_bytes = key
        return message

    assert secrets_version([secret(b"one key")]) == secrets_version([secret(b"another")])
    other_chain = secret(b"one key")
    other_chain.tls_certificate.certificate_chain.inline_bytes = b"other chain"
    assert secrets_version([other_chain]) != secrets_version([secret(b"one key")])


# --- pushes ---------------------------------------------------------------------------------


def test_a_rotated_svid_is_pushed_on_the_open_stream(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["default"])
                first = await envoy.response()
                await envoy.ack(["default"])
                serials = [serial_of(first)]
                for _ in range(3):
                    w.clock.advance(SVID_TTL * 0.6)
                    assert w.provider.rotate_due() == 1
                    pushed = await envoy.response()
                    serials.append(serial_of(pushed))
                    chain = chain_of(secrets(pushed)["default"])
                    assert chain[0].not_valid_before_utc.timestamp() <= w.clock.now()
                    assert str(w.ca.verify_x509_svid(chain)) == WEB
                    await envoy.ack(["default"])
            assert len(set(serials)) == 4

    run(scenario())


def test_a_new_authority_is_pushed_as_a_bundle_of_two(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ROOTCA", "ALL"])
                first = await envoy.response()
                await envoy.ack(["ROOTCA", "ALL"])
                old = roots_of(secrets(first)["ROOTCA"])
                prepared = w.ca.prepare_authority("x509")
                pushed = secrets(await envoy.response())
                roots = roots_of(pushed["ROOTCA"])
                assert len(roots) == 2
                assert old[0] in roots
                config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
                pushed["ALL"].validation_context.custom_validator_config.typed_config.Unpack(config)
                assert config.trust_domains[0].trust_bundle.inline_bytes == w.ca.bundle.to_pem()
                assert len(x509.load_pem_x509_certificates(w.ca.bundle.to_pem())) == 2
                assert prepared.certificate_der in [
                    r.public_bytes(serialization.Encoding.DER) for r in roots
                ]

    run(scenario())


def test_a_change_that_leaves_a_streams_secrets_alone_is_not_pushed(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            entry = w.add_entry(WEB)
            w.provider.x509_svid(entry)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ROOTCA"])
                first = await envoy.response()
                await envoy.ack(["ROOTCA"])
                await w.settled()
                w.clock.advance(SVID_TTL * 0.6)
                assert w.provider.rotate_due() == 1  # an SVID this stream does not carry
                await w.settled()
                w.ca.prepare_authority("x509")
                second = await envoy.response()
            assert len(roots_of(secrets(first)["ROOTCA"])) == 1
            assert len(roots_of(secrets(second)["ROOTCA"])) == 2
            assert second.nonce == "2"

    run(scenario())


def test_streams_of_one_envoy_each_get_their_own_pushes(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                certificate, bundle = EnvoyStream(channel), EnvoyStream(channel)
                await certificate.ask(["default"])
                await bundle.ask(["ROOTCA"])
                first_serial = serial_of(await certificate.response())
                await bundle.response()
                await certificate.ack(["default"])
                await bundle.ack(["ROOTCA"])
                assert w.gateway.connection_count == 1
                await w.streams_open(2)
                await w.settled()
                w.ca.prepare_authority("x509")
                assert len(roots_of(secrets(await bundle.response())["ROOTCA"])) == 2
                await bundle.ack(["ROOTCA"])
                await w.settled()
                w.clock.advance(SVID_TTL * 0.6)
                assert w.provider.rotate_due() == 1
                assert serial_of(await certificate.response()) != first_serial
                old_authority = w.ca.x509_authority.authority_id
                w.ca.activate_authority("x509")
                assert w.ca.x509_authority.authority_id != old_authority
                # The active authority changed; the bundle did not: only the SVID, once
                # due, is issued by the new authority.
                await w.settled()
                w.clock.advance(SVID_TTL * 0.6)
                assert w.provider.rotate_due() == 1
                leaf = chain_of(secrets(await certificate.response())["default"])[0]
                aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
                assert aki.value.key_identifier is not None
                assert aki.value.key_identifier.hex() == w.ca.x509_authority.authority_id
                await w.settled()
                stream_states = {s.names: s for s in w.service.streams}
                assert stream_states[("ROOTCA",)].responses == 2
                assert stream_states[("default",)].responses == 3

    run(scenario())


def test_fetch_secrets_answers_once_with_what_the_stream_has(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["default", "ROOTCA"])
                streamed = await envoy.response()
                stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
                fetched = await stub.FetchSecrets(request(["default", "ROOTCA", "unknown"]))
            assert fetched.type_url == SECRET_TYPE_URL
            assert fetched.version_info == streamed.version_info
            assert list(secrets(fetched)) == ["default", "ROOTCA"]
            assert secrets(fetched) == secrets(streamed)

    run(scenario())


# --- endings --------------------------------------------------------------------------------


def test_a_cancelled_stream_ends_cleanly(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["default"])
                await envoy.response()
                await w.streams_open(1)
                envoy.call.cancel()
                await w.streams_open(0)
                # The provider's change still reaches nobody, and breaks nothing.
                w.clock.advance(SVID_TTL * 0.6)
                assert w.provider.rotate_due() == 1

    run(scenario())


def test_closing_the_service_ends_open_streams_with_ok(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                streams = [EnvoyStream(channel) for _ in range(3)]
                for envoy in streams:
                    await envoy.ask(["default"])
                    await envoy.response()
                w.service.close()
                for envoy in streams:
                    assert await envoy.status() == grpc.StatusCode.OK
                await w.streams_open(0)

    run(scenario())

"""CRLs in SDS validation contexts, so Envoy refuses a revoked SVID at the TLS handshake.

The world is the one of ``test_sds.py`` (a real grpc.aio server behind the peer-credential
gateway, a real CA on SQLite, a fake clock) with a ``Revoker`` given to SDS only: the
SVID provider does not hear of revocations here, so every push after one is SDS's own. The
CRLs are read back from the responses and checked with ``cryptography`` against the
authorities that must have signed them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.service.secret.v3 import sds_pb2_grpc

from ca.revoker import Revoker
from tests.support.sds import (
    WEB,
    EnvoyStream,
    World,
    request,
    roots_of,
    run,
    secrets,
    world,
)

CRL_REFRESH = 60
_END = b"-----END X509 CRL-----\n"


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.DEBUG):
        yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def crls_of(secret: Any) -> list[x509.CertificateRevocationList]:
    """The CRLs of a trusted-CA validation context, in order."""
    context = secret.validation_context
    assert context.HasField("crl")
    pem = context.crl.inline_bytes
    blocks = [block + _END for block in pem.split(_END) if block.strip()]
    assert b"".join(blocks) == pem
    return [x509.load_pem_x509_crl(block) for block in blocks]


def revoked_serials(crl: x509.CertificateRevocationList) -> set[int]:
    return {entry.serial_number for entry in crl}


def next_update(crl: x509.CertificateRevocationList) -> float:
    when = crl.next_update_utc
    assert when is not None, "a CRL without nextUpdate"
    return when.timestamp()


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def signed_by(crl: x509.CertificateRevocationList, authority: x509.Certificate) -> bool:
    public_key = authority.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    return crl.issuer == authority.subject and crl.is_signature_valid(public_key)


def revocations(w: World) -> Revoker:
    assert w.revocations is not None
    return w.revocations


def revoke_serial(w: World, serial: int, reason: str = "key-compromise") -> None:
    revocations(w).revoke("serial", format(serial, "x"), reason=reason, note="test", actor="test")


# --- what the validation contexts carry -----------------------------------------------------


def test_rootca_carries_a_crl_signed_by_the_authority_listing_a_revoked_serial(
    workdir: Path,
) -> None:
    async def scenario() -> None:
        async with world(workdir, crl_refresh=CRL_REFRESH) as w:
            entry = w.add_entry(WEB)
            revoked = w.provider.x509_svid(entry).chain[0].serial_number
            revoke_serial(w, revoked)
            other = w.add_entry("spiffe://example.org/other")
            kept = w.provider.x509_svid(other).chain[0].serial_number  # not revoked
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ROOTCA", "spiffe://example.org"])
                found = secrets(await envoy.response())
            (authority,) = w.ca.live_x509_authorities()
            for secret in found.values():
                context = secret.validation_context
                assert roots_of(secret) == list(w.ca.bundle.x509_authorities)
                assert context.only_verify_leaf_cert_crl
                (crl,) = crls_of(secret)
                assert signed_by(crl, authority.certificate)
                assert revoked_serials(crl) == {revoked}
                assert kept not in revoked_serials(crl)
                entry_of_revoked = crl.get_revoked_certificate_by_serial_number(revoked)
                assert entry_of_revoked is not None
                reason = entry_of_revoked.extensions.get_extension_for_class(x509.CRLReason)
                assert reason.value.reason == x509.ReasonFlags.key_compromise
                assert crl.last_update_utc.timestamp() == int(w.clock.now())
                assert next_update(crl) == int(w.clock.now()) + CRL_REFRESH

    run(scenario())


def test_each_live_authority_has_its_own_crl_listing_what_it_issued(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir, crl_refresh=CRL_REFRESH) as w:
            entry = w.add_entry(WEB)
            old_serial = w.provider.x509_svid(entry).chain[0].serial_number
            w.ca.prepare_authority("x509")
            w.ca.activate_authority("x509")
            other = w.add_entry("spiffe://example.org/other")
            new_serial = w.provider.x509_svid(other).chain[0].serial_number
            revoke_serial(w, old_serial)
            revoke_serial(w, new_serial)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ROOTCA"])
                crls = crls_of(secrets(await envoy.response())["ROOTCA"])
            authorities = w.ca.live_x509_authorities()
            assert len(authorities) == len(crls) == 2
            listed = {}
            for crl in crls:
                (issuer,) = [a for a in authorities if signed_by(crl, a.certificate)]
                listed[issuer.authority_id] = revoked_serials(crl)
            assert listed[w.ca.x509_authority.authority_id] == {new_serial}
            (old_authority,) = set(listed) - {w.ca.x509_authority.authority_id}
            assert listed[old_authority] == {old_serial}

    run(scenario())


def test_all_carries_no_crl_because_envoys_spiffe_validator_ignores_it(
    workdir: Path,
) -> None:
    async def scenario() -> None:
        async with world(workdir, crl_refresh=CRL_REFRESH) as w:
            entry = w.add_entry(WEB)
            revoke_serial(w, w.provider.x509_svid(entry).chain[0].serial_number)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ALL", "ROOTCA"])
                found = secrets(await envoy.response())
            assert found["ALL"].validation_context.HasField("custom_validator_config")
            assert not found["ALL"].validation_context.HasField("crl")
            assert found["ROOTCA"].validation_context.HasField("crl")

    run(scenario())


def test_without_a_revocation_list_rootca_has_no_crl(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ROOTCA"])
                context = secrets(await envoy.response())["ROOTCA"].validation_context
            assert context.HasField("trusted_ca")
            assert not context.HasField("crl")
            assert not context.only_verify_leaf_cert_crl

    run(scenario())


def test_fetch_secrets_carries_the_same_crl_as_the_stream(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir, crl_refresh=CRL_REFRESH) as w:
            entry = w.add_entry(WEB)
            serial = w.provider.x509_svid(entry).chain[0].serial_number
            revoke_serial(w, serial)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ROOTCA"])
                streamed = secrets(await envoy.response())["ROOTCA"]
                stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
                fetched = secrets(await stub.FetchSecrets(request(["ROOTCA"])))["ROOTCA"]
            assert fetched == streamed
            assert revoked_serials(crls_of(fetched)[0]) == {serial}

    run(scenario())


# --- pushes ---------------------------------------------------------------------------------


def test_a_revocation_pushes_a_new_validation_context_on_an_open_stream(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir, crl_refresh=CRL_REFRESH) as w:
            entry = w.add_entry(WEB)
            serial = w.provider.x509_svid(entry).chain[0].serial_number
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ROOTCA"])
                first = await envoy.response()
                await envoy.ack(["ROOTCA"])
                await w.settled()
                revoke_serial(w, serial, reason="certificate-hold")
                pushed = await envoy.response()
                await envoy.ack(["ROOTCA"])
                revocations(w).unrevoke("serial", format(serial, "x"), actor="test")
                lifted = await envoy.response()
            assert revoked_serials(crls_of(secrets(first)["ROOTCA"])[0]) == set()
            assert revoked_serials(crls_of(secrets(pushed)["ROOTCA"])[0]) == {serial}
            assert revoked_serials(crls_of(secrets(lifted)["ROOTCA"])[0]) == set()
            assert len({first.version_info, pushed.version_info, lifted.version_info}) == 3
            assert roots_of(secrets(pushed)["ROOTCA"]) == roots_of(secrets(first)["ROOTCA"])

    run(scenario())


def test_a_revocation_made_on_another_thread_is_pushed(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir, crl_refresh=CRL_REFRESH) as w:
            entry = w.add_entry(WEB)
            serial = w.provider.x509_svid(entry).chain[0].serial_number
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ROOTCA"])
                await envoy.response()
                await envoy.ack(["ROOTCA"])
                await w.settled()
                await asyncio.to_thread(revoke_serial, w, serial)
                pushed = await envoy.response()
            assert revoked_serials(crls_of(secrets(pushed)["ROOTCA"])[0]) == {serial}

    run(scenario())


def test_revoking_a_spiffe_id_lists_every_svid_it_holds(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir, crl_refresh=CRL_REFRESH) as w:
            entry = w.add_entry(WEB, ttl=600)
            first = w.provider.x509_svid(entry).chain[0].serial_number
            w.clock.advance(400)
            assert w.provider.rotate_due() == 1
            second = w.provider.x509_svid(entry).chain[0].serial_number
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ROOTCA"])
                await envoy.response()
                await envoy.ack(["ROOTCA"])
                await w.settled()
                revocations(w).revoke(
                    "spiffe_id", WEB, reason="key-compromise", note="test", actor="test"
                )
                pushed = await envoy.response()
            assert first != second
            assert revoked_serials(crls_of(secrets(pushed)["ROOTCA"])[0]) == {first, second}

    run(scenario())


def test_a_crl_change_is_not_pushed_to_a_stream_without_a_trusted_ca(workdir: Path) -> None:
    async def scenario() -> None:
        async with world(workdir, crl_refresh=CRL_REFRESH) as w:
            entry = w.add_entry(WEB)
            serial = w.provider.x509_svid(entry).chain[0].serial_number
            async with w.channel() as channel:
                certificate, bundle = EnvoyStream(channel), EnvoyStream(channel)
                await certificate.ask(["default", "ALL"])
                await bundle.ask(["ROOTCA"])
                await certificate.response()
                await bundle.response()
                await certificate.ack(["default", "ALL"])
                await bundle.ack(["ROOTCA"])
                await w.streams_open(2)
                await w.settled()
                revoke_serial(w, serial)
                await bundle.response()  # the CRL changed for this one
                # Answered at once; a push of the CRL change would have come first.
                await certificate.ask(["default"])
                second = await certificate.response()
            assert second.nonce == "2"
            assert list(secrets(second)) == ["default"]

    run(scenario())


def test_the_crl_is_re_signed_and_pushed_before_its_next_update(workdir: Path) -> None:
    interval = 0.02

    async def scenario() -> None:
        async with world(workdir, crl_refresh=CRL_REFRESH, crl_check_interval=interval) as w:
            w.add_entry(WEB)
            async with w.channel() as channel:
                envoy = EnvoyStream(channel)
                await envoy.ask(["ROOTCA"])
                first = await envoy.response()
                await envoy.ack(["ROOTCA"])
                # While the CRL is fresh, checks come and go and nothing is pushed: the
                # answer to a changed name list is the very next response.
                await asyncio.sleep(10 * interval)
                await envoy.ask(["ROOTCA", "spiffe://example.org"])
                unchanged = await envoy.response()
                await envoy.ack(["ROOTCA", "spiffe://example.org"])
                pushes = []
                for _ in range(3):
                    w.clock.advance(CRL_REFRESH / 2 + 1)
                    pushes.append(await envoy.response())
                    await envoy.ack(["ROOTCA", "spiffe://example.org"])
                now = w.clock.now()
            assert unchanged.nonce == "2"
            (old,) = crls_of(secrets(first)["ROOTCA"])
            assert crls_of(secrets(unchanged)["ROOTCA"]) == [old]
            crls = [old] + [crls_of(secrets(p)["ROOTCA"])[0] for p in pushes]
            numbers = [crl_number(crl) for crl in crls]
            assert numbers == sorted(set(numbers))
            for old_crl, new_crl in itertools.pairwise(crls):
                # Each replaced its predecessor before the predecessor's nextUpdate.
                assert new_crl.last_update_utc.timestamp() < next_update(old_crl)
                assert next_update(new_crl) > next_update(old_crl)
            assert next_update(crls[-1]) > now + CRL_REFRESH / 2
            assert len({first.version_info, *(p.version_info for p in pushes)}) == 4

    run(scenario())


def test_crls_that_cannot_be_built_leave_the_last_good_ones_in_place(
    workdir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with world(workdir, crl_refresh=CRL_REFRESH) as w:
            entry = w.add_entry(WEB)
            revoke_serial(w, w.provider.x509_svid(entry).chain[0].serial_number)
            feed = w.service.crls
            assert feed is not None
            good = await feed.pem()

            def broken() -> list[x509.CertificateRevocationList]:
                raise OSError("store unreachable")

            monkeypatch.setattr(revocations(w), "crls", broken)
            assert await feed.pem() == good

    run(scenario())
    assert any("cannot build the CRLs" in r.getMessage() for r in caplog.records)
    caplog.clear()  # the error above is the one this test expects

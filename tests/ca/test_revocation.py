"""Revocation: durable before acknowledged, O(1) view, CRLs per authority."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.errors import InvalidRequest, InvalidSpiffeId
from ca.keys import KeyStore
from ca.revocation_view import RevocationQuery, RevocationReason
from ca.revoker import Revoker
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import SQLiteStore
from ca.x509svid import X509Svid

WEB = SpiffeId.parse("spiffe://example.org/web")
DB = SpiffeId.parse("spiffe://example.org/db")


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = FakeClock(1_790_000_000)
        self.store = SQLiteStore(tmp / "s.db")
        self.ca = CertificateAuthority(
            trust_domain=TrustDomain("example.org"),
            store=self.store,
            keystore=KeyStore(tmp / "keys"),
            clock=self.clock,
        )
        self.revocations = Revoker(self.ca, self.store, self.clock, crl_refresh=60)

    def issue(self, spiffe_id: SpiffeId = WEB, ttl: int = 3600) -> X509Svid:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        return self.ca.issue_x509_svid(csr, spiffe_id=spiffe_id, ttl=ttl, requester="test")

    def revoked_serials(self) -> set[int]:
        return {entry.serial_number for crl in self.revocations.crls() for entry in crl}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.ca.close()
    w.store.close()


def test_revoked_serial_is_in_the_view_and_the_store(world: World) -> None:
    svid = world.issue()
    world.revocations.revoke(
        "serial", svid.serial, reason="key-compromise", note="laptop", actor="op"
    )
    assert world.revocations.view.is_revoked(RevocationQuery(serial=svid.serial))
    assert not world.revocations.view.is_revoked(RevocationQuery(serial="1234"))
    stored = world.store.get_revocation("serial", svid.serial)
    assert stored.reason == RevocationReason.KEY_COMPROMISE
    assert stored.revoked_by == "op"
    assert world.store.list_audit()[-1].action == "revoke"


def test_serial_spellings_are_normalised(world: World) -> None:
    svid = world.issue()
    colon = ":".join(f"{b:02X}" for b in svid.leaf.serial_number.to_bytes(16, "big"))
    world.revocations.revoke("serial", colon, reason=1, note="", actor="op")
    assert world.revocations.view.is_revoked(RevocationQuery(serial=svid.serial))


def test_unknown_serial_malformed_id_and_double_revocation_are_refused(world: World) -> None:
    with pytest.raises(InvalidRequest, match="unknown serial"):
        world.revocations.revoke("serial", "abcdef", reason=1, note="", actor="op")
    with pytest.raises(InvalidRequest, match="not hexadecimal"):
        world.revocations.revoke("serial", "xyz", reason=1, note="", actor="op")
    with pytest.raises(InvalidSpiffeId):
        world.revocations.revoke("spiffe_id", "spiffe://Bad/x", reason=1, note="", actor="op")
    with pytest.raises(InvalidRequest, match="unknown revocation reason"):
        world.revocations.revoke("spiffe_id", str(WEB), reason="bored", note="", actor="op")
    world.revocations.revoke("spiffe_id", str(WEB), reason=1, note="", actor="op")
    with pytest.raises(InvalidRequest, match="already revoked"):
        world.revocations.revoke("spiffe_id", str(WEB), reason=1, note="", actor="op")
    assert len(world.store.list_revocations()) == 1  # nothing else was stored


def test_only_a_certificate_hold_can_be_lifted(world: World) -> None:
    svid = world.issue()
    world.revocations.revoke("serial", svid.serial, reason="certificate-hold", note="", actor="op")
    world.revocations.unrevoke("serial", svid.serial, actor="op")
    assert not world.revocations.view.is_revoked(RevocationQuery(serial=svid.serial))
    world.revocations.revoke("spiffe_id", str(WEB), reason="key-compromise", note="", actor="op")
    with pytest.raises(InvalidRequest, match="only certificate-hold can be lifted"):
        world.revocations.unrevoke("spiffe_id", str(WEB), actor="op")
    with pytest.raises(InvalidRequest, match="is not revoked"):
        world.revocations.unrevoke("spiffe_id", str(DB), actor="op")


def test_revoking_a_spiffe_id_blocks_issuance_and_lists_its_live_svids(world: World) -> None:
    first, second, other = world.issue(), world.issue(), world.issue(DB)
    world.revocations.revoke("spiffe_id", str(WEB), reason=1, note="", actor="op")
    assert world.revocations.blocks_issuance(str(WEB))
    assert not world.revocations.blocks_issuance(str(DB))
    assert world.revocations.view.is_revoked(RevocationQuery(spiffe_id=str(WEB)))
    listed = world.revoked_serials()
    assert {first.leaf.serial_number, second.leaf.serial_number} <= listed
    assert other.leaf.serial_number not in listed


def test_crl_is_signed_by_the_issuer_and_carries_reason_and_next_update(world: World) -> None:
    svid = world.issue()
    world.revocations.revoke("serial", svid.serial, reason="superseded", note="", actor="op")
    (crl,) = world.revocations.crls()
    authority = world.ca.x509_authority.certificate
    assert crl.issuer == authority.subject
    assert crl.is_signature_valid(authority.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(svid.leaf.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.superseded
    )
    assert crl.next_update_utc is not None
    assert (crl.next_update_utc - crl.last_update_utc).total_seconds() == 60


def test_openssl_rejects_a_revoked_svid_with_the_crl(world: World) -> None:
    revoked, good = world.issue(), world.issue()
    world.revocations.revoke("serial", revoked.serial, reason=1, note="", actor="op")
    bundle = world.tmp / "bundle.pem"
    bundle.write_bytes(world.ca.bundle.to_pem())
    crl = world.tmp / "crl.pem"
    crl.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in world.revocations.crls())
    )

    def verify(svid: X509Svid) -> subprocess.CompletedProcess[str]:
        leaf = world.tmp / f"{svid.serial}.pem"
        leaf.write_bytes(svid.chain_pem())
        return subprocess.run(
            ["openssl", "verify", "-crl_check", "-CAfile", str(bundle), "-CRLfile", str(crl),
             "-attime", str(int(world.clock.now())), str(leaf)],
            capture_output=True, text=True,
        )  # fmt: skip

    assert verify(good).returncode == 0
    result = verify(revoked)
    assert result.returncode != 0
    assert "revoked" in (result.stdout + result.stderr)


def test_expired_svids_leave_the_crl_and_crls_refresh(world: World) -> None:
    svid = world.issue(ttl=120)
    world.revocations.revoke("serial", svid.serial, reason=1, note="", actor="op")
    first = world.revocations.crls()
    assert world.revocations.crls() is first  # cached until half the refresh interval
    world.clock.advance(31)
    assert world.revocations.crls() is not first
    world.clock.advance(200)
    assert svid.leaf.serial_number not in world.revoked_serials()


def test_one_crl_per_live_authority(world: World) -> None:
    old = world.issue()
    world.ca.prepare_authority("x509")
    world.ca.activate_authority("x509")
    new = world.issue()
    world.revocations.revoke("serial", old.serial, reason=1, note="", actor="op")
    world.revocations.revoke("serial", new.serial, reason=1, note="", actor="op")
    crls = world.revocations.crls()
    assert len(crls) == 2
    by_issuer = {
        crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier: {
            e.serial_number for e in crl
        }
        for crl in crls
    }
    assert {old.leaf.serial_number} in by_issuer.values()
    assert {new.leaf.serial_number} in by_issuer.values()


def test_view_resynchronises_from_the_store(world: World) -> None:
    svid = world.issue()
    world.revocations.revoke("serial", svid.serial, reason=1, note="", actor="op")
    replica = Revoker(world.ca, world.store, world.clock)  # a second reader
    assert replica.view.is_revoked(RevocationQuery(serial=svid.serial))
    assert replica.view.synced_at == world.clock.now()

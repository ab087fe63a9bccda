"""Workload SVIDs: matching entries, half-life rotation with jitter, taint, change pushes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from authd.workload.registry import EntryRegistry
from authd.workload.svids import JITTER, ROTATE_AT, SvidProvider, rotation_time
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.keys import KeyStore
from ca.spiffe_id import TrustDomain
from ca.store import RegistrationEntry, Selector, SQLiteStore

UID_1000 = Selector("unix", "uid:1000")
GID_50 = Selector("unix", "gid:50")


class World:
    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock(1_790_000_000)
        self.store = SQLiteStore(tmp / "s.db")
        self.ca = CertificateAuthority(
            trust_domain=TrustDomain("example.org"),
            store=self.store,
            keystore=KeyStore(tmp / "keys"),
            clock=self.clock,
        )
        self.registry = EntryRegistry(self.store, self.clock)
        self.provider = SvidProvider(self.ca, self.registry, self.clock, rng=random.Random(7))

    def entry(self, entry_id: str, path: str, *selectors: Selector, **fields: object) -> None:
        self.store.create_entry(
            RegistrationEntry(
                entry_id=entry_id,
                spiffe_id=f"spiffe://example.org/{path}",
                parent_id="spiffe://example.org/authd",
                selectors=selectors,
                created_at=int(self.clock.now()),
                **fields,  # type: ignore[arg-type]
            )
        )
        self.registry.reload()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.ca.close()
    w.store.close()


def test_a_workload_gets_every_entry_whose_selectors_it_all_has(world: World) -> None:
    world.entry("a", "web", UID_1000)
    world.entry("b", "web-admin", UID_1000, GID_50)
    world.entry("c", "db", Selector("unix", "uid:2000"))
    assert [e.entry_id for e in world.provider.entries_for({UID_1000})] == ["a"]
    both = world.provider.entries_for({UID_1000, GID_50, Selector("unix", "user:web")})
    assert [e.entry_id for e in both] == ["a", "b"]
    assert world.provider.entries_for({GID_50}) == []


def test_expired_entries_grant_nothing(world: World) -> None:
    world.entry("a", "web", UID_1000, expires_at=int(world.clock.now()) + 60)
    assert world.provider.entries_for({UID_1000})
    world.clock.advance(61)
    assert world.provider.entries_for({UID_1000}) == []


def test_svid_is_cached_until_half_life_then_rotated(world: World) -> None:
    world.entry("a", "web", UID_1000, x509_svid_ttl=600)
    entry = world.registry.get("a")
    assert entry is not None
    first = world.provider.x509_svid(entry)
    assert str(first.spiffe_id) == "spiffe://example.org/web"
    assert first.expires_at - world.clock.now() == pytest.approx(600, abs=1)
    assert world.provider.x509_svid(entry) is first
    lifetime = first.expires_at - first.issued_at
    assert first.rotate_at <= first.issued_at + lifetime * ROTATE_AT + 10
    world.clock.set(first.rotate_at - 1)
    assert world.provider.rotate_due() == 0
    version = world.provider.version
    world.clock.set(first.rotate_at)
    assert world.provider.rotate_due() == 1
    assert world.provider.version > version
    second = world.provider.x509_svid(entry)
    assert second.chain[0].serial_number != first.chain[0].serial_number
    assert second.key_der != first.key_der  # a new key, not just a new certificate


def test_rotation_times_are_jittered_within_the_window() -> None:
    rng = random.Random(1)
    times = [rotation_time(0, 1000, rng) for _ in range(200)]
    assert min(times) >= 1000 * (ROTATE_AT - JITTER)
    assert max(times) <= 1000 * ROTATE_AT
    assert len({round(t) for t in times}) > 50  # not all in the same second


def test_svid_encodings_are_what_the_apis_need(world: World) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    world.entry("a", "web", UID_1000, dns_names=("web.local",), hint="internal")
    svid = world.provider.x509_svid(world.registry.get("a"))  # type: ignore[arg-type]
    leaf_der = svid.chain[0].public_bytes(serialization.Encoding.DER)
    assert svid.chain_der.startswith(leaf_der)  # concatenated DER, leaf first
    assert len(svid.chain) == 1  # a self-signed authority: the leaf alone
    assert serialization.load_der_private_key(svid.key_der, None).public_key() == (
        svid.chain[0].public_key()
    )
    assert svid.chain_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert svid.hint == "internal"
    san = svid.chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web.local"]


def test_entry_change_reissues_and_removal_drops(world: World) -> None:
    world.entry("a", "web", UID_1000)
    entry = world.registry.get("a")
    assert entry is not None
    first = world.provider.x509_svid(entry)
    world.store.update_entry(
        RegistrationEntry(
            entry_id="a",
            spiffe_id="spiffe://example.org/web2",
            parent_id=entry.parent_id,
            selectors=entry.selectors,
            created_at=entry.created_at,
        ),
        expected_revision=entry.revision,
    )
    world.registry.reload()
    updated = world.registry.get("a")
    assert updated is not None
    second = world.provider.x509_svid(updated)
    assert str(second.spiffe_id) == "spiffe://example.org/web2"
    assert second is not first
    world.store.delete_entry("a")
    world.registry.reload()
    assert world.provider.entries_for({UID_1000}) == []


def test_taint_reissues_everything_the_authority_signed_at_once(world: World) -> None:
    world.entry("a", "web", UID_1000)
    entry = world.registry.get("a")
    assert entry is not None
    old = world.provider.x509_svid(entry)
    old_authority = world.ca.x509_authority.authority_id
    world.ca.prepare_authority("x509")
    world.ca.activate_authority("x509")
    # Activation alone does not re-issue: SVIDs roll over at their half-life.
    assert world.provider.x509_svid(entry) is old
    version = world.provider.version
    world.ca.taint_authority(old_authority)
    fresh = world.provider.x509_svid(entry)
    assert fresh is not old
    assert fresh.authority_id == world.ca.x509_authority.authority_id != old_authority
    assert world.provider.version > version


def test_wait_for_change_wakes_on_rotation(world: World) -> None:
    world.entry("a", "web", UID_1000, x509_svid_ttl=60)
    entry = world.registry.get("a")
    assert entry is not None
    svid = world.provider.x509_svid(entry)

    async def scenario() -> int:
        version = world.provider.version
        waiter = asyncio.create_task(world.provider.wait_for_change(version))
        await asyncio.sleep(0)
        assert not waiter.done()
        world.clock.set(svid.rotate_at)
        world.provider.rotate_due()
        return await asyncio.wait_for(waiter, timeout=5)

    assert asyncio.run(scenario()) > 0


def test_jwt_svids_are_reused_until_half_life(world: World) -> None:
    world.entry("a", "web", UID_1000, jwt_svid_ttl=300)
    entry = world.registry.get("a")
    assert entry is not None
    first = world.provider.jwt_svid(entry, ["orders"])
    assert world.provider.jwt_svid(entry, ["orders"]) is first
    assert world.provider.jwt_svid(entry, ["billing"]) is not first
    world.clock.advance(151)
    assert world.provider.jwt_svid(entry, ["orders"]).token != first.token


def test_refreshing_one_entry_matches_a_full_reload(world: World) -> None:
    world.entry("a", "web", UID_1000)
    world.entry("b", "db", GID_50)
    entry = world.registry.get("a")
    assert entry is not None
    world.store.update_entry(
        RegistrationEntry(
            entry_id="a",
            spiffe_id="spiffe://example.org/web",
            parent_id=entry.parent_id,
            selectors=(GID_50,),
            created_at=entry.created_at,
        ),
        expected_revision=entry.revision,
    )
    world.registry.refresh("a")
    assert [e.entry_id for e in world.registry.match({GID_50})] == ["a", "b"]
    assert world.registry.match({UID_1000}) == []
    world.store.delete_entry("b")
    world.registry.refresh("b")
    assert [e.entry_id for e in world.registry.match({GID_50})] == ["a"]
    fresh = EntryRegistry(world.store, world.clock)
    assert fresh.match({GID_50}) == world.registry.match({GID_50})


def test_a_revoked_serial_is_replaced_at_once(world: World) -> None:
    from ca.revoker import Revoker

    revocations = Revoker(world.ca, world.store, world.clock)
    provider = SvidProvider(world.ca, world.registry, world.clock, revocations=revocations)
    world.entry("a", "web", UID_1000)
    entry = world.registry.get("a")
    assert entry is not None
    leaked = provider.x509_svid(entry)
    version = provider.version
    revocations.revoke("serial", leaked.serial, reason="key-compromise", note="", actor="t")
    fresh = provider.x509_svid(entry)
    assert fresh.serial != leaked.serial
    assert fresh.key_der != leaked.key_der
    assert provider.version > version

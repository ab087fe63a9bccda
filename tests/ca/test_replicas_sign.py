"""Every replica signs, one leads rotation: CAs on one real Redis, keys wrapped with a shared
KEK, the rotation lease on injected clocks (no waiting for expiry).

The old leader's clock is a separate FakeClock that lags: that is a process paused (GC, a
stopped VM) waking up still believing it leads, the case the fencing token exists for.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca.certificate_authority import CASettings, CertificateAuthority
from ca.clock import FakeClock
from ca.errors import InvalidRequest
from ca.key_wrap import KEK_BYTES, KeyEncryptionKey
from ca.keys import KeyType
from ca.leadership import RotationLeadership
from ca.rotation import ACTIVE, PREPARED
from ca.shared_keystore import SharedKeyStore
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import Fenced, RedisStore
from tests.support.redis_server import RedisServer

TD = TrustDomain("example.org")
WORKLOAD = SpiffeId.parse("spiffe://example.org/workload")
TTL = 15.0
SETTINGS = CASettings(ca_ttl=3600, x509_svid_ttl=600, jwt_svid_ttl=300)
KEK = KeyEncryptionKey(b"\x07" * KEK_BYTES)


@dataclass
class Replica:
    name: str
    store: RedisStore
    clock: FakeClock
    leadership: RotationLeadership
    ca: CertificateAuthority


OpenReplica = Callable[[str, FakeClock], Replica]


@pytest.fixture
def open_replica(redis_server: RedisServer, tmp_path: Path) -> Iterator[OpenReplica]:
    prefix = f"test-{uuid.uuid4().hex}:"
    opened: list[Replica] = []

    def open_one(name: str, clock: FakeClock) -> Replica:
        store = RedisStore(redis_server.url, key_prefix=prefix)
        lease_store = store.rotation_lease()
        leadership = RotationLeadership(lease_store, replica=name, clock=clock, ttl=TTL)
        leadership.tick()
        keystore = SharedKeyStore(
            tmp_path / name / "keys",
            kek=KEK,
            vault=store.wrapped_keys(),
            fence=leadership.fence,
        )
        ca = CertificateAuthority(
            trust_domain=TD,
            store=store,
            keystore=keystore,
            clock=clock,
            settings=SETTINGS,
            fence=leadership.fence,
        )
        opened.append(Replica(name, store, clock, leadership, ca))
        return opened[-1]

    yield open_one
    for replica in opened:
        replica.ca.close()
        replica.store.close()


def issue(replica: Replica) -> list[x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    svid = replica.ca.sign_x509_svid(key.public_key(), spiffe_id=WORKLOAD, requester=replica.name)
    return list(svid.chain)


def test_the_first_replica_leads_and_the_second_follows(open_replica: OpenReplica) -> None:
    clock = FakeClock()
    a, b = open_replica("a", clock), open_replica("b", clock)
    assert a.leadership.fence() == 1
    assert b.leadership.fence() is None
    assert b.leadership.seen is not None and b.leadership.seen.holder == "a"
    assert not b.ca.rotate()  # the follower writes nothing


def test_every_replica_signs_svids_that_verify_against_the_one_bundle(
    open_replica: OpenReplica,
) -> None:
    clock = FakeClock()
    a, b = open_replica("a", clock), open_replica("b", clock)
    assert a.ca.bundle == b.ca.bundle
    for signer in (a, b):
        for verifier in (a, b):
            assert verifier.ca.verify_x509_svid(issue(signer)) == WORKLOAD
        token = signer.ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=["x"]).token
        assert b.ca.verify_jwt_svid(token, ["x"]).spiffe_id == WORKLOAD


def test_the_store_holds_only_wrapped_keys(open_replica: OpenReplica, tmp_path: Path) -> None:
    a = open_replica("a", FakeClock())
    vault = a.store.wrapped_keys()
    for record in a.ca.authorities():
        wrapped = vault.get_wrapped(record.key_ref)
        assert wrapped is not None
        assert KEK.unwrap(wrapped, key_ref=record.key_ref).public_key() is not None
    assert not list((tmp_path / "a" / "keys").iterdir())  # nothing on the replica's disk


def test_when_the_leader_dies_the_lease_expires_and_another_replica_rotates(
    open_replica: OpenReplica,
) -> None:
    clock = FakeClock()
    a, b = open_replica("a", clock), open_replica("b", clock)
    clock.advance(TTL)  # a stopped renewing: it died
    claim = b.leadership.tick()
    assert claim is not None and claim.granted
    assert b.leadership.fence() == 2
    assert a.leadership.fence() is None  # a's own clock says its term is over
    clock.advance(SETTINGS.ca_ttl / 2)
    b.leadership.tick()
    assert b.ca.rotate()
    prepared = [r for r in b.ca.authorities() if r.state == PREPARED]
    assert {r.kind for r in prepared} == {"x509", "jwt"}
    a.ca.reload()
    assert a.ca.bundle == b.ca.bundle
    # The survivor signs with the keys the dead leader made, and then with its own.
    assert b.ca.verify_x509_svid(issue(b)) == WORKLOAD
    clock.advance(SETTINGS.ca_ttl / 3)
    b.leadership.tick()
    assert b.ca.rotate()
    active = {r.authority_id for r in b.ca.authorities() if r.state == ACTIVE}
    assert active == {r.authority_id for r in prepared}
    assert a.ca.verify_x509_svid(issue(b)) == WORKLOAD


def test_a_paused_old_leader_that_wakes_up_cannot_write_over_its_successor(
    open_replica: OpenReplica,
) -> None:
    paused = FakeClock()  # a's clock stands still while it is paused
    clock = FakeClock()
    a, b = open_replica("a", paused), open_replica("b", clock)
    clock.advance(TTL)
    assert b.leadership.tick() is not None and b.leadership.fence() == 2
    before = (a.store.list_authorities(), a.store.position(), a.store.current_sequence("bundle"))
    assert a.leadership.fence() == 1  # it wakes up still believing it leads: its check passes
    with pytest.raises(Fenced, match=r"token 1 is stale.*token 2"):
        a.ca.prepare_authority("x509")
    with pytest.raises(Fenced, match="token 1 is stale"):
        a.store.save_authorities([], sequence="bundle", fence=1)
    with pytest.raises(Fenced, match="token 1 is stale"):
        a.store.wrapped_keys().delete_wrapped(a.ca.authorities()[0].key_ref, fence=1)
    after = (a.store.list_authorities(), a.store.position(), a.store.current_sequence("bundle"))
    assert after == before
    assert all(a.store.wrapped_keys().get_wrapped(r.key_ref) for r in a.ca.authorities())
    paused.advance(TTL)  # its clock catches up: it no longer even tries
    assert a.leadership.fence() is None
    assert not a.ca.rotate()
    # And the successor's writes go through.
    assert b.store.save_authorities([], sequence="bundle", fence=2) is None


def test_operator_steps_are_refused_on_a_replica_without_the_lease(
    open_replica: OpenReplica,
) -> None:
    clock = FakeClock()
    open_replica("a", clock)
    b = open_replica("b", clock)
    with pytest.raises(InvalidRequest, match="does not hold the rotation lease"):
        b.ca.prepare_authority("x509")


def test_a_released_lease_is_taken_over_at_once(open_replica: OpenReplica) -> None:
    clock = FakeClock()
    a, b = open_replica("a", clock), open_replica("b", clock)
    a.leadership.release()
    assert a.leadership.fence() is None
    claim = b.leadership.tick()
    assert claim is not None and claim.granted and b.leadership.fence() == 2


def test_a_replica_with_another_kek_cannot_sign_and_says_why(
    open_replica: OpenReplica, tmp_path: Path
) -> None:
    a = open_replica("a", FakeClock())
    other = SharedKeyStore(
        tmp_path / "other",
        kek=KeyEncryptionKey(b"\x08" * KEK_BYTES),
        vault=a.store.wrapped_keys(),
        fence=lambda: None,
    )
    record = a.ca.authorities()[0]
    with pytest.raises(InvalidRequest, match=r"same ca\.key_encryption_key"):
        other.load(record.key_ref)
    with pytest.raises(Fenced, match="does not hold the rotation lease"):
        other.create(KeyType.EC_P256)

"""The agent's cache: what falls due and what it drops, by an injected clock (no waiting)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authd.agent.cache import AgentCache
from authd.ports.identity_source import WorkloadX509Svid
from ca.bundle import TrustBundle
from ca.clock import FakeClock
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import RegistrationEntry, Selector

START = 1_790_000_000.0
SPIFFE_ID = "spiffe://example.org/svc"


def entry(revision: int = 0) -> RegistrationEntry:
    return RegistrationEntry(
        entry_id="e1",
        spiffe_id=SPIFFE_ID,
        parent_id="spiffe://example.org/node/a",
        selectors=(Selector("unix", "uid:1000"),),
        revision=revision,
    )


def svid(issued_at: float, ttl: float, revision: int = 0) -> WorkloadX509Svid:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc")])
    not_before = datetime.datetime.fromtimestamp(issued_at, datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(seconds=ttl))
        .sign(key, hashes.SHA256())
    )
    return WorkloadX509Svid(
        entry_id="e1",
        entry_revision=revision,
        spiffe_id=SpiffeId.parse(SPIFFE_ID),
        hint="",
        chain=(certificate,),
        private_key=key,
        authority_id="a1",
        issued_at=issued_at,
        expires_at=issued_at + ttl,
        rotate_at=issued_at + ttl / 2,
    )


def cache(clock: FakeClock) -> AgentCache:
    return AgentCache(TrustBundle(TrustDomain("example.org")), clock)


def test_an_entry_without_an_svid_is_due_and_one_is_not_before_its_renewal_time() -> None:
    clock = FakeClock(START)
    agent_cache = cache(clock)
    agent_cache.set_entries([entry()])
    assert [e.entry_id for e in agent_cache.due()] == ["e1"]
    agent_cache.put([svid(START, ttl=3600)])
    assert agent_cache.due() == []
    clock.advance(1799)
    assert agent_cache.due() == []
    clock.advance(1)
    assert [e.entry_id for e in agent_cache.due()] == ["e1"]


def test_a_cached_svid_is_served_through_an_outage_until_it_expires_then_dropped() -> None:
    clock = FakeClock(START)
    agent_cache = cache(clock)
    agent_cache.set_entries([entry()])
    agent_cache.put([svid(START, ttl=3600)])
    clock.advance(3599)  # overdue for renewal, no server: still served
    assert agent_cache.rotate_due() == 0 and agent_cache.svid_count == 1
    assert agent_cache.earliest_expiry() == START + 3600
    clock.advance(1)
    assert agent_cache.rotate_due() == 1 and agent_cache.svid_count == 0
    assert agent_cache.earliest_expiry() is None


def test_an_svid_of_an_older_entry_revision_is_due_at_once() -> None:
    clock = FakeClock(START)
    agent_cache = cache(clock)
    agent_cache.set_entries([entry(revision=0)])
    agent_cache.put([svid(START, ttl=3600, revision=0)])
    agent_cache.set_entries([entry(revision=1)])
    assert [e.entry_id for e in agent_cache.due()] == ["e1"]


def test_an_svid_of_a_distrusted_authority_is_due_at_once() -> None:
    clock = FakeClock(START)
    agent_cache = cache(clock)
    agent_cache.set_entries([entry()])
    issued = svid(START, ttl=3600)
    agent_cache.put([issued])
    agent_cache.set_distrusted([issued.chain[0]])  # self-signed: its own issuer
    assert [e.entry_id for e in agent_cache.due()] == ["e1"]

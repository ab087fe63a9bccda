"""The server's side of agents, without sockets: a real CA on SQLite and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authd.agent.client import make_csr
from authd.nodes.agents import NodeAuthority, NodeRefused
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.errors import InvalidRequest
from ca.keys import KeyStore, KeyType
from ca.revoker import Revoker
from ca.spiffe_id import TrustDomain
from ca.store import AgentRecord, RegistrationEntry, Selector, SQLiteStore

TD = "spiffe://example.org"
NODE_A = f"{TD}/node/a"


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
        self.revoker = Revoker(self.ca, self.store, self.clock)
        self.nodes = NodeAuthority(
            self.ca, self.store, self.revoker, self.clock, agent_svid_ttl=600, join_token_ttl=60
        )

    def entry(self, entry_id: str, path: str, parent: str) -> None:
        self.store.create_entry(
            RegistrationEntry(
                entry_id=entry_id,
                spiffe_id=f"{TD}/{path}",
                parent_id=parent,
                selectors=(Selector("unix", "uid:1000"),),
                created_at=int(self.clock.now()),
            )
        )

    def attest(self, node: str = NODE_A) -> tuple[AgentRecord, list[x509.Certificate]]:
        token, _ = self.nodes.create_join_token(node)
        record, svid = self.nodes.attest_join_token(token, make_csr(KeyType.EC_P256.generate()))
        return record, list(svid.chain)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.ca.close()
    w.store.close()


def csr_for(spiffe_id: str | None) -> bytes:
    return make_csr(KeyType.EC_P256.generate(), spiffe_id)


def test_a_join_token_gives_an_agent_svid_once(world: World) -> None:
    token, expires_at = world.nodes.create_join_token(NODE_A)
    assert expires_at == world.clock.now() + 60
    record, svid = world.nodes.attest_join_token(token, csr_for(None))
    assert record.agent_id == str(svid.spiffe_id) == f"{TD}/authd/agent/join_token/{token}"
    assert record.node_id == NODE_A and record.serial == svid.serial
    with pytest.raises(NodeRefused, match="used already"):
        world.nodes.attest_join_token(token, csr_for(None))


def test_an_expired_join_token_is_refused(world: World) -> None:
    token, _ = world.nodes.create_join_token(NODE_A, ttl=10)
    world.clock.advance(11)
    with pytest.raises(NodeRefused, match="expired"):
        world.nodes.attest_join_token(token, csr_for(None))


def test_an_agent_gets_svids_only_for_its_entries_and_their_spiffe_ids(world: World) -> None:
    world.entry("mine", "web", NODE_A)
    world.entry("theirs", "db", f"{TD}/node/b")
    agent, chain = world.attest()
    assert world.nodes.authenticate(chain) == agent
    assert [e.entry_id for e in world.nodes.entries(agent)] == ["mine"]

    outcome = world.nodes.sign(
        agent,
        [
            ("mine", csr_for(f"{TD}/web")),
            ("theirs", csr_for(f"{TD}/db")),  # another node's entry
            ("mine", csr_for(f"{TD}/db")),  # its entry, someone else's SPIFFE ID
        ],
    )
    assert [(entry_id, str(s.spiffe_id)) for entry_id, s in outcome.signed] == [
        ("mine", f"{TD}/web")
    ]
    assert outcome.refused == {
        "theirs": "not an entry of this agent",
        "mine": f"the CSR names {TD}/db, not the entry's",
    }


def test_an_evicted_agent_is_refused_and_what_it_had_signed_is_revoked(world: World) -> None:
    world.entry("mine", "web", NODE_A)
    agent, chain = world.attest()
    ((_, svid),) = world.nodes.sign(agent, [("mine", csr_for(f"{TD}/web"))]).signed

    assert world.nodes.evict(agent.agent_id, actor="test") == 2
    assert world.revoker.view.contains("serial", svid.serial)
    with pytest.raises(NodeRefused):
        world.nodes.authenticate(chain)
    assert world.store.list_agents() == []


def test_a_banned_agent_stays_listed_and_refused(world: World) -> None:
    agent, chain = world.attest()
    world.nodes.ban(agent.agent_id, actor="test")
    (listed,) = world.nodes.list_agents()
    assert listed.banned
    with pytest.raises(NodeRefused):
        world.nodes.authenticate(chain)


def test_a_workload_svid_is_not_an_agent(world: World) -> None:
    world.entry("mine", "web", NODE_A)
    agent, _ = world.attest()
    ((_, svid),) = world.nodes.sign(agent, [("mine", csr_for(f"{TD}/web"))]).signed
    with pytest.raises(NodeRefused, match="is not an agent"):
        world.nodes.authenticate(list(svid.chain))


def test_a_join_token_for_a_foreign_spiffe_id_is_refused(world: World) -> None:
    with pytest.raises(InvalidRequest, match="trust domain"):
        world.nodes.create_join_token("spiffe://other.org/node")


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.text(max_size=80), csr=st.binary(max_size=200))
def test_any_token_and_csr_bytes_end_in_a_clean_refusal(
    world: World, token: str, csr: bytes
) -> None:
    with pytest.raises((NodeRefused, InvalidRequest)):
        world.nodes.attest_join_token(token, csr)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=100)), max_size=5))
def test_any_sign_request_ends_in_refusals_not_exceptions(
    world: World, requests: list[tuple[str, bytes]]
) -> None:
    agent = AgentRecord(f"{TD}/authd/agent/join_token/x", "join_token", NODE_A, "1", 0, 0)
    outcome = world.nodes.sign(agent, requests)
    assert outcome.signed == []


def test_renewal_gives_a_new_agent_svid_and_records_its_serial(world: World) -> None:
    agent, _ = world.attest()
    world.clock.advance(300)
    svid = world.nodes.renew(agent, csr_for(None))
    assert str(svid.spiffe_id) == agent.agent_id and svid.serial != agent.serial
    assert world.store.get_agent(agent.agent_id).serial == svid.serial


def test_an_agent_mints_jwt_svids_only_for_its_own_entries(world: World) -> None:
    world.entry("mine", "web", NODE_A)
    world.entry("theirs", "db", f"{TD}/node/b")
    agent, _ = world.attest()
    svid = world.nodes.mint_jwt(agent, "mine", ["orders"])
    assert str(svid.spiffe_id) == f"{TD}/web" and list(svid.audience) == ["orders"]
    with pytest.raises(NodeRefused, match="not an entry of this agent"):
        world.nodes.mint_jwt(agent, "theirs", ["orders"])
    with pytest.raises(InvalidRequest, match="audiences"):
        world.nodes.mint_jwt(agent, "mine", [])
    with pytest.raises(InvalidRequest, match="each audience"):
        world.nodes.mint_jwt(agent, "mine", ["x" * 513])

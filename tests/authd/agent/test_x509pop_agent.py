"""An agent attested by x509pop: its ID from its node certificate; banned, it is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import spiffe
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from spiffe.workloadapi.errors import FetchX509SvidError

from tests.support.agents import TRUST_DOMAIN, Agent, Server, wait_until
from tests.support.node_certs import NodePki


@pytest.fixture
def pop_server(workdir: Path) -> Iterator[tuple[Server, NodePki]]:
    pki = NodePki()
    data = workdir / "server" / "data"
    data.mkdir(parents=True)
    ca_path = pki.write_root(workdir / "node-ca.pem")
    server = Server(data, agent_extra=f'x509pop_ca_path = "{ca_path}"')
    server.start()
    try:
        yield server, pki
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()


def test_an_x509pop_agent_serves_the_entries_parented_to_its_fingerprint_id(
    workdir: Path, pop_server: tuple[Server, NodePki], agents: list[Agent]
) -> None:
    server, pki = pop_server
    cert_path, key_path, cert = pki.write_node(workdir, "node-1")
    agent_id = pop_agent_id(cert)
    server.entry(f"spiffe://{TRUST_DOMAIN}/pop-web", agent_id)
    attest = f'x509pop_cert_path = "{cert_path}"\nx509pop_key_path = "{key_path}"'
    agent = Agent(workdir / "a", server, attest)
    agents.append(agent)
    agent.start()

    with spiffe.WorkloadApiClient(socket_path=agent.socket_url) as client:
        assert str(client.fetch_x509_svid().spiffe_id) == f"spiffe://{TRUST_DOMAIN}/pop-web"
    assert [(a["agent_id"], a["method"]) for a in server.agents()] == [(agent_id, "x509pop")]

    # Banned: its SVIDs are revoked, and attesting again with the same certificate fails.
    assert "banned" in server.cli("agent", "ban", agent_id).stdout
    agent.stop()
    # A fresh data dir, no saved SVID: it must attest anew.
    again = Agent(workdir / "again", server, attest)
    agents.append(again)
    again.start(wait=False)
    assert again.wait_exit() == 1
    assert f"agent {agent_id} is banned" in again.logs()


def test_a_node_certificate_of_another_ca_cannot_attest(
    workdir: Path, pop_server: tuple[Server, NodePki], agents: list[Agent]
) -> None:
    server, _ = pop_server
    cert_path, key_path, _ = NodePki("rogue CA").write_node(workdir, "rogue")
    agent = Agent(
        workdir / "rogue-agent",
        server,
        f'x509pop_cert_path = "{cert_path}"\nx509pop_key_path = "{key_path}"',
    )
    agents.append(agent)
    agent.start(wait=False)
    assert agent.wait_exit() == 1
    assert "does not chain to the x509pop CA" in agent.logs()
    assert server.agents() == []


def test_an_evicted_x509pop_agent_attests_again_by_itself(
    workdir: Path, pop_server: tuple[Server, NodePki], agents: list[Agent]
) -> None:
    server, pki = pop_server
    cert_path, key_path, cert = pki.write_node(workdir, "node-2")
    agent_id = pop_agent_id(cert)
    server.entry(f"spiffe://{TRUST_DOMAIN}/pop-db", agent_id)
    agent = Agent(
        workdir / "a", server, f'x509pop_cert_path = "{cert_path}"\nx509pop_key_path = "{key_path}"'
    )
    agents.append(agent)
    agent.start()
    before = fetch_serial(agent)

    server.cli("agent", "evict", agent_id)
    wait_until("the agent to attest again", lambda: "attested again as" in agent.logs())
    after = wait_until("a new SVID", lambda: (s := fetch_serial(agent)) != before and s)
    assert after != before
    assert [a["agent_id"] for a in server.agents()] == [agent_id]


def fetch_serial(agent: Agent) -> int:
    with spiffe.WorkloadApiClient(socket_path=agent.socket_url) as client:
        try:
            return int(client.fetch_x509_svid().cert_chain[0].serial_number)
        except FetchX509SvidError:
            return 0


def pop_agent_id(cert: x509.Certificate) -> str:
    """What SPIRE's x509pop names an agent: the node certificate's SHA-1 fingerprint."""
    fingerprint = cert.fingerprint(hashes.SHA1()).hex()
    return f"spiffe://{TRUST_DOMAIN}/authd/agent/x509pop/{fingerprint}"

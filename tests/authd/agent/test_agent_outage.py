"""Agents ride out a server outage from their cache and renew as soon as it is back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import spiffe

from tests.support.agents import TRUST_DOMAIN, Agent, Server, wait_until

SVID_TTL = 20  # seconds: short, so renewal falls due during the outage
AGENT_SVID_TTL = 40  # seconds: the agents' own SVIDs fall due soon after the server returns


@pytest.fixture
def pair(workdir: Path) -> Iterator[tuple[Server, list[Agent]]]:
    data = workdir / "server" / "data"
    data.mkdir(parents=True)
    server = Server(data, agent_extra=f'svid_ttl = "{AGENT_SVID_TTL}s"')
    server.start()
    started: list[Agent] = []
    try:
        for node in ("a", "b"):
            server.entry(
                f"spiffe://{TRUST_DOMAIN}/svc-{node}", f"spiffe://{TRUST_DOMAIN}/node/{node}",
                "--x509-svid-ttl", f"{SVID_TTL}s",
            )  # fmt: skip
            token = server.join_token(f"spiffe://{TRUST_DOMAIN}/node/{node}")
            agent = Agent(workdir / node, server, f'join_token = "{token}"')
            started.append(agent)
            agent.start()
        yield server, started
    finally:
        for agent in started:
            agent.stop()
        if server.process is not None and server.process.poll() is None:
            server.stop()


def serial(agent: Agent) -> int:
    with spiffe.WorkloadApiClient(socket_path=agent.socket_url) as client:
        return int(client.fetch_x509_svid().cert_chain[0].serial_number)


def test_agents_keep_serving_through_an_outage_and_renew_when_the_server_returns(
    pair: tuple[Server, list[Agent]],
) -> None:
    server, agents = pair
    before = [serial(agent) for agent in agents]

    server.stop()
    for agent in agents:
        # Past the SVID's renewal time (half its life) with no server to renew it.
        wait_until(
            "renewal to fall due during the outage",
            lambda a=agent: a.metrics()["authd_agent_svid_budget_seconds"] < SVID_TTL / 2,
        )
        assert "server unreachable" in agent.logs()
    assert [serial(agent) for agent in agents] == before  # still served, from the cache
    assert all(a.metrics()["authd_agent_cached_svids"] == 1 for a in agents)

    server.start()
    for agent, old in zip(agents, before, strict=True):
        renewed = wait_until("a renewed SVID", lambda a=agent, o=old: serial(a) != o and serial(a))
        assert renewed != old
        assert agent.metrics()["authd_agent_svid_budget_seconds"] > SVID_TTL / 2
        assert "server reachable again" in agent.logs()
    for agent in agents:  # and over the renewed mutual TLS, the agents' own SVIDs renew
        wait_until("the agent SVID renewed", lambda a=agent: "agent SVID renewed" in a.logs())
    renewed = {a.logs().rsplit("agent SVID renewed: serial ", 1)[1].split()[0] for a in agents}
    assert renewed == {str(a["serial"]) for a in server.agents()}

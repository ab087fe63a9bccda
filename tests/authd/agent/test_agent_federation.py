"""An agent hands its workloads the foreign bundles their entries federate with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import spiffe

from tests.support.agents import TRUST_DOMAIN, Agent, Server, wait_until
from tests.support.node_certs import NodePki
from tests.support.ports import free_port


@pytest.fixture
def federating_server(workdir: Path) -> Iterator[tuple[Server, NodePki]]:
    foreign = NodePki("other.test root")
    bootstrap = foreign.write_root(workdir / "other-bundle.pem")
    data = workdir / "server" / "data"
    data.mkdir(parents=True)
    # The endpoint never answers: the bootstrap bundle is what the server trusts.
    server = Server(
        data,
        extra=f"""
[federation]
[[federation.trust_domains]]
trust_domain = "other.test"
bundle_endpoint_url = "https://127.0.0.1:{free_port()}/"
endpoint_spiffe_id = "spiffe://other.test/authd"
bootstrap_bundle = "{bootstrap}"
""",
    )
    server.start()
    try:
        yield server, foreign
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()


def test_a_workload_under_an_agent_gets_the_foreign_bundle_its_entry_federates_with(
    workdir: Path, federating_server: tuple[Server, NodePki], agents: list[Agent]
) -> None:
    server, foreign = federating_server
    node = f"spiffe://{TRUST_DOMAIN}/node/a"
    server.entry(f"spiffe://{TRUST_DOMAIN}/web", node, "--federates-with", "other.test")
    agent = Agent(workdir / "a", server, f'join_token = "{server.join_token(node)}"')
    agents.append(agent)
    agent.start()

    with spiffe.X509Source(socket_path=agent.socket_url, timeout_in_seconds=30) as source:
        other = wait_until(
            "the foreign bundle",
            lambda: source.get_bundle_for_trust_domain(spiffe.TrustDomain("other.test")),
        )
        assert list(other.x509_authorities) == [foreign.root]

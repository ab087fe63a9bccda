"""A server and agents as separate processes: attestation, SVIDs through py-spiffe under each
agent, a used join token refused, eviction revoking what the agent had signed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import spiffe
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe.workloadapi.errors import FetchX509SvidError

from tests.support.agents import TRUST_DOMAIN, Agent, Server, wait_until
from tests.support.daemon import cli_json

WAIT = 30
PEM = Encoding.PEM


def start_agent(workdir: Path, server: Server, agents: list[Agent], name: str, node: str) -> Agent:
    token = server.join_token(f"spiffe://{TRUST_DOMAIN}/node/{node}")
    agent = Agent(workdir / name, server, f'join_token = "{token}"')
    agents.append(agent)
    agent.start()
    return agent


def fetch_svid(agent: Agent) -> spiffe.X509Svid:
    with spiffe.WorkloadApiClient(socket_path=agent.socket_url) as client:
        return client.fetch_x509_svid()


def test_workloads_under_two_agents_get_their_svids_through_py_spiffe(
    workdir: Path, server: Server, agents: list[Agent]
) -> None:
    server.entry(f"spiffe://{TRUST_DOMAIN}/web", f"spiffe://{TRUST_DOMAIN}/node/a")
    server.entry(f"spiffe://{TRUST_DOMAIN}/db", f"spiffe://{TRUST_DOMAIN}/node/b")
    a = start_agent(workdir, server, agents, "a", "a")
    b = start_agent(workdir, server, agents, "b", "b")

    assert str(fetch_svid(a).spiffe_id) == f"spiffe://{TRUST_DOMAIN}/web"
    assert str(fetch_svid(b).spiffe_id) == f"spiffe://{TRUST_DOMAIN}/db"
    listed = server.agents()
    assert sorted(str(x["node_id"]) for x in listed) == [
        f"spiffe://{TRUST_DOMAIN}/node/a",
        f"spiffe://{TRUST_DOMAIN}/node/b",
    ]
    assert all(str(x["agent_id"]).startswith(f"spiffe://{TRUST_DOMAIN}/authd/agent/join_token/")
               for x in listed)  # fmt: skip
    with spiffe.X509Source(socket_path=a.socket_url, timeout_in_seconds=WAIT) as source:
        bundle = source.get_bundle_for_trust_domain(spiffe.TrustDomain(TRUST_DOMAIN))
        assert bundle is not None and bundle.x509_authorities


def test_a_used_join_token_is_refused(workdir: Path, server: Server, agents: list[Agent]) -> None:
    token = server.join_token()
    first = Agent(workdir / "first", server, f'join_token = "{token}"')
    agents.append(first)
    first.start()
    again = Agent(workdir / "again", server, f'join_token = "{token}"')
    agents.append(again)
    again.start(wait=False)

    assert again.wait_exit() == 1
    assert "join token refused: unknown, expired or used already" in again.logs()


def test_agent_metrics_say_how_long_it_can_serve_without_the_server(
    workdir: Path, server: Server, agents: list[Agent]
) -> None:
    server.entry(
        f"spiffe://{TRUST_DOMAIN}/web", f"spiffe://{TRUST_DOMAIN}/node/a", "--x509-svid-ttl", "10m"
    )
    a = start_agent(workdir, server, agents, "a", "a")
    fetch_svid(a)

    metrics = wait_until("metrics", a.metrics)
    assert metrics["authd_agent_cached_svids"] == 1
    assert 0 < metrics["authd_agent_svid_budget_seconds"] <= 600


def test_an_evicted_agents_workloads_are_refused_at_ext_authz_within_a_second(
    workdir: Path, server: Server, agents: list[Agent]
) -> None:
    server.entry(f"spiffe://{TRUST_DOMAIN}/web", f"spiffe://{TRUST_DOMAIN}/node/a")
    server.entry(f"spiffe://{TRUST_DOMAIN}/db", f"spiffe://{TRUST_DOMAIN}/node/b")
    a = start_agent(workdir, server, agents, "a", "a")
    b = start_agent(workdir, server, agents, "b", "b")
    web, db = fetch_svid(a), fetch_svid(b)
    assert server.check(web.cert_chain[0].public_bytes(PEM)) == 200
    assert server.check(db.cert_chain[0].public_bytes(PEM)) == 200
    agent_b = next(x for x in server.agents() if str(x["node_id"]).endswith("/node/b"))

    evicting = server.cli("agent", "evict", str(agent_b["agent_id"])).stdout
    evicted = time.monotonic()
    db_pem = db.cert_chain[0].public_bytes(PEM)
    wait_until("db to be refused", lambda: server.check(db_pem) == 401, timeout=5)
    assert time.monotonic() - evicted < 1.0
    assert evicting.endswith("; 2 SVIDs revoked\n")  # the agent's own and its workload's
    assert server.check(web.cert_chain[0].public_bytes(PEM)) == 200  # the other agent's: still
    assert [x["node_id"] for x in server.agents()] == [f"spiffe://{TRUST_DOMAIN}/node/a"]
    # At its next round agent b hears it, and stops serving what the server no longer vouches for.
    wait_until("agent b to drop its SVIDs", lambda: "dropped 1 cached SVIDs" in b.logs())
    with pytest.raises(FetchX509SvidError):
        fetch_svid(b)
    assert str(fetch_svid(a).spiffe_id) == f"spiffe://{TRUST_DOMAIN}/web"


def test_a_restarted_agent_resumes_with_its_saved_svid_without_a_new_token(
    workdir: Path, server: Server, agents: list[Agent]
) -> None:
    server.entry(f"spiffe://{TRUST_DOMAIN}/web", f"spiffe://{TRUST_DOMAIN}/node/a")
    a = start_agent(workdir, server, agents, "a", "a")
    before = fetch_svid(a)
    key = a.data_dir / "agent" / "svid.key"
    assert key.stat().st_mode & 0o777 == 0o600

    a.stop()
    a.start()  # the same config: its join token is spent

    assert "resuming as spiffe://example.org/authd/agent/join_token/" in a.logs()
    assert fetch_svid(a).spiffe_id == before.spiffe_id
    assert len(server.agents()) == 1


def test_a_workload_under_an_agent_gets_a_jwt_svid_the_server_minted(
    workdir: Path, server: Server, agents: list[Agent]
) -> None:
    server.entry(f"spiffe://{TRUST_DOMAIN}/web", f"spiffe://{TRUST_DOMAIN}/node/a")
    a = start_agent(workdir, server, agents, "a", "a")

    with spiffe.WorkloadApiClient(socket_path=a.socket_url) as client:
        svid = client.fetch_jwt_svid(audience={"orders"})
        assert str(svid.spiffe_id) == f"spiffe://{TRUST_DOMAIN}/web"
        again = client.fetch_jwt_svid(audience={"orders"})
        assert again.token == svid.token  # cached at the agent until half its life
        checked = client.validate_jwt_svid(svid.token, "orders")
        assert str(checked.spiffe_id) == f"spiffe://{TRUST_DOMAIN}/web"


def test_svids_an_agent_holds_from_a_tainted_authority_are_reissued_at_once(
    workdir: Path, server: Server, agents: list[Agent]
) -> None:
    server.entry(f"spiffe://{TRUST_DOMAIN}/web", f"spiffe://{TRUST_DOMAIN}/node/a")
    a = start_agent(workdir, server, agents, "a", "a")
    before = fetch_svid(a).cert_chain[0]
    (old,) = [x for x in cli_json(server, "ca", "show")["authorities"]
              if x["kind"] == "x509" and x["state"] == "active"]  # fmt: skip

    server.cli("authority", "prepare", "--kind", "x509")
    # The prepared authority reaches the agent's bundle before it signs anything: the agent
    # must trust the server's next node API certificate before the server presents it.
    wait_until("the agent to hold the prepared authority", lambda: len(roots(a)) == 2)
    server.cli("authority", "activate", "--kind", "x509")
    server.cli("authority", "taint", "--kind", "x509", "--id", str(old["authority_id"]))

    def reissued() -> x509.Certificate | None:
        leaf = fetch_svid(a).cert_chain[0]
        return leaf if leaf.serial_number != before.serial_number else None

    after = wait_until("the SVID re-issued by the new authority", reissued)
    assert after.issuer == before.issuer  # the same subject (O=authd) ...
    aki = x509.AuthorityKeyIdentifier
    assert (
        after.extensions.get_extension_for_class(aki).value.key_identifier
        != before.extensions.get_extension_for_class(aki).value.key_identifier
    )  # ... but the new key


def roots(agent: Agent) -> list[x509.Certificate]:
    with spiffe.WorkloadApiClient(socket_path=agent.socket_url) as client:
        bundles = client.fetch_x509_bundles()
    bundle = bundles.get_bundle_for_trust_domain(spiffe.TrustDomain(TRUST_DOMAIN))
    return list(bundle.x509_authorities) if bundle is not None else []

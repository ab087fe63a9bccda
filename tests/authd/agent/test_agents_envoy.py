"""Real Envoy sidecars on two agents' SDS sockets: mTLS between workloads of two nodes.

The client sidecar (uid nobody) takes its SVID from agent A's SDS, the server sidecar (a
user made for this module) from agent B's; the server sidecar asks the server's ext_authz,
which sees the client's certificate. Evicting agent A makes the server refuse its client's
requests through Envoy within a second.
"""

from __future__ import annotations

import pwd
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agents import TRUST_DOMAIN, Agent, Server, wait_until
from tests.support.envoy import HOST, EchoUpstream, Envoy, Reply, request
from tests.support.sidecars import (
    NOBODY,
    ServiceUser,
    executable_envoy,
    served_chain,
    start_sidecar,
    xfcc,
)

CLIENT = f"spiffe://{TRUST_DOMAIN}/client"
SERVICE = f"spiffe://{TRUST_DOMAIN}/orders"


@pytest.fixture
def service_user() -> Iterator[ServiceUser]:
    name = f"authd-ag-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        entry = pwd.getpwnam(name)
        yield ServiceUser(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def sidecar_values(agent: Agent, server: Server, app_port: int) -> dict[str, object]:
    return {
        "ADMIN_PORT": 0,
        "WORKLOAD_SOCKET": agent.socket,
        "TRUST_DOMAIN": TRUST_DOMAIN,
        "INBOUND_ADDRESS": HOST,
        "INBOUND_PORT": 0,
        "OUTBOUND_PORT": 0,
        "APP_ADDRESS": HOST,
        "APP_PORT": app_port,
        "PEER_ADDRESS": HOST,
        "PEER_MAX_REQUESTS": 1,  # every request a new handshake, with the current SVIDs
        "AUTHZ_ADDRESS": HOST,
        "AUTHZ_PORT": int(server.grpc_address.rpartition(":")[2]),
        "POLICY": "default",
        "JWT_AUDIENCE": "",
    }


def test_workloads_of_two_agents_talk_mtls_through_envoy_on_the_agents_sds(
    workdir: Path, server: Server, agents: list[Agent], service_user: ServiceUser
) -> None:
    nobody = ServiceUser("nobody", NOBODY, pwd.getpwuid(NOBODY).pw_gid)
    server.entry(CLIENT, f"spiffe://{TRUST_DOMAIN}/node/a", uid=nobody.uid)
    server.entry(SERVICE, f"spiffe://{TRUST_DOMAIN}/node/b", uid=service_user.uid)
    started: dict[str, Agent] = {}
    for node in ("a", "b"):
        token = server.join_token(f"spiffe://{TRUST_DOMAIN}/node/{node}")
        agent = Agent(workdir / node, server, f'join_token = "{token}"')
        agents.append(agent)
        agent.start()
        started[node] = agent
    binary = executable_envoy(workdir / "bin")
    echo = EchoUpstream()
    envoys: list[Envoy] = []
    try:
        orders = start_sidecar(
            "orders", service_user, binary, workdir,
            **sidecar_values(started["b"], server, echo.port),
            SVID_NAME="default", BUNDLE_NAME="ROOTCA", PEER_PORT=9, PEER_SPIFFE_ID=CLIENT,
        )  # fmt: skip
        envoys.append(orders)
        client = start_sidecar(
            "client", nobody, binary, workdir,
            **sidecar_values(started["a"], server, echo.port),
            SVID_NAME=CLIENT, BUNDLE_NAME="ALL",
            PEER_PORT=orders.listener_port("inbound"), PEER_SPIFFE_ID=SERVICE,
        )  # fmt: skip
        envoys.append(client)
        outbound = client.listener_port("outbound")

        def through() -> Reply | None:
            reply = request(outbound, "/orders/1")
            return reply if reply.status == 200 else None

        reply = wait_until("a request through both sidecars", through)
        assert xfcc(reply)["URI"] == CLIENT
        assert served_chain(orders, "default")[0].issuer == served_chain(client, CLIENT)[0].issuer

        agent_a = next(x for x in server.agents() if str(x["node_id"]).endswith("/node/a"))
        server.cli("agent", "evict", str(agent_a["agent_id"]))
        evicted = time.monotonic()
        refused = wait_until("the evicted node's client to be refused",
                             lambda: (r := request(outbound, "/orders/1")).status != 200 and r,
                             timeout=5)  # fmt: skip
        assert time.monotonic() - evicted < 1.0
        assert refused.status == 401  # authd's answer to a revoked credential
    finally:
        for envoy in envoys:
            envoy.stop()
        echo.close()

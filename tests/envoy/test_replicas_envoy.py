"""A real Envoy gateway in front of three authd replicas sharing one private Redis.

The gateway is deploy/envoy/gateway-http.yaml with its ext_authz cluster given the three
replicas' HTTP-mode listeners as endpoints, round robin, so consecutive requests are decided
by every replica in turn. A revocation made on one replica must deny through the gateway,
whichever replica decides, within a second; and when the replicas lose Redis for longer than
``store.max_staleness`` the gateway fails closed (Envoy's ``status_on_error``, 503).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.envoy import (
    ADMIN,
    HOST,
    WEB,
    Authd,
    EchoUpstream,
    Envoy,
    authd_config,
    policy_yaml,
    render,
    request,
    short_tmpdir,
    start_authd,
    start_envoy,
    wait_for,
)
from tests.support.redis_server import RedisServer

MAX_STALENESS = 3  # seconds; store.max_staleness of every replica
PROPAGATION_LIMIT = 1.0  # seconds from `authd revoke` returning to N consecutive denials
CONSECUTIVE = 30  # a multiple of three: round robin gives each replica the same share
AUDIENCE = "gateway"


@dataclass
class Deployment:
    redis: RedisServer
    replicas: list[Authd]
    envoy: Envoy
    port: int  # the gateway listener

    @property
    def signer(self) -> Authd:
        return self.replicas[0]

    def get(self, path: str, token: str | None) -> tuple[int, str]:
        """GET ``path`` through the gateway: (status, authd's reason or "")."""
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        reply = request(self.port, path, headers=headers)
        if reply.status == 200 or not reply.body.startswith(b"{"):
            return reply.status, ""
        return reply.status, str(reply.json()["error"])

    def checks(self, **labels: str) -> list[float]:
        return [replica.checks_total(**labels) for replica in self.replicas]


def replica_config(redis_url: str, *, rotates: bool) -> str:
    return authd_config(extra=f'jwt_svid_audiences = ["{AUDIENCE}"]') + (
        f"\n[ca]\nrotates = {str(rotates).lower()}\n"
        f'\n[store]\nurl = "{redis_url}"\nmax_staleness = "{MAX_STALENESS}s"\n'
    )


def gateway_config(replicas: list[Authd], upstream: EchoUpstream, access_log: Path) -> str:
    """deploy/envoy/gateway-http.yaml, its ext_authz cluster holding every replica."""
    config: dict[str, Any] = yaml.safe_load(
        render(
            "gateway-http.yaml",
            ADMIN_PORT=0,
            LISTEN_ADDRESS=HOST,
            LISTEN_PORT=0,
            UPSTREAM_ADDRESS=HOST,
            UPSTREAM_PORT=upstream.port,
            AUTHZ_ADDRESS=HOST,
            AUTHZ_PORT=replicas[0].http_port,
            AUTHZ_PATH_PREFIX="/check",
            ACCESS_LOG=access_log,
        )
    )
    [cluster] = [
        c for c in config["static_resources"]["clusters"] if c["name"] == "authd_ext_authz"
    ]
    cluster["lb_policy"] = "ROUND_ROBIN"
    cluster["load_assignment"]["endpoints"] = [
        {
            "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": p}}}}
                for p in (replica.http_port for replica in replicas)
            ]
        }
    ]
    return yaml.safe_dump(config, sort_keys=False)


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    tmp = short_tmpdir()
    os.chmod(tmp, 0o755)
    redis = RedisServer(tmp / "redis", appendonly=True).start()
    upstream = EchoUpstream()
    files = {"policy.yaml": policy_yaml("gateway")}
    replicas: list[Authd] = []
    envoy: Envoy | None = None
    try:
        # The rotating replica first: it makes the authorities the others load.
        replicas.append(
            start_authd(tmp / "r1", replica_config(redis.url, rotates=True), files=files)
        )
        with ThreadPoolExecutor(2) as pool:
            followers = [
                pool.submit(
                    start_authd,
                    tmp / f"r{n}",
                    replica_config(redis.url, rotates=False),
                    files=files,
                )
                for n in (2, 3)
            ]
            replicas += [f.result() for f in followers]
        envoy = start_envoy(gateway_config(replicas, upstream, tmp / "access.log"), tmp, "gateway")
        yield Deployment(redis, replicas, envoy, envoy.listener_port("gateway"))
    finally:
        if envoy is not None:
            envoy.stop()
        for replica in replicas:
            replica.stop()
        upstream.close()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_gateway_spreads_checks_over_every_replica(deployment: Deployment) -> None:
    web = deployment.signer.mint_jwt(WEB, AUDIENCE)
    before = deployment.checks(decision="allow")
    assert [deployment.get("/api/orders", web) for _ in range(CONSECUTIVE)] == [
        (200, "")
    ] * CONSECUTIVE
    after = deployment.checks(decision="allow")
    share = [a - b for a, b in zip(after, before, strict=True)]
    assert share == [CONSECUTIVE // 3] * 3, f"allowed checks per replica: {share}"


def test_a_revocation_denies_through_the_gateway_whichever_replica_decides(
    deployment: Deployment,
) -> None:
    web = deployment.signer.mint_jwt(WEB, AUDIENCE)
    assert deployment.get("/api/orders", web) == (200, "")
    before = deployment.checks(reason="revoked")

    deployment.replicas[1].cli("revoke", "spiffe-id", WEB, "--reason", "key-compromise")
    acknowledged = time.monotonic()
    run = 0  # consecutive denials for `revoked`, each from the next replica in turn
    first_of_run = acknowledged
    while run < CONSECUTIVE:
        assert time.monotonic() - acknowledged < 10, f"only {run} consecutive denials"
        if deployment.get("/api/orders", web) == (401, "revoked"):
            if run == 0:
                first_of_run = time.monotonic()
            run += 1
        else:
            run = 0
    propagation = first_of_run - acknowledged
    print(
        f"revocation through the gateway: {CONSECUTIVE} consecutive denials from "
        f"{propagation * 1000:.1f} ms after `authd revoke` returned"
    )
    assert propagation <= PROPAGATION_LIMIT
    share = [a - b for a, b in zip(deployment.checks(reason="revoked"), before, strict=True)]
    assert all(n >= CONSECUTIVE // 3 for n in share), f"revoked denials per replica: {share}"


def test_the_gateway_fails_closed_while_the_replicas_have_lost_redis(
    deployment: Deployment,
) -> None:
    admin = deployment.signer.mint_jwt(ADMIN, AUDIENCE)
    # A revoked SPIFFE ID gets no new token, so mint first, then revoke.
    stale_id = f"{WEB}-lost"
    web = deployment.signer.mint_jwt(stale_id, AUDIENCE)
    deployment.replicas[1].cli("revoke", "spiffe-id", stale_id)
    wait_for("web to be revoked", lambda: deployment.get("/api/orders", web) == (401, "revoked"))
    assert deployment.get("/admin/x", admin) == (200, "")

    stale_before = deployment.checks(reason="revocations_stale")
    pid = int(deployment.redis.client().info("server")["process_id"])
    os.kill(pid, signal.SIGKILL)
    deployment.redis.stop()  # reaps it; the port is kept for the restart
    for _ in range(3):  # one request per replica: the last view decides
        assert deployment.get("/admin/x", admin) == (200, "")
        assert deployment.get("/api/orders", web) == (401, "revoked")
    # Past max_staleness authd answers 503, which Envoy treats as an error: status_on_error.
    wait_for(
        "the gateway to fail closed",
        lambda: [deployment.get("/admin/x", admin)[0] for _ in range(3)] == [503] * 3,
        timeout=MAX_STALENESS + 5,
    )
    assert [deployment.get("/public/a", None)[0] for _ in range(3)] == [503] * 3
    stale = deployment.checks(reason="revocations_stale")
    assert all(a > b for a, b in zip(stale, stale_before, strict=True)), "authd said stale"

    deployment.redis.start()
    wait_for(
        "every replica back",
        lambda: [deployment.get("/admin/x", admin)[0] for _ in range(3)] == [200] * 3,
    )
    assert [deployment.get("/api/orders", web) for _ in range(3)] == [(401, "revoked")] * 3

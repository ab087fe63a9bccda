"""Real Envoy sidecars in mTLS with SVIDs signed by two different replicas.

Two `authd run` replicas share one private Redis and a key-encryption key, so both sign
(see README "High availability"). The orders sidecar presents an SVID minted on the rotation
leader and asks the other replica's ext_authz; the web sidecar presents an SVID minted on the
replica that does not lead. Envoy's SPIFFE validation accepts each with the bundle of the
other replica, and the call is decided on the follower from the verified peer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ca.key_wrap import KeyEncryptionKey
from tests.support.envoy import (
    HOST,
    ORDERS,
    TRUST_DOMAIN,
    WEB,
    Authd,
    EchoUpstream,
    authd_config,
    policy_yaml,
    render,
    request,
    start_authd,
    start_envoy,
)
from tests.support.redis_server import RedisServer


@dataclass
class Pair:
    leader: Authd
    follower: Authd


def gauge(replica: Authd, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", replica.metrics(), re.MULTILINE)
    assert match is not None, f"no {name}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def pair(tmp: Path) -> Iterator[Pair]:
    kek = tmp / "kek"
    fd = os.open(kek, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, KeyEncryptionKey.generate())
    os.close(fd)
    redis = RedisServer(tmp / "redis").start()
    files = {"policy.yaml": policy_yaml("orders")}
    started: list[Authd] = []
    try:
        for name in ("r1", "r2"):  # r1 first: it takes the lease and makes the authorities
            config = authd_config() + (
                f'\n[ca]\nrotates = true\nkey_encryption_key = "{kek}"\n'
                f'\n[store]\nurl = "{redis.url}"\n'
            )
            started.append(start_authd(tmp / name, config, files=files))
        yield Pair(*started)
    finally:
        for replica in started:
            replica.stop()
        redis.stop()


def sidecar(pair_authz: Authd, cert_dir: Path, *, peer_port: int, peer_id: str, app: int,
            policy: str, log: Path) -> str:  # fmt: skip
    return render(
        "sidecar-grpc.yaml",
        ADMIN_PORT=0,
        CERT_DIR=cert_dir,
        TRUST_DOMAIN=TRUST_DOMAIN,
        INBOUND_ADDRESS=HOST,
        INBOUND_PORT=0,
        APP_ADDRESS=HOST,
        APP_PORT=app,
        OUTBOUND_PORT=0,
        PEER_ADDRESS=HOST,
        PEER_PORT=peer_port,
        PEER_SPIFFE_ID=peer_id,
        AUTHZ_ADDRESS=HOST,
        AUTHZ_PORT=pair_authz.grpc_port,
        ACCESS_LOG=log,
        POLICY=policy,
        JWT_AUDIENCE=policy,
    )


def test_sidecars_with_svids_of_either_replica_complete_mtls(
    pair: Pair, upstream: EchoUpstream, tmp: Path
) -> None:
    assert gauge(pair.leader, "authd_rotation_leader") == 1
    assert gauge(pair.follower, "authd_rotation_leader") == 0
    orders_dir = pair.leader.mint_x509(ORDERS, tmp / "orders-svid")
    web_dir = pair.follower.mint_x509(WEB, tmp / "web-svid")
    assert (orders_dir / "bundle.pem").read_text() == (web_dir / "bundle.pem").read_text()
    orders = start_envoy(
        sidecar(pair.follower, orders_dir, peer_port=upstream.port, peer_id=WEB,
                app=upstream.port, policy="orders", log=tmp / "orders.log"),
        tmp, name="orders",
    )  # fmt: skip
    try:
        web = start_envoy(
            sidecar(pair.leader, web_dir, peer_port=orders.listener_port("inbound"),
                    peer_id=ORDERS, app=upstream.port, policy="web", log=tmp / "web.log"),
            tmp, name="web",
        )  # fmt: skip
        try:
            reply = request(web.listener_port("outbound"), "/orders/7")
            assert reply.status == 200, reply.body
            assert reply.upstream.one("x-authd-caller") == WEB
            denied = request(web.listener_port("outbound"), "/admin/users")
            assert denied.status == 403
        finally:
            web.stop()
    finally:
        orders.stop()

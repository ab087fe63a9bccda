"""The shipped gateway configs normalise the path before authd is asked, on both transports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.envoy import (
    Authd,
    EchoUpstream,
    authd_config,
    gateway_config,
    policy_yaml,
    request,
    start_authd,
    start_envoy,
)


@pytest.fixture(scope="module")
def authd(tmp: Path) -> Iterator[Authd]:
    daemon = start_authd(
        tmp / "authd", authd_config(), files={"policy.yaml": policy_yaml("gateway")}
    )
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module", params=["grpc", "http"])
def gateway_port(
    request: pytest.FixtureRequest, authd: Authd, upstream: EchoUpstream, tmp: Path
) -> Iterator[int]:
    mode = request.param
    config = gateway_config(mode, authd, upstream, tmp / f"{mode}.access.log")
    envoy = start_envoy(config, tmp, name=f"paths-{mode}")
    yield envoy.listener_port("gateway")
    envoy.stop()


def test_dot_segments_are_removed_before_the_check(gateway_port: int) -> None:
    reply = request(gateway_port, "/public/../api/orders")
    assert reply.status == 401  # asked about /api/orders, not about /public/...


def test_escaped_slash_is_rejected_by_envoy(gateway_port: int, upstream: EchoUpstream) -> None:
    before = len(upstream.seen)
    for path in ("/public/..%2fapi/orders", "/public/..%2Fapi/orders", "/public/..%5capi/x"):
        assert request(gateway_port, path).status == 400, path
    assert len(upstream.seen) == before


def test_repeated_slashes_are_merged_and_the_upstream_sees_the_checked_path(
    gateway_port: int,
) -> None:
    reply = request(gateway_port, "//public///x")
    assert reply.status == 200
    assert reply.upstream.path == "/public/x"

"""A signed OPA bundle from a bundle server decides through real Envoy, configured the way an
operator runs OPA-Envoy (an OPA config file with services, bundles, keys and the plugin).

A tampered update is refused with one log line and the old decision stands; the bundle
server going away changes nothing; when it returns with a good bundle, that one activates.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.envoy import (
    Authd,
    EchoUpstream,
    authd_config,
    gateway_config,
    request,
    start_authd,
    start_envoy,
    wait_for,
)
from tests.support.opa_bundles import (
    BundleServer,
    SigningKey,
    policy_files,
    signatures,
    signed_bundle,
    tar_gz,
)

OPA_CONFIG = """\
services:
  bundles:
    url: {url}
bundles:
  authz:
    service: bundles
    resource: bundles/authz.tar.gz
    polling:
      min_delay_seconds: 0.2
      max_delay_seconds: 0.3
    signing:
      keyid: global_key
keys:
  global_key:
    algorithm: ES256
    key: |
{key}
plugins:
  envoy_ext_authz_grpc:
    path: envoy/authz/allow
    enable-reflection: false
decision_logs:
  console: true
"""


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("global_key", "ES256")


@pytest.fixture(scope="module")
def server(key: SigningKey) -> Iterator[BundleServer]:
    server = BundleServer()
    server.publish(signed_bundle(policy_files(["/public"], revision="r1"), key), '"r1"')
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(
    server: BundleServer, key: SigningKey, upstream: EchoUpstream, tmp: Path
) -> Iterator[tuple[Authd, int]]:
    pem = "\n".join("      " + line for line in key.public_pem.strip().splitlines())
    config = authd_config(policy_file="", extra='opa_config = "opa.yaml"')
    config = config.replace('policy_engine = "rules"\n', "")  # the OPA file says: a bundle
    authd = start_authd(
        tmp / "authd",
        config,
        files={"opa.yaml": OPA_CONFIG.format(url=server.url, key=pem)},
    )
    try:
        envoy = start_envoy(gateway_config("grpc", authd, upstream, tmp / "access.log"), tmp)
        try:
            yield authd, envoy.listener_port("gateway")
        finally:
            envoy.stop()
    finally:
        authd.stop()


def _status(port: int, path: str) -> int:
    return request(port, path).status


def _log_lines(authd: Authd, text: str) -> list[str]:
    return [line for line in authd.stderr_path.read_text().splitlines() if text in line]


def _polls_after(server: BundleServer, count: int) -> None:
    seen = len(server.requests)
    wait_for(f"{count} more polls", lambda: len(server.requests) >= seen + count or None)


def test_the_bundle_decides_then_survives_tampering_and_an_outage(
    gateway: tuple[Authd, int], server: BundleServer, key: SigningKey
) -> None:
    authd, port = gateway
    assert _status(port, "/public") == 200
    assert _status(port, "/admin") == 403
    assert _log_lines(authd, "activated revision 'r1' (signed)")

    # A tampered update: /admin added to the data, the r1-era signature kept.
    opened = policy_files(["/public", "/admin"], revision="r2")
    honest = policy_files(["/public"], revision="r2")
    server.publish(tar_gz({**opened, "/.signatures.json": signatures(honest, key)}), '"r2"')
    _polls_after(server, 3)
    assert _status(port, "/admin") == 403
    assert _status(port, "/public") == 200
    refused = _log_lines(authd, "refused the bundle")
    assert len(refused) == 1, refused
    assert "digest mismatch" in refused[0] and "keeping revision 'r1'" in refused[0]
    assert authd.counter("authd_bundle_polls_total", kind="refused") >= 3
    assert authd.counter("authd_bundle_polls_total", kind="activated") == 1

    # The bundle server goes away: nothing changes.
    server.stop()
    wait_for("a failed poll", lambda: _log_lines(authd, "download failed") or None)
    assert _status(port, "/public") == 200
    assert _status(port, "/admin") == 403
    assert len(_log_lines(authd, "download failed")) == 1
    assert authd.counter("authd_bundle_polls_total", kind="failed") >= 1

    # It returns with a good bundle that opens /admin: that one activates.
    server.publish(signed_bundle(opened, key), '"r3"')
    server.restart()
    wait_for("the r3 bundle to decide", lambda: _status(port, "/admin") == 200 or None)
    assert _status(port, "/public") == 200
    assert _log_lines(authd, "server reachable again")


def test_enable_reflection_false_in_the_opa_file_turns_reflection_off(
    gateway: tuple[Authd, int],
) -> None:
    authd, port = gateway
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(f"127.0.0.1:{authd.grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert _status(port, "/public") == 200  # Check itself is served

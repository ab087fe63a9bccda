"""The gateway's gRPC checks again, with authd serving them through grpc.aio.

authd's default gRPC engine is its own HTTP/2 server (``authz.grpc_engine = "native"``),
which test_envoy_gateway.py exercises; ``"grpcio"`` must behave the same behind Envoy. The
tests are test_envoy_gateway.py's own, collected again here with this module's fixtures: an
authd on the grpcio engine and the gRPC gateway config only (``tokens`` is the gateway
module's fixture, minting from this module's authd).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.envoy.harness import (
    Authd,
    EchoUpstream,
    api_keys_toml,
    authd_config,
    policy_yaml,
    start_authd,
    start_envoy,
)
from tests.envoy.test_envoy_gateway import (  # noqa: F401 - collected here with these fixtures
    Gateway,
    gateway_config,
    test_access_log_carries_authd_decision_id_on_allow_and_deny,
    test_allowed_request_carries_verified_caller_and_no_credentials_upstream,
    test_client_sent_identity_headers_are_replaced_by_verified_ones,
    test_grpc_context_extensions_select_rule_set_and_jwt_audience,
    test_jwt_svid_with_tampered_claims_is_401_invalid_token,
    test_known_caller_not_allowed_is_403_with_json_reason,
    test_no_credentials_is_401_with_www_authenticate_and_json_reason,
    test_request_body_reaches_upstream_intact,
    tokens,
)


@pytest.fixture(scope="module")
def authd(tmp: Path) -> Iterator[Authd]:
    extra = (
        'grpc_engine = "grpcio"\njwt_svid_audiences = ["gateway"]\napi_keys_file = "api-keys.toml"'
    )
    files = {"policy.yaml": policy_yaml("gateway"), "api-keys.toml": api_keys_toml()}
    daemon = start_authd(tmp / "d", authd_config(extra=extra), files=files)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def gateway(authd: Authd, upstream: EchoUpstream, tmp: Path) -> Iterator[Gateway]:
    access_log = tmp / "gateway-grpcio.access.log"
    envoy = start_envoy(
        gateway_config("grpc", authd, upstream, access_log), tmp, name="gateway-grpcio"
    )
    yield Gateway("grpc", envoy, envoy.listener_port("gateway"), access_log)
    envoy.stop()


def test_this_authd_serves_grpc_with_grpcio(authd: Authd) -> None:
    assert "(grpcio engine)" in authd.stderr_path.read_text()

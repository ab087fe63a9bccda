"""A native-only sidecar against an authd with `[xds] native_only` off: it denies everything.

That authd hands some requests to ext_authz (``extauthz:`` actions, RBAC ``ALLOW``), which a
sidecar without ext_authz would let through. It serves its rules filter as ``authd.rbac``,
not ``authd.rbac.native_only``, so deploy/envoy/sidecar-rbac-only.yaml finds no config of
its name and keeps its deny-all default: fail closed, even for a caller the rules allow, and
`authd xds status` names the filter it does not serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.envoy import (
    WEB,
    Authd,
    EchoUpstream,
    Envoy,
    authd_config,
    mtls_context,
    policy_yaml,
    request,
    start_authd,
    wait_for,
)
from tests.support.rbac import (
    NATIVE_ONLY_FILTER_NAME,
    applied_version,
    rbac_only_sidecar,
    xds_status,
)


@pytest.fixture(scope="module")
def authd(tmp: Path) -> Iterator[Authd]:
    config = authd_config() + "\n[xds]\nenabled = true\n"
    daemon = start_authd(tmp / "d", config, files={"policy.yaml": policy_yaml("orders")})
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def sidecar(authd: Authd, upstream: EchoUpstream, tmp: Path) -> Iterator[Envoy]:
    envoy = rbac_only_sidecar(
        tmp / "envoy",
        cert_dir=authd.mint_x509(WEB, tmp / "web"),
        workload_socket=authd.data_dir / "workload.sock",
        app_port=upstream.port,
        access_log=tmp / "access.log",
    )
    try:
        # Its one filter's stream is open (authd answers it nothing: no config of the name).
        wait_for(
            "authd to see the sidecar's stream",
            lambda: any(
                n["resource_names"] == [NATIVE_ONLY_FILTER_NAME] for n in xds_status(authd)["nodes"]
            ),
        )
        yield envoy
    finally:
        envoy.stop()


def test_a_native_only_sidecar_finds_no_config_and_denies_everything(
    authd: Authd, sidecar: Envoy, tmp: Path
) -> None:
    port = sidecar.listener_port("inbound")
    # web may GET /orders/* by the rules; here nothing serves the rules filter's name.
    assert request(port, "/orders/7", context=mtls_context(tmp / "web")).status == 403
    assert applied_version(sidecar, NATIVE_ONLY_FILTER_NAME) == ""
    status = wait_for(
        "authd to see the sidecar's streams",
        lambda: (s := xds_status(authd))["unserved_filters"] and s,
    )
    assert list(status["unserved_filters"].values()) == [[NATIVE_ONLY_FILTER_NAME]]
    assert "does not serve" in authd.cli("xds", "status").stdout

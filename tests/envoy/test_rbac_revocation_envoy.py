"""Revocation through the revocation filter, at 10, 1,000 and 10,000 callers, real Envoy.

One authd (``[xds] enabled``) and one sidecar from deploy/envoy/sidecar-rbac.yaml. For each
size the policy gets one rule per caller; then one caller is revoked. The revoked caller must
be refused natively (authd's ``authd_checks_total`` does not move), the rules filter must not
be recompiled nor pushed again (its version stays), and what is pushed must be the
revocation filter alone, the same bytes whatever the policy's size. (How fast it is enforced
is measured by bench/rbac_native.py, not asserted here.)
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from authd.xds.revoked_filter import compile_revoked
from tests.support.envoy import (
    WEB,
    Authd,
    EchoUpstream,
    Envoy,
    authd_config,
    mtls_context,
    request,
    start_authd,
    wait_for,
)
from tests.support.rbac import (
    FILTER_NAME,
    REVOKED_FILTER_NAME,
    applied_version,
    config_bytes,
    rbac_sidecar,
    served_version,
)
from tests.support.rbac_rules import MANY_CALLER, many_callers_policy

SIZES = (10, 1_000, 10_000)


def in_step(authd: Authd, envoy: Envoy, name: str) -> bool:
    version = served_version(authd, name)
    return bool(version) and applied_version(envoy, name) == version


@pytest.fixture(scope="module")
def authd(tmp: Path) -> Iterator[Authd]:
    daemon = start_authd(
        tmp / "d",
        authd_config() + "\n[xds]\nenabled = true\n",
        files={"policy.yaml": many_callers_policy(1)},
    )
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def svids(authd: Authd, tmp: Path) -> dict[str, Path]:
    ids = {"web": WEB, "first": MANY_CALLER.format(0)}
    ids |= {str(size): MANY_CALLER.format(size - 1) for size in SIZES}
    with ThreadPoolExecutor(len(ids)) as pool:
        futures = {n: pool.submit(authd.mint_x509, i, tmp / n) for n, i in ids.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def sidecar(
    authd: Authd, svids: dict[str, Path], upstream: EchoUpstream, tmp: Path
) -> Iterator[Envoy]:
    envoy = rbac_sidecar(
        tmp / "envoy",
        cert_dir=svids["web"],
        workload_socket=authd.data_dir / "workload.sock",
        app_port=upstream.port,
        authz_port=authd.grpc_port,
        policy="s",
        access_log=tmp / "access.log",
    )
    try:
        wait_for("the revocation filter", lambda: in_step(authd, envoy, REVOKED_FILTER_NAME))
        yield envoy
    finally:
        envoy.stop()


REVOKED: list[str] = []  # across the sizes, in order (module-scoped daemon)


@pytest.mark.parametrize("size", SIZES)
def test_a_revocation_pushes_only_the_revocation_filter(
    authd: Authd, sidecar: Envoy, svids: dict[str, Path], size: int
) -> None:
    old = served_version(authd)
    (authd.data_dir / "policy.yaml").write_text(many_callers_policy(size))
    wait_for("authd to recompile", lambda: served_version(authd) not in ("", old), timeout=120)
    wait_for("Envoy to apply the rules", lambda: in_step(authd, sidecar, FILTER_NAME), timeout=120)
    rules = served_version(authd)
    port = sidecar.listener_port("inbound")
    context = mtls_context(svids[str(size)])
    assert request(port, "/orders/7", context=context).status == 200

    caller = MANY_CALLER.format(size - 1)
    authd.cli("revoke", "spiffe-id", caller, "--reason", "key-compromise")
    REVOKED.append(caller)
    before = authd.checks_total()
    wait_for(
        "the revocation to reach Envoy",
        lambda: request(port, "/orders/7", context=context).status == 403,
    )
    assert authd.checks_total() == before  # refused natively: no ext_authz call
    wait_for("the ACK", lambda: in_step(authd, sidecar, REVOKED_FILTER_NAME))
    # The rules filter was neither recompiled nor pushed; the push is the revocation filter,
    # exactly the bytes of the revoked IDs alone, whatever the size of the policy.
    assert served_version(authd) == rules == applied_version(sidecar)
    expected = compile_revoked(REVOKED, filter_name=REVOKED_FILTER_NAME)
    assert served_version(authd, REVOKED_FILTER_NAME) == expected.version
    assert config_bytes(authd, REVOKED_FILTER_NAME) == len(expected.payload)
    # A caller not revoked is allowed as before, natively.
    assert request(port, "/orders/7", context=mtls_context(svids["first"])).status == 200
    assert authd.checks_total() == before

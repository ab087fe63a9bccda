"""The native fast path through a real Envoy: RBAC over ECDS from `authd run`, ext_authz behind.

One authd (``[xds] enabled``) and one sidecar from deploy/envoy/sidecar-rbac.yaml. Whether a
request was decided natively is read from authd's own ``authd_checks_total``: a request
Envoy's RBAC decided never reaches ext_authz, so that counter does not move.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.envoy import (
    ADMIN,
    INTRUDER,
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
    REVOKED_FILTER_NAME,
    applied_version,
    config_bytes,
    in_step,
    rbac_sidecar,
    served_version,
)

POLICY = """\
version: 1
default_rule_set: orders
rule_sets:
  orders:
    rules:
      - name: web-reads-orders
        effect: allow
        methods: [GET]
        paths: ["/orders", "/orders/{id}"]
        callers: ["spiffe://example.org/web"]
      - name: prod-reads
        effect: allow
        methods: [GET]
        callers: ["spiffe://example.org/ns/prod/*"]
      - name: admin-anything
        effect: allow
        callers: ["spiffe://example.org/admin"]
      - name: admin-never-deletes
        effect: deny
        methods: [DELETE]
        callers: ["spiffe://example.org/admin"]
      - name: web-reports-for-acme
        effect: allow
        paths: ["/reports"]
        callers: ["spiffe://example.org/web"]
        headers: {x-tenant: acme}
"""

PROD_API = "spiffe://example.org/ns/prod/api"
UPDATED = POLICY.replace('paths: ["/orders", "/orders/{id}"]', 'paths: ["/orders/*", "/stock"]')


@pytest.fixture(scope="module")
def config_text() -> str:
    return authd_config() + "\n[xds]\nenabled = true\n"


@pytest.fixture(scope="module")
def authd(tmp: Path, config_text: str) -> Iterator[Authd]:
    daemon = start_authd(tmp / "d", config_text, files={"policy.yaml": POLICY})
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def svids(authd: Authd, tmp: Path) -> dict[str, Path]:
    ids = {"web": WEB, "admin": ADMIN, "intruder": INTRUDER, "prod": PROD_API}
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
        policy="orders",
        access_log=tmp / "access.log",
    )
    try:
        wait_for("the sidecar to apply authd's RBAC config", lambda: in_step(authd, envoy))
        yield envoy
    finally:
        envoy.stop()


def call(envoy: Envoy, svids: dict[str, Path], who: str, path: str, **kwargs: object) -> int:
    port = envoy.listener_port("inbound")
    return request(port, path, context=mtls_context(svids[who]), **kwargs).status  # type: ignore[arg-type]


def test_a_native_allow_never_reaches_ext_authz(
    authd: Authd, sidecar: Envoy, svids: dict[str, Path], upstream: EchoUpstream
) -> None:
    before = authd.checks_total()
    port = sidecar.listener_port("inbound")
    reply = request(
        port,
        "/orders/7?expand=1",
        context=mtls_context(svids["web"]),
        headers={"x-authd-caller": "spiffe://example.org/admin"},
    )
    assert reply.status == 200
    assert call(sidecar, svids, "web", "/orders") == 200
    assert call(sidecar, svids, "admin", "/anything", method="POST") == 200
    assert call(sidecar, svids, "prod", "/anything") == 200  # below a caller prefix
    assert authd.checks_total() == before
    # A caller's own copy of authd's upstream header never reaches the app.
    assert reply.upstream.values("x-authd-caller") == []


def test_native_denies_never_reach_ext_authz(
    authd: Authd, sidecar: Envoy, svids: dict[str, Path]
) -> None:
    before = authd.checks_total()
    assert call(sidecar, svids, "web", "/orders", method="POST") == 403  # no rule matches
    assert call(sidecar, svids, "web", "/orders/7/items") == 403  # {id} is one segment
    assert call(sidecar, svids, "admin", "/orders/7", method="DELETE") == 403  # deny wins
    assert call(sidecar, svids, "intruder", "/orders") == 403  # named by no rule
    assert call(sidecar, svids, "prod", "/anything", method="POST") == 403
    assert authd.checks_total() == before


def test_a_rule_envoy_cannot_decide_goes_to_ext_authz(
    authd: Authd, sidecar: Envoy, svids: dict[str, Path]
) -> None:
    before = authd.checks_total()
    assert call(sidecar, svids, "web", "/reports", headers={"x-tenant": "acme"}) == 200
    assert call(sidecar, svids, "web", "/reports", headers={"x-tenant": "evil"}) == 403
    assert authd.checks_total() == before + 2


def test_a_path_that_may_normalise_differently_goes_to_ext_authz(
    authd: Authd, sidecar: Envoy, svids: dict[str, Path]
) -> None:
    before = authd.checks_total()
    # Envoy's normalize_path decodes unreserved escapes itself (%37 is "7"): native.
    assert call(sidecar, svids, "web", "/orders/%37") == 200
    assert authd.checks_total() == before
    # Any escape left in the path is for authd, which normalises as the rules expect.
    assert call(sidecar, svids, "web", "/orders/a%20b") == 200
    assert call(sidecar, svids, "web", "/orders/a%2Cb/c") == 403
    assert authd.checks_total() == before + 2


def test_a_credential_header_goes_to_ext_authz(
    authd: Authd, sidecar: Envoy, svids: dict[str, Path]
) -> None:
    before = authd.checks_total()
    status = call(sidecar, svids, "web", "/orders/7", headers={"authorization": "Bearer x.y.z"})
    assert status == 401  # authd saw the bad token: Envoy alone would have allowed
    assert authd.checks_total() == before + 1


def test_operators_see_where_rules_run_and_which_envoys_are_in_step(
    authd: Authd, sidecar: Envoy
) -> None:
    explain = json.loads(authd.cli("policy", "explain", "--json").stdout)
    runs = {rule["rule"]: rule["runs"] for rule in explain["rules"]}
    assert runs["web-reads-orders"] == "native"
    assert runs["web-reports-for-acme"] == "ext_authz"
    assert explain["enabled"] and explain["version"] == served_version(authd)
    status = json.loads(authd.cli("xds", "status", "--json").stdout)
    # One stream per filter: the rules and the revocation filter, each in step.
    nodes = {tuple(node["resource_names"]): node for node in status["nodes"]}
    assert set(nodes) == {("authd.rbac",), (REVOKED_FILTER_NAME,)}
    assert {n["state"] for n in nodes.values()} == {"in step"}
    assert {n["lag_seconds"] for n in nodes.values()} == {0}
    rules = nodes[("authd.rbac",)]
    assert rules["acked_version"] == status["version"] == applied_version(sidecar)
    revoked = nodes[(REVOKED_FILTER_NAME,)]
    assert revoked["acked_version"] == applied_version(sidecar, REVOKED_FILTER_NAME)
    assert revoked["acked_version"] == served_version(authd, REVOKED_FILTER_NAME)
    assert {r["filter_name"] for r in status["resources"]} == {"authd.rbac", REVOKED_FILTER_NAME}
    assert status["missing_filters"] == {}
    text = authd.cli("xds", "status").stdout
    assert "in step" in text and REVOKED_FILTER_NAME in text


def test_a_policy_update_is_enforced(authd: Authd, sidecar: Envoy, svids: dict[str, Path]) -> None:
    old = served_version(authd)
    (authd.data_dir / "policy.yaml").write_text(UPDATED)
    wait_for("authd to recompile", lambda: served_version(authd) not in ("", old))
    wait_for("the sidecar to apply it", lambda: in_step(authd, sidecar))
    before = authd.checks_total()
    assert call(sidecar, svids, "web", "/stock") == 200
    assert call(sidecar, svids, "web", "/orders/7/items") == 200  # now "/orders/*"
    assert authd.checks_total() == before


def test_a_revoked_spiffe_id_is_refused_natively(
    authd: Authd, sidecar: Envoy, svids: dict[str, Path]
) -> None:
    assert call(sidecar, svids, "admin", "/anything") == 200
    rules = served_version(authd)
    authd.cli("revoke", "spiffe-id", ADMIN, "--reason", "key-compromise")
    before = authd.checks_total()
    wait_for(
        "the revocation to reach Envoy",
        lambda: call(sidecar, svids, "admin", "/anything") == 403,
    )
    assert authd.checks_total() == before
    # Only the revocation filter changed: the rules filter was not recompiled nor pushed.
    assert served_version(authd) == rules == applied_version(sidecar)
    assert applied_version(sidecar, REVOKED_FILTER_NAME) == served_version(
        authd, REVOKED_FILTER_NAME
    )
    assert 0 < config_bytes(authd, REVOKED_FILTER_NAME) < config_bytes(authd)
    gauge = next(
        line for line in authd.metrics().splitlines() if line.startswith("authd_xds_revocation_")
    )
    assert float(gauge.split()[-1]) == config_bytes(authd, REVOKED_FILTER_NAME)
    assert call(sidecar, svids, "web", "/stock") == 200  # everyone else as before


def test_envoy_keeps_enforcing_without_authd_and_catches_up(
    authd: Authd, sidecar: Envoy, svids: dict[str, Path], tmp: Path, config_text: str
) -> None:
    authd.stop()
    assert call(sidecar, svids, "web", "/stock") == 200  # the last config, natively
    assert call(sidecar, svids, "web", "/stock", method="POST") == 403
    (authd.data_dir / "policy.yaml").write_text(POLICY)  # /stock no longer allowed
    log = authd.data_dir / "stdout.log"
    shutil.copy(log, tmp / "first-run.log")
    again = start_authd(authd.data_dir, config_text)
    try:
        wait_for("the sidecar to catch up", lambda: in_step(again, sidecar))
        before = again.checks_total()
        assert call(sidecar, svids, "web", "/stock") == 403
        assert call(sidecar, svids, "web", "/orders/7") == 200
        assert again.checks_total() == before
    finally:
        again.stop()

"""Native-only mode through a real Envoy: `[xds] native_only`, no ext_authz in the chain.

One authd (``[xds] enabled``, ``native_only``) and one sidecar from
deploy/envoy/sidecar-rbac-only.yaml (one RBAC filter over ECDS, revocations in it, no
ext_authz filter). What ext_authz would have decided is denied in Envoy; authd's
``authd_checks_total`` never moves, as nothing can reach it.
"""

from __future__ import annotations

import json
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
    access_log_entry,
    authd_config,
    mtls_context,
    request,
    start_authd,
    wait_for,
)
from tests.support.idp import TokenIssuer
from tests.support.rbac import (
    FILTER_NAME,
    NATIVE_ONLY_FILTER_NAME,
    REVOKED_FILTER_NAME,
    applied_version,
    rbac_only_sidecar,
    served_version,
    xds_status,
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
        paths: ["/orders/{id}"]
        callers: ["spiffe://example.org/web"]
      - name: admin-anything
        effect: allow
        callers: ["spiffe://example.org/admin"]
      - name: end-users-read-reports
        effect: allow
        methods: [GET]
        paths: ["/reports"]
        users: {issuers: ["https://idp.example.com"]}
"""


@pytest.fixture(scope="module")
def issuer() -> Iterator[TokenIssuer]:
    server = TokenIssuer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def authd(tmp: Path, issuer: TokenIssuer) -> Iterator[Authd]:
    config = authd_config() + "\n" + issuer.authd_toml()
    config += "\n[xds]\nenabled = true\nnative_only = true\n"
    daemon = start_authd(tmp / "d", config, files={"policy.yaml": POLICY})
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def svids(authd: Authd, tmp: Path) -> dict[str, Path]:
    ids = {"web": WEB, "admin": ADMIN, "intruder": INTRUDER}
    with ThreadPoolExecutor(len(ids)) as pool:
        futures = {n: pool.submit(authd.mint_x509, i, tmp / n) for n, i in ids.items()}
        return {name: future.result() for name, future in futures.items()}


def in_step(authd: Authd, envoy: Envoy) -> bool:
    version = served_version(authd, NATIVE_ONLY_FILTER_NAME)
    return bool(version) and applied_version(envoy, NATIVE_ONLY_FILTER_NAME) == version


@pytest.fixture(scope="module")
def sidecar(
    authd: Authd, svids: dict[str, Path], upstream: EchoUpstream, tmp: Path
) -> Iterator[Envoy]:
    envoy = rbac_only_sidecar(
        tmp / "envoy",
        cert_dir=svids["web"],
        workload_socket=authd.data_dir / "workload.sock",
        app_port=upstream.port,
        access_log=tmp / "access.log",
    )
    try:
        wait_for("the sidecar to apply authd's RBAC configs", lambda: in_step(authd, envoy))
        yield envoy
    finally:
        envoy.stop()


def call(envoy: Envoy, svids: dict[str, Path], who: str, path: str, **kwargs: object) -> int:
    port = envoy.listener_port("inbound")
    return request(port, path, context=mtls_context(svids[who]), **kwargs).status  # type: ignore[arg-type]


def test_the_sidecar_has_one_rbac_filter_and_no_ext_authz(authd: Authd, sidecar: Envoy) -> None:
    dump = sidecar.admin("/config_dump?resource=dynamic_listeners") + sidecar.admin(
        "/config_dump?resource=static_listeners"
    )
    assert "ext_authz" not in dump
    assert NATIVE_ONLY_FILTER_NAME in dump
    assert REVOKED_FILTER_NAME not in dump
    assert [r["filter_name"] for r in xds_status(authd)["resources"]] == [NATIVE_ONLY_FILTER_NAME]


def test_an_allowed_caller_gets_through_and_another_is_refused(
    authd: Authd, sidecar: Envoy, svids: dict[str, Path], upstream: EchoUpstream, tmp: Path
) -> None:
    before = authd.checks_total()
    assert call(sidecar, svids, "web", "/orders/7") == 200
    assert call(sidecar, svids, "admin", "/anything", method="DELETE") == 200
    assert call(sidecar, svids, "web", "/orders/7", method="POST") == 403
    assert call(sidecar, svids, "intruder", "/orders/7") == 403
    entry = access_log_entry(tmp / "access.log", "peer", INTRUDER)
    assert entry["rbac"] == "deny:no_matching_rule"
    assert authd.checks_total() == before


def test_what_needs_ext_authz_is_denied_without_an_ext_authz_call(
    authd: Authd, sidecar: Envoy, svids: dict[str, Path], issuer: TokenIssuer, tmp: Path
) -> None:
    before = authd.checks_total()
    bearer = {"authorization": f"Bearer {issuer.token('alice')}"}
    # The end-user rule needs a token's claims: only authd could verify them.
    assert call(sidecar, svids, "web", "/reports?q=1") == 403
    assert call(sidecar, svids, "web", "/reports", headers=bearer) == 403
    # A credential header on what would be a native allow: unverifiable here, so denied.
    assert call(sidecar, svids, "web", "/orders/7", headers=bearer) == 403
    # An escape Envoy's normalize_path leaves in the path: ext_authz would normalise it and
    # allow; nothing here can, so it is denied. One Envoy decodes itself stays native.
    assert call(sidecar, svids, "web", "/orders/a%20b") == 403
    assert call(sidecar, svids, "web", "/orders/%37") == 200
    log = tmp / "access.log"
    entry = access_log_entry(log, "path", "/reports?q=1")
    assert entry["rbac"].startswith("deny:native_only:")
    assert "end-users-read-reports" in entry["rbac"]
    entry = access_log_entry(log, "path", "/reports")
    assert entry["rbac"] == "deny:native_only:credential header"
    assert authd.checks_total() == before  # nothing reached ext_authz


def test_explain_and_status_name_the_rules_denied(authd: Authd, sidecar: Envoy) -> None:
    explain = json.loads(authd.cli("policy", "explain", "--json").stdout)
    assert explain["native_only"] is True
    assert explain["filter_name"] == NATIVE_ONLY_FILTER_NAME
    runs = {r["rule"]: r["runs"] for r in explain["rules"]}
    assert runs == {
        "web-reads-orders": "native",
        "admin-anything": "native",
        "end-users-read-reports": "DENIED (native_only)",
    }
    assert explain["revoked_filter_name"] == ""
    text = authd.cli("policy", "explain").stdout
    assert "native_only is on" in text
    assert "revocations: in the rules filter" in text
    assert "warning: allow rule 'end-users-read-reports'" in text
    status = xds_status(authd)
    assert status["native_only"] is True
    assert [r["rule"] for r in status["denied_rules"]] == ["end-users-read-reports"]
    assert status["unserved_filters"] == {}
    assert FILTER_NAME not in {r["filter_name"] for r in status["resources"]}
    status_text = authd.cli("xds", "status").stdout
    assert "end-users-read-reports" in status_text
    assert "revocations: in the rules filter" in status_text


def test_a_revoked_caller_is_refused_in_the_one_filter_and_back_when_lifted(
    authd: Authd, sidecar: Envoy, svids: dict[str, Path], tmp: Path
) -> None:
    assert call(sidecar, svids, "admin", "/x") == 200
    before = authd.checks_total()
    version = served_version(authd, NATIVE_ONLY_FILTER_NAME)
    authd.cli("revoke", "spiffe-id", ADMIN, "--reason", "certificate-hold")
    wait_for("the revocation to reach Envoy", lambda: call(sidecar, svids, "admin", "/x") == 403)
    entry = access_log_entry(tmp / "access.log", "rbac", "deny:revoked-spiffe-id")
    assert entry["peer"] == ADMIN
    # The rules filter itself carries it, re-assembled around its cached rules.
    assert served_version(authd, NATIVE_ONLY_FILTER_NAME) != version
    assert applied_version(sidecar, NATIVE_ONLY_FILTER_NAME) != version
    assert "re-assembled around the cached rules" in authd.stderr_path.read_text()
    assert call(sidecar, svids, "web", "/orders/7") == 200
    assert call(sidecar, svids, "intruder", "/orders/7") == 403
    authd.cli("unrevoke", "spiffe-id", ADMIN)
    wait_for("the lift to reach Envoy", lambda: call(sidecar, svids, "admin", "/x") == 200)
    wait_for("the first config back", lambda: in_step(authd, sidecar))
    assert served_version(authd, NATIVE_ONLY_FILTER_NAME) == version  # the same bytes again
    assert authd.checks_total() == before  # nothing reached ext_authz

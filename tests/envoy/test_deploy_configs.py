"""Every shipped Envoy config renders, passes `envoy --mode validate`, and normalises paths."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.envoy import (
    DEPLOY_ENVOY,
    ENVOY_BINARY,
    ORDERS,
    TRUST_DOMAIN,
    foreign_svid,
    render,
)

TEMPLATES = sorted(p.name for p in DEPLOY_ENVOY.glob("*.yaml"))
HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


def placeholder_values(template: str, tmp: Path) -> dict[str, object]:
    """A value for every ``${NAME}`` of ``template``, by what the name says it is."""
    names = set(re.findall(r"\$\{([A-Z_]+)\}", (DEPLOY_ENVOY / template).read_text()))
    fixed: dict[str, object] = {
        "ACCESS_LOG": tmp / "access.log",
        "CERT_DIR": tmp / "certs",
        "TRUST_DOMAIN": TRUST_DOMAIN,
        "PEER_SPIFFE_ID": ORDERS,
        "POLICY": "gateway",
        "JWT_AUDIENCE": "gateway",
        "AUTHZ_PATH_PREFIX": "/check",
        "WORKLOAD_SOCKET": tmp / "workload.sock",
        "PEER_MAX_REQUESTS": 100,
        "SERVICE": "orders",
        "SVID_NAME": f"spiffe://{TRUST_DOMAIN}/orders",
        "BUNDLE_NAME": f"spiffe://{TRUST_DOMAIN}",
    }
    values: dict[str, object] = {}
    for name in names:
        if name in fixed:
            values[name] = fixed[name]
        elif name.endswith("_PORT"):
            values[name] = 0 if name in ("ADMIN_PORT", "LISTEN_PORT", "INBOUND_PORT") else 9000
        elif name.endswith("_ADDRESS"):
            values[name] = "127.0.0.1"
        else:
            raise AssertionError(f"{template}: no test value for ${{{name}}}")
    return values


def connection_managers(node: object) -> list[dict[str, object]]:
    """Every HttpConnectionManager typed_config anywhere in a parsed config."""
    found: list[dict[str, object]] = []
    if isinstance(node, dict):
        if node.get("@type") == HCM:
            found.append(node)
        for value in node.values():
            found += connection_managers(value)
    elif isinstance(node, list):
        for value in node:
            found += connection_managers(value)
    return found


@pytest.fixture(scope="module")
def cert_dir(tmp: Path) -> Path:
    return foreign_svid(tmp / "certs", ORDERS)


@pytest.mark.parametrize("template", TEMPLATES)
def test_deploy_config_passes_envoy_validate(template: str, tmp: Path, cert_dir: Path) -> None:
    path = tmp / template
    path.write_text(render(template, **placeholder_values(template, tmp)))
    done = subprocess.run(
        [str(ENVOY_BINARY), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{template}:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_connection_manager_normalises_paths_and_rejects_escaped_slashes(
    template: str, tmp: Path
) -> None:
    config = yaml.safe_load(render(template, **placeholder_values(template, tmp)))
    managers = connection_managers(config)
    assert managers, f"{template} has no HttpConnectionManager"
    for manager in managers:
        assert manager.get("normalize_path") is True, manager.get("stat_prefix")
        assert manager.get("merge_slashes") is True, manager.get("stat_prefix")
        assert manager.get("path_with_escaped_slashes_action") == "REJECT_REQUEST"

"""The native fast path in tests: a sidecar from deploy/envoy/sidecar-rbac.yaml and its probes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.envoy import HOST, TRUST_DOMAIN, Authd, Envoy, render, start_envoy

FILTER_NAME = "authd.rbac"
REVOKED_FILTER_NAME = "authd.rbac.revoked"


def rbac_sidecar(
    tmp: Path,
    *,
    cert_dir: Path,
    workload_socket: Path,
    app_port: int,
    authz_port: int,
    policy: str,
    access_log: Path,
    name: str = "rbac-sidecar",
) -> Envoy:
    """Envoy with the ECDS-fed RBAC filter in front of gRPC ext_authz, on a free port."""
    config = render(
        "sidecar-rbac.yaml",
        ADMIN_PORT=0,
        CERT_DIR=cert_dir,
        TRUST_DOMAIN=TRUST_DOMAIN,
        INBOUND_ADDRESS=HOST,
        INBOUND_PORT=0,
        APP_ADDRESS=HOST,
        APP_PORT=app_port,
        AUTHZ_ADDRESS=HOST,
        AUTHZ_PORT=authz_port,
        WORKLOAD_SOCKET=workload_socket,
        POLICY=policy,
        JWT_AUDIENCE=policy,
        ACCESS_LOG=access_log,
    )
    return start_envoy(config, tmp, name)


def applied_version(envoy: Envoy, filter_name: str = FILTER_NAME) -> str:
    """The ECDS version of ``filter_name`` this Envoy enforces ("" before its first)."""
    dump = json.loads(envoy.admin("/config_dump?resource=ecds_filters"))
    for config in dump.get("configs", []):
        if config.get("ecds_filter", {}).get("name") == filter_name:
            return str(config.get("version_info", ""))
    return ""


def served_version(authd: Authd, filter_name: str = FILTER_NAME) -> str:
    """The version of ``filter_name``'s config authd serves now, from its metrics ("" if none)."""
    for line in authd.metrics().splitlines():
        if line.startswith("authd_xds_config_info{") and f'filter="{filter_name}"' in line:
            return line.split('version="', 1)[1].split('"', 1)[0]
    return ""


def config_bytes(authd: Authd, filter_name: str = FILTER_NAME) -> int:
    """The size of ``filter_name``'s config authd serves now, from its metrics (0 if none)."""
    for line in authd.metrics().splitlines():
        if line.startswith("authd_xds_config_bytes{") and f'filter="{filter_name}"' in line:
            return int(float(line.split()[-1]))
    return 0


def xds_status(authd: Authd) -> Any:
    """``authd xds status --json``."""
    return json.loads(authd.cli("xds", "status", "--json").stdout)


def rbac_gateway(
    tmp: Path,
    *,
    cert_dir: Path,
    workload_socket: Path,
    upstream_port: int,
    authz_port: int,
    policy: str,
    access_log: Path,
    name: str = "rbac-gateway",
) -> Envoy:
    """Envoy from deploy/envoy/gateway-rbac.yaml (TLS, client certificate optional)."""
    config = render(
        "gateway-rbac.yaml",
        ADMIN_PORT=0,
        CERT_DIR=cert_dir,
        LISTEN_ADDRESS=HOST,
        LISTEN_PORT=0,
        UPSTREAM_ADDRESS=HOST,
        UPSTREAM_PORT=upstream_port,
        AUTHZ_ADDRESS=HOST,
        AUTHZ_PORT=authz_port,
        WORKLOAD_SOCKET=workload_socket,
        POLICY=policy,
        JWT_AUDIENCE=policy,
        ACCESS_LOG=access_log,
    )
    return start_envoy(config, tmp, name)


def in_step(authd: Authd, envoy: Envoy) -> bool:
    """Envoy enforces what authd serves, for both filters."""
    for name in (FILTER_NAME, REVOKED_FILTER_NAME):
        version = served_version(authd, name)
        if not version or applied_version(envoy, name) != version:
            return False
    return True


NATIVE_ONLY_FILTER_NAME = "authd.rbac.native_only"


def rbac_only_sidecar(
    tmp: Path,
    *,
    cert_dir: Path,
    workload_socket: Path,
    app_port: int,
    access_log: Path,
    name: str = "rbac-only-sidecar",
) -> Envoy:
    """Envoy from deploy/envoy/sidecar-rbac-only.yaml: one RBAC filter (revocations in it), no
    ext_authz."""
    config = render(
        "sidecar-rbac-only.yaml",
        ADMIN_PORT=0,
        CERT_DIR=cert_dir,
        TRUST_DOMAIN=TRUST_DOMAIN,
        INBOUND_ADDRESS=HOST,
        INBOUND_PORT=0,
        APP_ADDRESS=HOST,
        APP_PORT=app_port,
        WORKLOAD_SOCKET=workload_socket,
        ACCESS_LOG=access_log,
    )
    return start_envoy(config, tmp, name)

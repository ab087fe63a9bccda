"""The Envoy configs of the local topology, rendered from deploy/local/envoy/*.yaml.

The templates ask authd in ext_authz HTTP service mode. The same topology is also wanted
with gRPC ext_authz, and with no authz at all (the baseline of bench/three_hop.py), so the
rendered document is adjusted here rather than kept as six near-copies of two files. In gRPC
mode the HTTP filter's ``x-authd-ctx-NAME`` headers become the context extensions ``NAME`` of
every route (those whose value Envoy computes per request, ``%...%``, are left out: over gRPC
authd reads the hop's own SPIFFE ID and the client's address from the check itself).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import yaml

AUTHZ_MODES = ("http", "grpc", "none")
EXT_AUTHZ = "envoy.filters.http.ext_authz"
_EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_CONTEXT_HEADER = "x-authd-ctx-"


def render(
    template: Path,
    values: dict[str, object],
    *,
    authz: str,
    grpc_port: int,
    next_hop: bool = True,
) -> str:
    """``template`` with its placeholders filled, as the JSON Envoy is started with."""
    text = string.Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})
    config: dict[str, Any] = yaml.safe_load(text)
    resources = config["static_resources"]
    if not next_hop:
        resources["listeners"] = [x for x in resources["listeners"] if x["name"] != "outbound"]
        resources["clusters"] = [c for c in resources["clusters"] if c["name"] != "peer"]
    if authz == "none":
        _drop_ext_authz(resources)
    elif authz == "grpc":
        _use_grpc(resources, grpc_port)
    elif authz != "http":
        raise ValueError(f"authz mode must be one of {', '.join(AUTHZ_MODES)}, not {authz!r}")
    return json.dumps(config, indent=1)


def _connection_managers(resources: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        f["typed_config"]
        for listener in resources["listeners"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        if f["name"] == "envoy.filters.network.http_connection_manager"
    ]


def _drop_ext_authz(resources: dict[str, Any]) -> None:
    for manager in _connection_managers(resources):
        manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] != EXT_AUTHZ]
    resources["clusters"] = [c for c in resources["clusters"] if c["name"] != "authd_ext_authz"]


def _context_extensions(ext_authz: dict[str, Any]) -> dict[str, str]:
    """The HTTP filter's constant ``x-authd-ctx-NAME`` headers, as context extensions."""
    request = ext_authz["typed_config"]["http_service"].get("authorization_request", {})
    return {
        h["key"].removeprefix(_CONTEXT_HEADER): str(h["value"])
        for h in request.get("headers_to_add", [])
        if h["key"].startswith(_CONTEXT_HEADER) and "%" not in str(h["value"])
    }


def _use_grpc(resources: dict[str, Any], grpc_port: int) -> None:
    """Envoy's gRPC ext_authz with the caller's certificate; the HTTP filter's context
    headers as context extensions on every route of a connection manager that asks authd."""
    done: set[int] = set()
    for manager in _connection_managers(resources):
        filters = manager["http_filters"]
        if id(manager) in done or not any(f["name"] == EXT_AUTHZ for f in filters):
            continue
        done.add(id(manager))  # one connection manager may serve two listeners (YAML alias)
        extensions: dict[str, str] = {}
        for i, f in enumerate(filters):
            if f["name"] == EXT_AUTHZ:
                extensions = _context_extensions(f)
                filters[i] = {
                    "name": EXT_AUTHZ,
                    "typed_config": {
                        "@type": _EXT_AUTHZ_TYPE,
                        "transport_api_version": "V3",
                        "grpc_service": {
                            "envoy_grpc": {"cluster_name": "authd_ext_authz"},
                            "timeout": "0.5s",
                        },
                        "failure_mode_allow": False,
                        "status_on_error": {"code": "ServiceUnavailable"},
                        "include_peer_certificate": True,
                    },
                }
        for host in manager["route_config"]["virtual_hosts"]:
            for route in host["routes"]:
                if not extensions:
                    continue
                route["typed_per_filter_config"] = {
                    EXT_AUTHZ: {
                        "@type": _PER_ROUTE_TYPE,
                        "check_settings": {"context_extensions": extensions},
                    }
                }
    for cluster in resources["clusters"]:
        if cluster["name"] == "authd_ext_authz":
            cluster["typed_extension_protocol_options"] = {
                _HTTP_OPTIONS: {
                    "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"]["socket_address"]["port_value"] = grpc_port

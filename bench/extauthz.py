"""ext_authz throughput and latency through a real Envoy, against Envoy without authd.

Run on purpose, never as a timed test (it installs h2load with apt-get if it is missing):

    python bench/extauthz.py [--seconds N] [--rounds N] [--scenario mtls|jwt|rego ...]
                             [--listener rbac|grpc|http|null ...] [--grpc-engine native|grpcio]

One Envoy (``--concurrency 1``) serves five listeners that all answer with a
``direct_response`` 200 (no upstream process to share the CPU with):

    none   no authorization
    rbac   Envoy's native RBAC doing the same check (plus jwt_authn for bearer tokens)
    grpc   ext_authz gRPC → authd (the filter and cluster of deploy/envoy/*-grpc.yaml)
    http   ext_authz HTTP service mode → authd (the same from deploy/envoy/*-http.yaml)
    null   the http listener's filter, but its cluster is bench/null_authz.c (built with gcc),
           which answers every check at once with the headers authd gave the scenario's
           check, without looking at it: what the ext_authz HTTP filter costs Envoy by
           itself. No authorization server can do better than this row.

Scenarios (the check is always: the caller is a workload under spiffe://example.org/ns/prod/
and the path is below /orders/):

    mtls   the caller's X.509-SVID over mTLS (h2 over TLS, ALPN), declarative rules, for all
           listeners alike (the sidecar shape of deploy/envoy/sidecar-*.yaml). h2load
           cannot present a client certificate, so the bench builds bench/client_cert_shim.c
           with gcc and preloads it into h2load, which then presents an authd-minted SVID.
           Without gcc, a second Envoy (egress, --concurrency 1) takes h2c from h2load and
           originates mTLS instead; that Envoy shares the cores, so the figures are lower.
    jwt    a JWT-SVID bearer token (h2load -H), declarative rules; RBAC gets jwt_authn with
           authd's JWT keys as a local JWKS.
    rego   like jwt, but authd runs deploy/policy/authz.rego (policy_engine = "rego").

The machine's speed drifts by tens of percent within a minute, so each listener is measured
in rounds that alternate with the no-authz listener: none, X, none, X, ..., none. Each X run
is divided by the mean of the two none runs around it, and the ratio shown is the median of
those. req/s is the median of the runs, p50/p99 come from all of them (h2load with 8
connections, -m 1); then one run with 1 connection gives the unloaded p50. authd's CPU per
check is the utime+stime delta of its process over ``authd_checks_total`` during the loaded
runs; Envoy's per request likewise. Everything shares the machine's cores (h2load, Envoy and
authd), as it would on a small node. ``--grpc-engine grpcio`` runs authd's gRPC listener on
grpc.aio instead of its own HTTP/2 server, for comparison.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import os
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.envoy import (  # noqa: E402
    HOST,
    Authd,
    Envoy,
    authd_config,
    start_authd,
    start_envoy,
)

CALLER = "spiffe://example.org/ns/prod/web"
PATH = "/orders/42"
AUDIENCE = "gateway"
LISTENERS = ("none", "rbac", "grpc", "http", "null")
CLK_TCK = os.sysconf("SC_CLK_TCK")
_TYPE = "type.googleapis.com/"
JWT_AUTHN = _TYPE + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
DOWNSTREAM_TLS = _TYPE + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
HCM = _TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = _TYPE + "envoy.extensions.filters.http.router.v3.Router"
UPSTREAM_TLS = _TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RBAC = _TYPE + "envoy.extensions.filters.http.rbac.v3.RBAC"

RULES = """\
version: 1
default_rule_set: bench
rule_sets:
  bench:
    rules:
      - name: prod-reads-orders
        effect: allow
        paths: ["/orders/*"]
        callers: ["spiffe://example.org/ns/prod/*"]
"""

TARGETS = {  # (scenario, listener): minimum ratio to "none"
    ("mtls", "http"): 0.28,
    ("mtls", "grpc"): 0.12,
    ("jwt", "http"): 0.25,
    ("jwt", "grpc"): 0.10,
    ("rego", "grpc"): 0.07,
}
WARM_UP = 1.0  # seconds of each h2load run before it starts counting
HTTP_P99_TARGET_MS = 1.5  # HTTP mode at 8 connections
GRPC_P50_TARGET_MS = 0.7  # gRPC at 1 connection


# --- h2load ---------------------------------------------------------------------------------


def ensure_h2load() -> str:
    found = shutil.which("h2load")
    if found:
        return found
    print("h2load is missing; installing Debian's nghttp2-client:")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "nghttp2-client"]):
        print("  $", " ".join(command), flush=True)
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("h2load")
    if not found:
        sys.exit("h2load is still missing after installing nghttp2-client")
    return found


def build_c(tmp: Path, name: str, *flags: str) -> Path | None:
    """bench/NAME.c built with gcc into TMP, or None (with a note) without gcc or on error."""
    gcc = shutil.which("gcc")
    if gcc is None:
        print(f"note: no gcc to build bench/{name}.c")
        return None
    output = tmp / name
    command = [gcc, "-O2", *flags, "-o", str(output), str(REPO / "bench" / f"{name}.c")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"note: cannot build bench/{name}.c:\n{done.stderr}")
        return None
    return output


def build_client_cert_shim(tmp: Path) -> Path | None:
    """bench/client_cert_shim.c built for LD_PRELOAD into h2load, or None without gcc."""
    return build_c(tmp, "client_cert_shim", "-shared", "-fPIC", "-ldl")


@contextmanager
def null_authz_server(tmp: Path, headers: list[str]) -> Iterator[int | None]:
    """bench/null_authz.c answering every check with ``headers``; yields its port, or None
    if it cannot be built."""
    binary = build_c(tmp, "null_authz")
    if binary is None:
        yield None
        return
    process = subprocess.Popen([str(binary), *headers], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait(timeout=10)


@dataclass
class Load:
    requests: int
    ok: int
    rps: float
    p50_ms: float
    p99_ms: float
    micros: list[int]


def h2load(
    h2load_bin: str,
    url: str,
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str],
    log_file: Path,
    env: dict[str, str] | None = None,
) -> Load:
    command = [h2load_bin, "-c", str(connections), "-m", "1", "-t", "1"]
    command += ["-D", f"{seconds:g}", "--warm-up-time", f"{WARM_UP:g}"]
    command += ["--log-file", str(log_file)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed: {done.stdout}\n{done.stderr}")
    latencies, ok = [], 0
    for line in log_file.read_text().splitlines():
        _, status, micros = line.split("\t")[:3]
        latencies.append(int(micros))
        ok += status == "200"
    if not latencies:
        raise RuntimeError(f"h2load logged no request:\n{done.stdout}")
    rps = _rps(done.stdout)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Load(len(latencies), ok, rps, cuts[49] / 1000, cuts[98] / 1000, latencies)


def _rps(output: str) -> float:
    # "finished in 8.00s, 51234.50 req/s, 1.23MB/s"
    for line in output.splitlines():
        if line.startswith("finished in"):
            return float(line.split(",")[1].split()[0])
    raise RuntimeError(f"no req/s in h2load output:\n{output}")


# --- Envoy configurations -------------------------------------------------------------------


def deploy_authz(template: str, authz_port: int, cluster: str) -> tuple[dict[str, Any], ...]:
    """The ext_authz filter, per-route config and authz cluster of a deploy/envoy template."""
    text = (REPO / "deploy" / "envoy" / template).read_text()
    values = {
        "ADMIN_PORT": 0,
        "LISTEN_ADDRESS": HOST,
        "LISTEN_PORT": 0,
        "INBOUND_ADDRESS": HOST,
        "INBOUND_PORT": 0,
        "OUTBOUND_PORT": 0,
        "UPSTREAM_ADDRESS": HOST,
        "UPSTREAM_PORT": 1,
        "APP_ADDRESS": HOST,
        "APP_PORT": 1,
        "PEER_ADDRESS": HOST,
        "PEER_PORT": 1,
        "PEER_SPIFFE_ID": CALLER,
        "CERT_DIR": "/nonexistent",
        "TRUST_DOMAIN": "example.org",
        "AUTHZ_ADDRESS": HOST,
        "AUTHZ_PORT": authz_port,
        "AUTHZ_PATH_PREFIX": "",
        "POLICY": "bench",
        "JWT_AUDIENCE": AUDIENCE,
        "ACCESS_LOG": "/dev/null",
    }
    doc = yaml.safe_load(string.Template(text).substitute(values))
    listener = doc["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    authz_filter = copy.deepcopy(hcm["http_filters"][0])
    assert authz_filter["name"] == "envoy.filters.http.ext_authz"
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    per_route = copy.deepcopy(route.get("typed_per_filter_config", {}))
    (authz_cluster,) = [
        c for c in doc["static_resources"]["clusters"] if c["name"] == "authd_ext_authz"
    ]
    authz_cluster = copy.deepcopy(authz_cluster)
    authz_cluster["name"] = cluster
    authz_cluster["load_assignment"]["cluster_name"] = cluster
    config = authz_filter["typed_config"]
    if "grpc_service" in config:
        config["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster
    else:
        config["http_service"]["server_uri"]["cluster"] = cluster
    return authz_filter, per_route, authz_cluster


def rbac_filters(scenario: str, jwks: str) -> list[dict[str, Any]]:
    path = {"url_path": {"path": {"prefix": "/orders/"}}}
    prefix = {"prefix": "spiffe://example.org/ns/prod/"}
    filters: list[dict[str, Any]] = []
    if scenario == "mtls":
        principal: dict[str, Any] = {"authenticated": {"principal_name": prefix}}
    else:
        filters.append(
            {
                "name": "envoy.filters.http.jwt_authn",
                "typed_config": {
                    "@type": JWT_AUTHN,
                    "providers": {
                        "authd": {
                            "audiences": [AUDIENCE],
                            "local_jwks": {"inline_string": jwks},
                            "payload_in_metadata": "jwt_payload",
                            # authd caches verified tokens; so does Envoy, with this.
                            "jwt_cache_config": {"jwt_cache_size": 1000},
                        }
                    },
                    "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "authd"}}],
                },
            }
        )
        principal = {
            "sourced_metadata": {
                "metadata_matcher": {
                    "filter": "envoy.filters.http.jwt_authn",
                    "path": [{"key": "jwt_payload"}, {"key": "sub"}],
                    "value": {"string_match": prefix},
                }
            }
        }
    filters.append(
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": RBAC,
                "rules": {
                    "action": "ALLOW",
                    "policies": {
                        "prod-reads-orders": {"permissions": [path], "principals": [principal]}
                    },
                },
            },
        }
    )
    return filters


def server_tls(cert_dir: Path) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS,
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(cert_dir / "svid.pem")},
                        "private_key": {"filename": str(cert_dir / "svid.key")},
                    }
                ],
                "alpn_protocols": ["h2", "http/1.1"],
                "validation_context": {
                    "trusted_ca": {"filename": str(cert_dir / "bundle.pem")},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"prefix": "spiffe://example.org/"}}
                    ],
                },
            },
        },
    }


def hcm_listener(
    name: str,
    filters: list[dict[str, Any]],
    per_route: dict[str, Any],
    route_action: dict[str, Any],
    transport_socket: dict[str, Any] | None = None,
    address: str = HOST,
) -> dict[str, Any]:
    route: dict[str, Any] = {"match": {"prefix": "/"}, **route_action}
    if per_route:
        route["typed_per_filter_config"] = per_route
    chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM,
                    "stat_prefix": name,
                    "codec_type": "AUTO",
                    "route_config": {
                        "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]
                    },
                    "http_filters": [
                        *filters,
                        {
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": ROUTER},
                        },
                    ],
                },
            }
        ]
    }
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": 0}},
        "filter_chains": [chain],
    }


def server_config(
    scenario: str, authd: Authd, cert_dir: Path | None, jwks: str, null_port: int | None
) -> str:
    shape = "sidecar" if scenario == "mtls" else "gateway"
    grpc_filter, grpc_route, grpc_cluster = deploy_authz(
        f"{shape}-grpc.yaml", authd.grpc_port, "authd_grpc"
    )
    http_filter, _, http_cluster = deploy_authz(f"{shape}-http.yaml", authd.http_port, "authd_http")
    direct = {"direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    tls = server_tls(cert_dir) if cert_dir is not None else None
    listeners = [
        hcm_listener("none", [], {}, direct, tls),
        hcm_listener("rbac", rbac_filters(scenario, jwks), {}, direct, tls),
        hcm_listener("grpc", [grpc_filter], grpc_route, direct, tls),
        hcm_listener("http", [http_filter], {}, direct, tls),
    ]
    clusters = [grpc_cluster, http_cluster]
    if null_port is not None:
        null_filter, _, null_cluster = deploy_authz(f"{shape}-http.yaml", null_port, "null_http")
        listeners.append(hcm_listener("null", [null_filter], {}, direct, tls))
        clusters.append(null_cluster)
    config = {
        "admin": {"address": {"socket_address": {"address": HOST, "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    return json.dumps(config, indent=1)


def egress_config(cert_dir: Path, server_ports: dict[str, int]) -> str:
    """h2c in from h2load, mTLS out with the caller's SVID: one listener per server listener."""
    listeners, clusters = [], []
    for name, port in server_ports.items():
        listeners.append(hcm_listener(name, [], {}, {"route": {"cluster": name}}))
        clusters.append(
            {
                "name": name,
                "type": "STATIC",
                "connect_timeout": "1s",
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": UPSTREAM_TLS,
                        "common_tls_context": {
                            "tls_certificates": [
                                {
                                    "certificate_chain": {"filename": str(cert_dir / "svid.pem")},
                                    "private_key": {"filename": str(cert_dir / "svid.key")},
                                }
                            ],
                            "validation_context": {
                                "trusted_ca": {"filename": str(cert_dir / "bundle.pem")}
                            },
                        },
                    },
                },
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": HOST, "port_value": port}
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        )
    config = {
        "admin": {"address": {"socket_address": {"address": HOST, "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    return json.dumps(config, indent=1)


# --- measuring --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Row:
    scenario: str
    listener: str
    loads: list[Load]  # the 8-connection runs
    ratios: list[float]  # each run over the mean of the no-authz runs around it
    single: Load
    authd_us_per_check: float | None
    envoy_us_per_request: float

    @property
    def rps(self) -> float:
        return statistics.median(load.rps for load in self.loads)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def latency(self) -> tuple[float, float]:
        """p50 and p99 in ms over the requests of all the loaded runs."""
        cuts = statistics.quantiles(
            [m for load in self.loads for m in load.micros], n=100, method="inclusive"
        )
        return cuts[49] / 1000, cuts[98] / 1000


@contextmanager
def running_authd(tmp: Path, scenario: str, grpc_engine: str) -> Iterator[Authd]:
    engine = f'\ngrpc_engine = "{grpc_engine}"'
    if scenario == "rego":
        files = {"authz.rego": (REPO / "deploy" / "policy" / "authz.rego").read_text()}
        extra = f'rego_files = ["authz.rego"]\njwt_svid_audiences = ["{AUDIENCE}"]' + engine
        config = authd_config(decision_log="", extra=extra).replace(
            'policy_engine = "rules"', 'policy_engine = "rego"'
        )
        config = config.replace('policy_file = "policy.yaml"\n', "")
    else:
        files = {"policy.yaml": RULES}
        extra = f'jwt_svid_audiences = ["{AUDIENCE}"]' + engine
        config = authd_config(decision_log="", extra=extra)
    config = config.replace('decision_log = ""\n', "")
    authd = start_authd(tmp / f"d-{scenario}", config, files=files)
    try:
        yield authd
    finally:
        authd.stop()


def authd_allow_headers(authd: Authd, cert_dir: Path | None, headers: dict[str, str]) -> list[str]:
    """The headers of authd's HTTP-mode answer to one check of the scenario, as Envoy sends it
    (the null server answers with the same, so that Envoy does the same work with them)."""
    check = dict(headers)
    if cert_dir is not None:
        leaf = (cert_dir / "svid.pem").read_text().split("-----END CERTIFICATE-----")[0]
        check["x-authd-peer-uri-san"] = CALLER
        check["x-authd-peer-cert"] = quote(leaf + "-----END CERTIFICATE-----\n", safe="")
    connection = http.client.HTTPConnection(HOST, authd.http_port, timeout=10)
    try:
        connection.request("GET", PATH, headers=check)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"authd denied the bench's own check: {response.status}")
    skip = {"content-length", "date", "server", "connection"}
    return [f"{k}: {v}" for k, v in response.getheaders() if k.lower() not in skip]


def jwt_jwks(authd: Authd) -> str:
    keys = json.loads(authd.cli("bundle", "show").stdout)["keys"]
    return json.dumps({"keys": [k for k in keys if k.get("use") == "jwt-svid"]})


@dataclass
class Target:
    """What one listener is loaded through: its URL, and h2load's headers and environment."""

    url: str
    headers: dict[str, str]
    env: dict[str, str]


class Meter:
    """Runs h2load against the listeners and adds up authd's and Envoy's CPU per listener."""

    def __init__(
        self,
        h2load_bin: str,
        tmp: Path,
        authd: Authd,
        envoy: Envoy,
        targets: dict[str, Target],
        seconds: float,
    ) -> None:
        self.h2load_bin, self.tmp, self.authd, self.envoy = h2load_bin, tmp, authd, envoy
        self.targets, self.seconds = targets, seconds
        self.runs = 0
        # listener → [authd CPU seconds, checks counted, Envoy CPU seconds, requests]
        self.totals: dict[str, list[float]] = {}

    def load(self, target: Target, connections: int, seconds: float) -> Load:
        self.runs += 1
        load = h2load(
            self.h2load_bin,
            target.url,
            connections=connections,
            seconds=seconds,
            headers=target.headers,
            log_file=self.tmp / f"run-{self.runs}.log",
            env=target.env,
        )
        if load.ok != load.requests:
            raise RuntimeError(f"{target.url}: {load.requests - load.ok} answers were not 200")
        return load

    def measured(self, name: str, target: Target, seconds: float) -> Load:
        """An 8-connection run, its CPU added to the listener's totals."""
        authd0, checks0 = cpu_seconds(self.authd.process.pid), self.authd.checks_total()
        envoy0 = cpu_seconds(self.envoy.process.pid)
        loaded = self.load(target, 8, seconds)
        authd1, checks1 = cpu_seconds(self.authd.process.pid), self.authd.checks_total()
        envoy1 = cpu_seconds(self.envoy.process.pid)
        totals = self.totals.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        for i, value in enumerate((authd1 - authd0, checks1 - checks0, envoy1 - envoy0)):
            totals[i] += value
        # The CPU deltas cover h2load's warm-up, whose requests it does not count.
        totals[3] += loaded.requests + loaded.rps * WARM_UP
        return loaded

    def row(self, scenario: str, name: str, loads: list[Load], ratios: list[float]) -> Row:
        authd_cpu, checks, envoy_cpu, requests = self.totals[name]
        single = self.load(self.targets[name], 1, max(self.seconds // 2, 2))
        authd_us = authd_cpu * 1e6 / checks if checks else None
        return Row(scenario, name, loads, ratios, single, authd_us, envoy_cpu * 1e6 / requests)


def measure_listener(
    meter: Meter, name: str, baseline: list[Load], rounds: int
) -> tuple[list[Load], list[float]]:
    """``rounds`` runs of ``name``, each between two runs of the no-authz listener (added to
    ``baseline``); with each run's ratio to the mean of the two runs around it."""
    meter.load(meter.targets[name], 1, 1)  # warm-up
    if not baseline:
        baseline.append(meter.measured("none", meter.targets["none"], meter.seconds))
    loads, ratios = [], []
    for _ in range(rounds):
        before = baseline[-1]
        loaded = meter.measured(name, meter.targets[name], meter.seconds)
        after = meter.measured("none", meter.targets["none"], meter.seconds)
        baseline.append(after)
        loads.append(loaded)
        ratios.append(loaded.rps / ((before.rps + after.rps) / 2))
    return loads, ratios


def run_scenario(
    scenario: str,
    seconds: float,
    rounds: int,
    h2load_bin: str,
    tmp: Path,
    listeners: tuple[str, ...],
    grpc_engine: str,
) -> list[Row]:
    rows = []
    with ExitStack() as stack:
        authd = stack.enter_context(running_authd(tmp, scenario, grpc_engine))
        headers: dict[str, str] = {}
        cert_dir: Path | None = None
        env: dict[str, str] = {}
        scheme = "http"
        if scenario == "mtls":
            cert_dir = authd.mint_x509(CALLER, tmp / f"svid-{scenario}")
            shim = build_client_cert_shim(tmp)
            if shim is not None:
                scheme = "https"
                env = {
                    "LD_PRELOAD": str(shim),
                    "AUTHD_BENCH_CLIENT_CERT": str(cert_dir / "svid.pem"),
                    "AUTHD_BENCH_CLIENT_KEY": str(cert_dir / "svid.key"),
                }
        else:
            headers["authorization"] = f"Bearer {authd.mint_jwt(CALLER, AUDIENCE)}"
        allow = authd_allow_headers(authd, cert_dir, headers)
        null_port = stack.enter_context(null_authz_server(tmp, allow))
        if null_port is None:
            listeners = tuple(name for name in listeners if name != "null")
        config = server_config(scenario, authd, cert_dir, jwt_jwks(authd), null_port)
        server = start_envoy(config, tmp, f"server-{scenario}")
        stack.callback(server.stop)
        ports = {name: server.listener_port(name) for name in ("none", *listeners)}
        if cert_dir is not None and scheme == "http":
            print("  no gcc: a second Envoy originates mTLS for h2load", flush=True)
            egress = start_envoy(egress_config(cert_dir, ports), tmp, f"egress-{scenario}")
            stack.callback(egress.stop)
            ports = {name: egress.listener_port(name) for name in ports}
        targets = {
            name: Target(f"{scheme}://{HOST}:{port}{PATH}", headers, env)
            for name, port in ports.items()
        }
        meter = Meter(h2load_bin, tmp, authd, server, targets, seconds)
        meter.load(targets["none"], 1, 1)  # warm-up
        baseline: list[Load] = []
        for name in listeners:
            loads, ratios = measure_listener(meter, name, baseline, rounds)
            rows.append(meter.row(scenario, name, loads, ratios))
            print(f"  {scenario:<5} {name:<5} {rows[-1].rps:>9.0f} req/s", flush=True)
        rows.insert(0, meter.row(scenario, "none", baseline, [1.0]))
    return rows


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'scenario':<8} {'listener':<8} {'req/s':>8} {'ratio':>6} {'(range)':>11} "
        f"{'target':>7} {'p50 ms':>7} {'p99 ms':>7} {'p50@1c':>7} {'authd µs/check':>15} "
        f"{'envoy µs/req':>13}"
    )
    print()
    print(header)
    print("-" * len(header))
    misses = []
    for r in rows:
        target = TARGETS.get((r.scenario, r.listener))
        target_text = f"≥{target:.2f}" if target else ""
        if target and r.ratio < target:
            misses.append(f"{r.scenario}/{r.listener} ratio {r.ratio:.3f} < {target}")
            target_text += "!"
        p50, p99 = r.latency
        if r.listener == "http" and p99 > HTTP_P99_TARGET_MS:
            misses.append(f"{r.scenario}/http p99 {p99:.2f} ms > {HTTP_P99_TARGET_MS}")
        if r.listener == "grpc" and r.single.p50_ms > GRPC_P50_TARGET_MS:
            misses.append(
                f"{r.scenario}/grpc p50@1c {r.single.p50_ms:.2f} ms > {GRPC_P50_TARGET_MS}"
            )
        spread = f"{min(r.ratios):.3f}-{max(r.ratios):.3f}" if r.listener != "none" else ""
        cpu = f"{r.authd_us_per_check:.0f}" if r.authd_us_per_check is not None else "-"
        print(
            f"{r.scenario:<8} {r.listener:<8} {r.rps:>8.0f} {r.ratio:>6.3f} {spread:>11} "
            f"{target_text:>7} {p50:>7.3f} {p99:>7.3f} {r.single.p50_ms:>7.3f} {cpu:>15} "
            f"{r.envoy_us_per_request:>13.0f}"
        )
    print(
        f"\ntargets: ratios as shown; HTTP p99 ≤ {HTTP_P99_TARGET_MS} ms at 8 connections; "
        f"gRPC p50 ≤ {GRPC_P50_TARGET_MS} ms at 1 connection"
    )
    print("missed: " + ("; ".join(misses) if misses else "none"))
    by = {(r.scenario, r.listener): r for r in rows}
    shares = [
        f"{scenario} {by[scenario, 'http'].ratio / by[scenario, 'null'].ratio:.2f}"
        for scenario in dict.fromkeys(r.scenario for r in rows)
        if (scenario, "http") in by and (scenario, "null") in by
    ]
    if shares:
        print("HTTP mode's ratio over the null server's (1.00: authd costs Envoy nothing more "
              "than a server that does no work): " + ", ".join(shares))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4, help="per 8-connection run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs per listener, each between two no-authz runs"
    )
    parser.add_argument(
        "--scenario", action="append", choices=["mtls", "jwt", "rego"], help="repeatable"
    )
    parser.add_argument(
        "--listener",
        action="append",
        choices=[n for n in LISTENERS if n != "none"],
        help="repeatable; default all (the no-authz listener always runs: it is the baseline)",
    )
    parser.add_argument(
        "--grpc-engine",
        choices=["native", "grpcio"],
        default="native",
        help="what serves authd's gRPC listener (authz.grpc_engine)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    args = parser.parse_args()
    h2load_bin = ensure_h2load()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.2f} before starting; other work skews the numbers")
    listeners = tuple(args.listener or LISTENERS[1:])
    tmp = Path(tempfile.mkdtemp(prefix="authd-"))
    rows: list[Row] = []
    try:
        for scenario in args.scenario or ["mtls", "jwt", "rego"]:
            print(f"scenario {scenario}:", flush=True)
            rows += run_scenario(
                scenario, args.seconds, args.rounds, h2load_bin, tmp, listeners, args.grpc_engine
            )
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nauthd's gRPC engine: {args.grpc_engine}")
    print_table(rows)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

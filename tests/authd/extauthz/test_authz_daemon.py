"""ext_authz inside `authd run`: both transports, hot reload, metrics, `authd policy check`."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authd.cli.errors import Exit
from tests.support.daemon import Daemon, authd
from tests.support.ports import free_port

POLICY = """\
version: 1
rule_sets:
  default:
    rules:
      - name: public
        effect: allow
        paths: ["/public/*"]
      - name: orders-for-web
        effect: allow
        paths: ["/orders/{id}"]
        callers: ["spiffe://example.org/web"]
      - name: no-admin
        effect: deny
        paths: ["/admin/*"]
"""


class AuthzDaemon(Daemon):
    def __init__(self, workdir: Path, grpc_engine: str = "native") -> None:
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.policy = workdir / "policy.yaml"
        self.policy.write_text(POLICY)
        self.decisions = workdir / "decisions.log"
        self.grpc_socket = workdir / "authz.sock"
        self.grpc_engine = grpc_engine
        super().__init__(workdir / "data")
        self.config.write_text(
            "[authz]\n"
            f'grpc_address = "127.0.0.1:{self.grpc_port}"\n'
            f'grpc_engine = "{grpc_engine}"\n'
            f'grpc_socket = "{workdir / "authz.sock"}"\n'
            f'http_address = "127.0.0.1:{self.http_port}"\n'
            f'metrics_address = "127.0.0.1:{self.metrics_port}"\n'
            f'policy_file = "{self.policy}"\n'
            f'decision_log = "{self.decisions}"\n'
            'jwt_svid_audiences = ["authd"]\n'
        )

    def token(self, spiffe_id: str, audience: str = "authd") -> str:
        return authd(
            "jwt", "mint", "--spiffe-id", spiffe_id, "--audience", audience,
            data_dir=self.data_dir,
        ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="module", params=["native", "grpcio"])
def daemon(request: pytest.FixtureRequest) -> Iterator[AuthzDaemon]:
    """The daemon with each gRPC engine: both serve the same Check, health and reflection."""
    workdir = Path(tempfile.mkdtemp(prefix="authd-authz-"))
    os.chmod(workdir, 0o755)
    running = AuthzDaemon(workdir, request.param)
    running.start()
    yield running
    running.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def grpc_check(
    daemon: AuthzDaemon, path: str, target: str = "", **headers: str
) -> external_auth_pb2.CheckResponse:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "GET", path, "api.example.com"
    http.headers.update(headers)
    with grpc.insecure_channel(target or f"127.0.0.1:{daemon.grpc_port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        reply: external_auth_pb2.CheckResponse = stub.Check(request, timeout=10)
        return reply


def http_check(daemon: AuthzDaemon, path: str, **headers: str) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=10)
    connection.request("GET", path, headers={"host": "api.example.com", **headers})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}


def test_grpc_check_decides_from_a_verified_jwt_svid(daemon: AuthzDaemon) -> None:
    web = daemon.token("spiffe://example.org/web")
    reply = grpc_check(daemon, "/orders/7", authorization=f"Bearer {web}")
    assert reply.status.code == code_pb2.OK
    headers = {h.header.key: h.header.value for h in reply.ok_response.headers}
    assert headers["x-authd-caller"] == "spiffe://example.org/web"
    assert "authorization" in reply.ok_response.headers_to_remove

    other = daemon.token("spiffe://example.org/batch")
    assert (
        grpc_check(daemon, "/orders/7", authorization=f"Bearer {other}").denied_response.status.code
        == 403
    )
    assert grpc_check(daemon, "/orders/7").denied_response.status.code == 401
    wrong_audience = daemon.token("spiffe://example.org/web", audience="elsewhere")
    denied = grpc_check(daemon, "/orders/7", authorization=f"Bearer {wrong_audience}")
    assert denied.denied_response.status.code == 401
    assert json.loads(denied.denied_response.body)["error"] == "invalid_credentials"


def test_grpc_on_the_unix_socket_decides_the_same(daemon: AuthzDaemon) -> None:
    target = f"unix:{daemon.grpc_socket}"
    assert grpc_check(daemon, "/public/a", target).status.code == code_pb2.OK
    denied = grpc_check(daemon, "/orders/7", target)
    assert denied.denied_response.status.code == 401


def test_http_mode_decides_the_same(daemon: AuthzDaemon) -> None:
    web = daemon.token("spiffe://example.org/web")
    status, headers = http_check(daemon, "/orders/7", authorization=f"Bearer {web}")
    assert status == 200
    assert headers["x-authd-caller"] == "spiffe://example.org/web"
    assert http_check(daemon, "/orders/7")[0] == 401
    assert http_check(daemon, "/public/a")[0] == 200
    assert http_check(daemon, "/admin/x", authorization=f"Bearer {web}")[0] == 403


def test_health_service_on_the_ext_authz_port(daemon: AuthzDaemon) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"),
            timeout=10,
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services_of_the_ext_authz_port(daemon: AuthzDaemon) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        symbol = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="envoy.service.auth.v3.Authorization"
        )
        (described,) = list(stub.ServerReflectionInfo(iter([symbol]), timeout=10))
    names = {service.name for service in reply.list_services_response.service}
    assert names == {
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    files = described.file_descriptor_response.file_descriptor_proto
    assert any(b"external_auth.proto" in proto for proto in files)


def test_unknown_method_on_the_ext_authz_port_is_unimplemented(daemon: AuthzDaemon) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
        call = channel.unary_unary("/envoy.service.auth.v3.Authorization/Nope")
        with pytest.raises(grpc.RpcError) as failed:
            call(b"", timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_second_daemon_cannot_share_the_ext_authz_port(daemon: AuthzDaemon) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="authd-dup-"))
    try:
        config = workdir / "authd.toml"
        config.write_text(
            f'[authz]\ngrpc_address = "127.0.0.1:{daemon.grpc_port}"\nhttp_address = ""\n'
            f'metrics_address = ""\ngrpc_engine = "{daemon.grpc_engine}"\n'
        )
        result = subprocess.run(
            [sys.executable, "-m", "authd", "run", "--data-dir", str(workdir / "d"),
             "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1
        assert f"cannot listen for ext_authz on 127.0.0.1:{daemon.grpc_port}" in result.stderr
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_policy_reloads_within_a_second_and_a_broken_one_is_refused(daemon: AuthzDaemon) -> None:
    assert http_check(daemon, "/public/a")[0] == 200
    daemon.policy.write_text(POLICY.replace('"/public/*"', '"/open/*"'))
    deadline = time.monotonic() + 1.0
    while http_check(daemon, "/open/a")[0] != 200:
        assert time.monotonic() < deadline, "the new policy did not serve within a second"
        time.sleep(0.02)
    assert http_check(daemon, "/public/a")[0] == 401

    daemon.policy.write_text(POLICY.replace("effect: deny", "effect: maybe"))
    deadline = time.monotonic() + 5
    while "effect" not in daemon.logs():
        assert time.monotonic() < deadline, "the broken policy was not reported"
        time.sleep(0.05)
    assert "policy.yaml:13" in daemon.logs()  # the line of `effect: maybe`
    assert "no-admin" in daemon.logs()
    assert http_check(daemon, "/open/a")[0] == 200  # the old policy keeps serving
    daemon.policy.write_text(POLICY)
    deadline = time.monotonic() + 5
    while http_check(daemon, "/public/a")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_metrics_and_decision_log(daemon: AuthzDaemon) -> None:
    http_check(daemon, "/public/metrics-probe?token=secret123")
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics") as reply:
        text = reply.read().decode()
    assert 'authd_checks_total{decision="allow",reason="allowed",transport="http"}' in text
    assert "authd_check_duration_seconds_bucket" in text
    assert "authd_identity_cache_total" in text
    deadline = time.monotonic() + 5
    while "metrics-probe" not in daemon.decisions.read_text():
        assert time.monotonic() < deadline, "the decision log was not flushed"
        time.sleep(0.05)
    line = next(
        json.loads(x) for x in daemon.decisions.read_text().splitlines() if "metrics-probe" in x
    )
    assert line["rule"] == "public"
    assert line["request"]["query_keys"] == ["token"]
    assert "secret123" not in daemon.decisions.read_text()


def test_policy_check_explains_a_decision(daemon: AuthzDaemon, tmp_path: Path) -> None:
    web = daemon.token("spiffe://example.org/web")
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps(
            {
                "attributes": {
                    "request": {
                        "http": {
                            "method": "GET",
                            "path": "/orders/7",
                            "host": "api.example.com",
                            "headers": {"authorization": f"Bearer {web}"},
                        }
                    }
                }
            }
        )
    )
    args = ["policy", "check", "--input", str(request), "--config", str(daemon.config)]
    allowed = authd(*args, data_dir=daemon.data_dir)
    assert allowed.stdout.startswith("ALLOW")
    assert "rule=orders-for-web" in allowed.stdout
    assert "workload: spiffe://example.org/web" in allowed.stdout

    request.write_text(request.read_text().replace("/orders/7", "/admin/x"))
    denied = authd(*args, "--json", data_dir=daemon.data_dir, check=False)
    assert denied.returncode == 3
    report = json.loads(denied.stdout)
    assert report["reason"] == "denied_by_rule"
    assert report["rule"] == "no-admin"
    assert report["explanation"]

    request.write_text("{}")
    bad = authd(*args, data_dir=daemon.data_dir, check=False)
    assert bad.returncode == Exit.INVALID
    assert "'attributes'" in bad.stderr

"""An authd server with the node API, and `authd agent run` processes beside it."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from tests.support.daemon import AUTHD, Daemon, authd, cli_json
from tests.support.ports import free_port
from tests.support.store_replicas import ALLOW_WORKLOADS_POLICY

T = TypeVar("T")
TRUST_DOMAIN = "example.org"
ME = os.getuid()


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll ``probe`` until it returns something truthy (a condition, not an expiry)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Server(Daemon):
    """``authd run`` with the node API on free ports, its own workload socket off."""

    def __init__(self, data_dir: Path, extra: str = "", agent_extra: str = "") -> None:
        self.attestation_address = f"127.0.0.1:{free_port()}"
        self.node_api_address = f"127.0.0.1:{free_port()}"
        super().__init__(
            data_dir,
            f"{extra}\n[workload]\nenabled = false\n"
            f'[agent]\nattestation_address = "{self.attestation_address}"\n'
            f'node_api_address = "{self.node_api_address}"\n{agent_extra}\n',
        )
        policy = data_dir.parent / "policy.yaml"
        policy.write_text(ALLOW_WORKLOADS_POLICY)
        text = self.config.read_text()
        self.http_address = text.split('http_address = "', 1)[1].split('"', 1)[0]
        self.grpc_address = text.split('grpc_address = "', 1)[1].split('"', 1)[0]
        self.config.write_text(text.replace("[authz]\n", f'[authz]\npolicy_file = "{policy}"\n'))

    def check(self, svid_pem: bytes) -> int:
        """GET /orders/1 on the HTTP ext_authz as the workload whose SVID is ``svid_pem``."""
        host, _, port = self.http_address.rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            headers = {"host": "api.example.com", "x-authd-peer-cert": quote(svid_pem.decode())}
            connection.request("GET", "/orders/1", headers=headers)
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        return response.status

    def join_token(self, node_id: str = "", ttl: str = "") -> str:
        args = ["token", "generate"]
        if node_id:
            args += ["--spiffe-id", node_id]
        if ttl:
            args += ["--ttl", ttl]
        return str(cli_json(self, *args)["token"])

    def entry(self, spiffe_id: str, parent_id: str, *extra: str, uid: int = ME) -> str:
        created = cli_json(
            self, "entry", "create", "--spiffe-id", spiffe_id, "--parent-id", parent_id,
            "--selector", f"unix:uid:{uid}", *extra,
        )  # fmt: skip
        return str(created["entry_id"] if "entry_id" in created else created["id"])

    def agents(self) -> list[dict[str, object]]:
        return list(cli_json(self, "agent", "list")["agents"])

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return authd(*args, data_dir=self.data_dir, check=check)


class Agent:
    """``authd agent run`` with its own data directory and workload socket."""

    def __init__(self, directory: Path, server: Server, attest: str, extra: str = "") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.data_dir = directory / "data"
        self.socket = directory / "workload.sock"
        self.metrics_address = f"127.0.0.1:{free_port()}"
        self.config = directory / "agent.toml"
        self.config.write_text(
            f'trust_domain = "{TRUST_DOMAIN}"\n'
            f'[workload]\nsocket_path = "{self.socket}"\n'
            f'[agent]\nattestation_address = "{server.attestation_address}"\n'
            f'node_api_address = "{server.node_api_address}"\n'
            f'metrics_address = "{self.metrics_address}"\n'
            f"sync_interval = 1\ninsecure_bootstrap = true\n{attest}\n{extra}\n"
        )
        self.process: subprocess.Popen[str] | None = None

    @property
    def socket_url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, *, wait: bool = True) -> None:
        self.log = open(self.directory / "agent.log", "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                *AUTHD,
                "agent",
                "run",
                "--config",
                str(self.config),
                "--data-dir",
                str(self.data_dir),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if wait:
            wait_until(f"agent socket {self.socket}", self._serving)

    def _serving(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"authd agent exited: {self.logs()}")
        return self.socket.exists()

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        self.log.close()
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.log.close()

    def metrics(self) -> dict[str, float]:
        import urllib.request

        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=5) as r:
            text = r.read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("authd_agent_"):
                name, _, value = line.partition(" ")
                found[name] = float(value)
        return found

    def logs(self) -> str:
        return (self.directory / "agent.log").read_text()

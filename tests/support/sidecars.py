"""Envoy sidecars that get their identity from authd over SDS, each as its own uid."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.envoy import (
    ENVOY_BINARY,
    HOST,
    TRUST_DOMAIN,
    Authd,
    Envoy,
    Reply,
    render,
    stop_process,
    tail,
    wait_for,
)

NOBODY = 65534


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int


_base_ids = iter(range(1, 100))


def start_sidecar(name: str, user: ServiceUser, binary: Path, tmp: Path, **values: object) -> Envoy:
    """Render sidecar-sds.yaml, run Envoy as ``user``, and wait until it is LIVE."""
    directory = tmp / name
    directory.mkdir(mode=0o755)
    os.chown(directory, user.uid, user.gid)
    config_path = directory / "envoy.yaml"
    config_path.write_text(
        render("sidecar-sds.yaml", SERVICE=name, ACCESS_LOG=directory / "access.log", **values)
    )
    config_path.chmod(0o644)
    address_path, log_path = directory / "admin.address", tmp / f"{name}.log"
    base_id = (os.getpid() % 20000) * 100 + 50 + next(_base_ids) % 50
    command = [str(binary), "--config-path", str(config_path), "--concurrency", "1"]
    command += ["--base-id", str(base_id), "--disable-hot-restart", "--log-level", "warning"]
    command += ["--admin-address-path", str(address_path), "--file-flush-interval-msec", "20"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            user=user.uid,
            group=user.gid,
            extra_groups=[],
        )

    def admin_port() -> int | None:
        if process.poll() is not None:
            raise RuntimeError(f"envoy {name} exited with {process.returncode}:\n{tail(log_path)}")
        text = address_path.read_text().strip() if address_path.exists() else ""
        return int(text.rpartition(":")[2]) if text else None

    try:
        envoy = Envoy(
            process, wait_for(f"{name}'s admin address", admin_port), config_path, log_path
        )

        def live() -> bool:
            admin_port()  # raises if Envoy exited
            try:
                return envoy.admin("/ready").strip() == "LIVE"
            except OSError:
                return False

        wait_for(f"envoy {name} to be LIVE", live, 30)
    except BaseException:
        stop_process(process)
        raise
    return envoy


def secrets_of(envoy: Envoy) -> dict[str, Any]:
    """Envoy's active SDS secrets by name (private keys come back redacted)."""
    doc = json.loads(envoy.admin("/config_dump?resource=dynamic_active_secrets"))
    return {c["name"]: c["secret"] for c in doc.get("configs", []) if "secret" in c}


def pem_certificates(data_source: dict[str, Any]) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(base64.b64decode(data_source["inline_bytes"]))


def served_chain(envoy: Envoy, name: str) -> list[x509.Certificate]:
    return pem_certificates(secrets_of(envoy)[name]["tls_certificate"]["certificate_chain"])


def xfcc(reply: Reply) -> dict[str, str]:
    """The server sidecar's x-forwarded-client-cert, as the echo upstream received it."""
    value = reply.upstream.one("x-forwarded-client-cert")
    return dict(part.split("=", 1) for part in value.split(";"))


def leaf_hash(leaf: x509.Certificate) -> str:
    """What x-forwarded-client-cert calls ``Hash``: the SHA-256 of the certificate's DER."""
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def executable_envoy(directory: Path) -> Path:
    """A copy of Envoy that the sidecars' uids may execute (the installed one may sit under a
    0700 home directory)."""
    directory.mkdir(mode=0o755)
    binary = directory / "envoy"
    shutil.copy2(ENVOY_BINARY, binary)
    binary.chmod(0o755)
    return binary


def sidecar_values(authd: Authd, app_port: int, peer_max_requests: int) -> dict[str, object]:
    """The placeholders of deploy/envoy/sidecar-sds.yaml that every sidecar of a mesh shares."""
    return {
        "ADMIN_PORT": 0,
        "WORKLOAD_SOCKET": authd.data_dir / "workload.sock",
        "TRUST_DOMAIN": TRUST_DOMAIN,
        "INBOUND_ADDRESS": HOST,
        "INBOUND_PORT": 0,
        "OUTBOUND_PORT": 0,
        "APP_ADDRESS": HOST,
        "APP_PORT": app_port,
        "PEER_ADDRESS": HOST,
        "PEER_MAX_REQUESTS": peer_max_requests,
        "AUTHZ_ADDRESS": HOST,
        "AUTHZ_PORT": authd.grpc_port,
        "POLICY": "server",
        "JWT_AUDIENCE": "",
    }

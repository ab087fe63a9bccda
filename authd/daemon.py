"""``authd run``: the one process that hosts the CA and its APIs.

Start-up order: data directory (0711) → store → key store → CA (authorities created on first
start) → admin API behind the peer-credential gateway → rotation loop. Shutdown reverses it
and writes out the issuance log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authd.admin_service import AdminService
from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.config import Config
from authd.peercred import PeerCredGateway
from ca.certificate_authority import CASettings, CertificateAuthority, UpstreamAuthority
from ca.clock import Clock, SystemClock
from ca.keys import KeyStore, KeyType
from ca.spiffe_id import TrustDomain
from ca.store import Store, open_store

log = logging.getLogger("authd")

ADMIN_SERVICE = "authd.admin.v1.Admin"


class StartupError(Exception):
    """The daemon cannot start; the message says why in one line."""


def ca_settings(config: Config) -> CASettings:
    ca = config.ca
    return CASettings(
        key_type=KeyType.parse(ca.key_type),
        jwt_key_type=KeyType.parse(ca.jwt_key_type),
        ca_ttl=ca.ca_ttl,
        x509_svid_ttl=ca.x509_svid_ttl,
        jwt_svid_ttl=ca.jwt_svid_ttl,
        subject=ca.subject_name,
        refresh_hint=ca.bundle_refresh_hint,
    )


def load_upstream(config: Config) -> UpstreamAuthority | None:
    """The upstream CA from ``ca.upstream_cert``/``upstream_key``/``upstream_bundle``, if set."""
    cert_path, key_path = config.upstream_cert_path, config.upstream_key_path
    if cert_path is None or key_path is None:
        return None
    bundle_path = config.upstream_bundle_path or cert_path
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        roots = tuple(x509.load_pem_x509_certificates(bundle_path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot load the upstream CA: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise StartupError("ca.upstream_key must be an EC or RSA private key")
    if key.public_key() != certificate.public_key():
        raise StartupError("ca.upstream_key does not match ca.upstream_cert")
    return UpstreamAuthority(certificate, key, roots)


class Daemon:
    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self._stopping = asyncio.Event()
        self._store: Store | None = None
        self._ca: CertificateAuthority | None = None
        self._gateway: PeerCredGateway | None = None
        self._admin_server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()

    @property
    def ca(self) -> CertificateAuthority:
        assert self._ca is not None
        return self._ca

    async def start(self) -> None:
        config = self.config
        data_dir = config.data_dir
        try:
            # 0711: others may reach the admin socket by name (the API checks their uid) but
            # not list the directory; keys/ and private/ are 0700, the store files 0600.
            data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
            os.chmod(data_dir, 0o711)
        except OSError as exc:
            raise StartupError(f"cannot use data directory {data_dir}: {exc}") from None
        upstream = load_upstream(config)
        self._store = open_store(config.store_url, data_dir=data_dir)
        self._ca = CertificateAuthority(
            trust_domain=TrustDomain.parse(config.trust_domain),
            store=self._store,
            keystore=KeyStore(data_dir / "keys"),
            clock=self.clock,
            settings=ca_settings(config),
            upstream=upstream,
        )
        await self._start_admin(data_dir / "private")
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(ADMIN_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "authd serving trust domain %s; admin API on %s; data in %s",
            self.ca.trust_domain,
            config.admin_socket_path,
            data_dir,
        )

    async def _start_admin(self, private_dir: Path) -> None:
        gateway = PeerCredGateway(self.config.admin_socket_path, private_dir, public_mode=0o666)
        try:
            await gateway.start()
        except Exception as exc:
            raise StartupError(str(exc)) from None
        self._gateway = gateway
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminService(self.ca, gateway, self.config.admin.allows_uid), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        service_names = (
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(service_names, server)
        server.add_insecure_port(gateway.internal_address)
        await server.start()
        self._admin_server = server

    async def run_until_stopped(self) -> None:
        """Rotate authorities on schedule until ``stop()`` or SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        interval = self.config.ca.rotation_check_interval
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)
            if not self._stopping.is_set():
                self.rotate()

    def rotate(self) -> None:
        try:
            if self.ca.rotate():
                log.info("authorities rotated; bundle sequence %d", self.ca.bundle.sequence)
        except Exception:
            log.exception("authority rotation failed; will retry")

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        await self._health.enter_graceful_shutdown()
        if self._admin_server is not None:
            await self._admin_server.stop(grace=2)
        if self._gateway is not None:
            await self._gateway.close()
        if self._ca is not None:
            self._ca.close()
        if self._store is not None:
            self._store.close()
        log.info("authd stopped")


async def serve(config: Config) -> None:
    daemon = Daemon(config)
    try:
        await daemon.start()
        await daemon.run_until_stopped()
    finally:
        await daemon.close()

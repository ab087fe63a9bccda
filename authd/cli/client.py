"""The admin API as the CLI reaches it: the config, the channel (the local socket or mTLS),
and a failed call as one line."""

from __future__ import annotations

import argparse
import errno
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authd.admin.errors import STORE_FAILURE
from authd.api.authd.admin.v1 import admin_pb2_grpc
from authd.cli.errors import CommandError, Exit, exit_of_status
from authd.config import Config, load_config

__all__ = [
    "CommandError",
    "Exit",
    "admin_stub",
    "ask",
    "call",
    "cli_config",
    "connect",
    "rpc_error",
]

RPC_TIMEOUT = 30.0
NOT_RUNNING = "is `authd run` running (with the same --data-dir or config)?"


def cli_config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("AUTHD_CONFIG") or None
    overrides: dict[str, Any] = {"data_dir": args.data_dir}
    if getattr(args, "trust_domain", None):
        overrides["trust_domain"] = args.trust_domain
    if args.socket:
        overrides["admin.socket_path"] = args.socket
    return load_config(Path(path) if path else None, overrides=overrides)


def probe_socket(socket_path: Path) -> None:
    """Connect once to the admin socket, so a missing, stale or unreadable one is named."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(socket_path))
        except FileNotFoundError:
            raise CommandError(
                f"no authd admin socket at {socket_path}: {NOT_RUNNING}", Exit.UNAVAILABLE
            ) from None
        except PermissionError:
            raise CommandError(
                f"permission denied on the admin socket {socket_path}: run as root or a uid "
                "in admin.allowed_uids",
                Exit.PERMISSION,
            ) from None
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                raise CommandError(
                    f"nothing listens on the admin socket {socket_path} (left by a stopped "
                    f"daemon): {NOT_RUNNING}",
                    Exit.UNAVAILABLE,
                ) from None
            raise CommandError(
                f"cannot reach the admin socket {socket_path}: {exc.strerror}", Exit.UNAVAILABLE
            ) from None


def local_channel(config: Config) -> grpc.Channel:
    socket_path = config.admin_socket_path
    probe_socket(socket_path)
    return grpc.insecure_channel(f"unix:{socket_path}")


def read_pem(path: str, flag: str, kind: str) -> bytes:
    """A PEM file given to ``flag``, checked to hold ``kind`` (certificates or key)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"{flag}: cannot read {path}: {exc.strerror}", Exit.USAGE) from None
    try:
        if kind == "key":
            serialization.load_pem_private_key(data, password=None)
        else:
            x509.load_pem_x509_certificates(data)
    except (ValueError, TypeError):
        what = "an unencrypted PEM private key" if kind == "key" else "PEM certificates"
        raise CommandError(f"{flag}: {path} does not hold {what}", Exit.USAGE) from None
    return data


def remote_channel(args: argparse.Namespace) -> grpc.Channel:
    """The admin API of the authd at ``--server``, over mutual TLS with an X.509-SVID.

    grpc cannot show the client the server's certificate, so the server is recognised by
    the DNS SAN its SVID carries (``authd-admin``), checked against ``--bundle``.
    """
    from authd.admin.remote import ADMIN_TLS_NAME

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_pem(args.bundle, "--bundle", "certificates"),
        private_key=read_pem(args.key, "--key", "key"),
        certificate_chain=read_pem(args.cert, "--cert", "certificates"),
    )
    return grpc.secure_channel(
        args.server, credentials, options=[("grpc.ssl_target_name_override", ADMIN_TLS_NAME)]
    )


def connect(args: argparse.Namespace) -> grpc.Channel:
    """The admin API: of the authd at ``--server`` over mTLS, else on the local socket."""
    if getattr(args, "server", None):
        return remote_channel(args)
    return local_channel(cli_config(args))


def admin_stub(args: argparse.Namespace) -> tuple[grpc.Channel, admin_pb2_grpc.AdminStub]:
    channel = connect(args)
    return channel, admin_pb2_grpc.AdminStub(channel)


def rpc_error(exc: grpc.RpcError) -> CommandError:
    """A failed call as the one line and exit status the CLI reports."""
    code, details = exc.code(), exc.details() or ""
    # UNAVAILABLE is the daemon out of reach, unless the daemon itself says its store is.
    if code == grpc.StatusCode.UNAVAILABLE and not details.startswith(STORE_FAILURE):
        return CommandError(f"cannot reach the authd daemon: {details}", Exit.UNAVAILABLE)
    return CommandError(f"{code.name.lower().replace('_', ' ')}: {details}", exit_of_status(code))


def call(method: Callable[..., Any], request: Any, *, timeout: float = RPC_TIMEOUT) -> Any:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None


def ask(args: argparse.Namespace, method: str, request: Any) -> Any:
    """One admin API call (``method`` of the Admin service) on a channel of its own."""
    channel, admin = admin_stub(args)
    with channel:
        return call(getattr(admin, method), request)

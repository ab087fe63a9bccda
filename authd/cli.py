"""The ``authd`` command. ``authd run`` starts the daemon; every other subcommand is a client
of the running daemon's admin API (like ``spire-server`` and its admin socket) and never
opens the store itself. Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.config import Config, ConfigError, load_config, parse_duration
from ca.bundle import TrustBundle
from ca.spiffe_id import TrustDomain

RPC_TIMEOUT = 30.0


class CommandError(Exception):
    """A failure to report as one line and exit status 1."""


# --- configuration and the admin channel -----------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("AUTHD_CONFIG") or None
    overrides: dict[str, Any] = {"data_dir": args.data_dir}
    if getattr(args, "trust_domain", None):
        overrides["trust_domain"] = args.trust_domain
    if args.socket:
        overrides["admin.socket_path"] = args.socket
    return load_config(Path(path) if path else None, overrides=overrides)


def _channel(config: Config) -> grpc.Channel:
    socket_path = config.admin_socket_path
    try:
        exists = socket_path.exists()
    except OSError as exc:
        raise CommandError(f"cannot reach the admin socket {socket_path}: {exc.strerror}") from None
    if not exists:
        raise CommandError(
            f"no authd admin socket at {socket_path}: is `authd run` running "
            "(with the same --data-dir or config)?"
        )
    return grpc.insecure_channel(f"unix:{socket_path}")


def _admin(config: Config) -> tuple[grpc.Channel, admin_pb2_grpc.AdminStub]:
    channel = _channel(config)
    return channel, admin_pb2_grpc.AdminStub(channel)


def _call(method: Callable[..., Any], request: Any) -> Any:
    try:
        return method(request, timeout=RPC_TIMEOUT)
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise CommandError(f"cannot reach the authd daemon: {exc.details()}") from None
        raise CommandError(f"{code.name.lower().replace('_', ' ')}: {exc.details()}") from None


def _ttl(text: str | None) -> int:
    if not text:
        return 0
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CommandError(f"--ttl: {exc}") from None


def _when(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- subcommands -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import uvloop

    from authd.daemon import StartupError, serve

    config = _config(args)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        uvloop.run(serve(config))
    except StartupError as exc:
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    return 0


def cmd_healthcheck(args: argparse.Namespace) -> int:
    config = _config(args)
    with _channel(config) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        except grpc.RpcError as exc:
            raise CommandError(f"authd is not serving: {exc.details()}") from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        raise CommandError(f"authd is not serving: {status}")
    if not args.quiet:
        print("authd is serving")
    return 0


def cmd_ca_show(args: argparse.Namespace) -> int:
    channel, admin = _admin(_config(args))
    with channel:
        reply = _call(admin.ShowCA, admin_pb2.ShowCARequest())
    if args.json:
        print(
            json.dumps(
                {
                    "trust_domain": reply.trust_domain,
                    "bundle_sequence": reply.bundle_sequence,
                    "upstream": reply.upstream,
                    "authorities": [
                        {
                            "authority_id": a.authority_id,
                            "kind": a.kind,
                            "state": a.state,
                            "key_type": a.key_type,
                            "not_before": _when(a.not_before),
                            "not_after": _when(a.not_after),
                            "subject": a.subject,
                            "tainted": a.tainted,
                            "revoked": a.revoked,
                        }
                        for a in reply.authorities
                    ],
                },
                indent=2,
            )
        )
        return 0
    print(f"Trust domain:    {reply.trust_domain}")
    print(f"Upstream CA:     {'yes' if reply.upstream else 'no (self-signed)'}")
    print(f"Bundle sequence: {reply.bundle_sequence}")
    for kind, title in (("x509", "X.509 authorities"), ("jwt", "JWT authorities")):
        print(f"\n{title}:")
        for a in reply.authorities:
            if a.kind == kind:
                flags = "".join((" tainted" if a.tainted else "", " revoked" if a.revoked else ""))
                print(
                    f"  {a.authority_id}  {a.state:<8}  {a.key_type:<8}  "
                    f"{_when(a.not_before)} .. {_when(a.not_after)}{flags}"
                )
    return 0


def _new_key(key_type: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def cmd_x509_mint(args: argparse.Namespace) -> int:
    config = _config(args)
    ttl = _ttl(args.ttl)
    out = Path(args.out)
    key = _new_key(args.key_type)
    # The key never leaves this process: the daemon sees only a CSR (proof of possession).
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    channel, admin = _admin(config)
    with channel:
        reply = _call(
            admin.MintX509SVID,
            admin_pb2.MintX509SVIDRequest(
                spiffe_id=args.spiffe_id, dns_names=args.dns, ttl_seconds=ttl, csr=csr
            ),
        )
    pem = serialization.Encoding.PEM
    chain = b"".join(x509.load_der_x509_certificate(d).public_bytes(pem) for d in reply.cert_chain)
    bundle = b"".join(x509.load_der_x509_certificate(d).public_bytes(pem) for d in reply.bundle)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "svid.pem", chain, 0o644)
        _write(
            out / "svid.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            0o600,
        )
        _write(out / "bundle.pem", bundle, 0o644)
    except OSError as exc:
        raise CommandError(f"cannot write to {out}: {exc}") from None
    print(
        f"X.509-SVID {args.spiffe_id} serial {reply.serial} expires {_when(reply.expires_at)}; "
        f"wrote {out / 'svid.pem'}, {out / 'svid.key'}, {out / 'bundle.pem'}"
    )
    return 0


def cmd_jwt_mint(args: argparse.Namespace) -> int:
    config = _config(args)
    ttl = _ttl(args.ttl)
    channel, admin = _admin(config)
    with channel:
        reply = _call(
            admin.MintJWTSVID,
            admin_pb2.MintJWTSVIDRequest(
                spiffe_id=args.spiffe_id, audience=args.audience, ttl_seconds=ttl
            ),
        )
    print(reply.token)
    return 0


def cmd_bundle_show(args: argparse.Namespace) -> int:
    channel, admin = _admin(_config(args))
    with channel:
        reply = _call(admin.GetBundle, admin_pb2.GetBundleRequest())
    sys.stdout.write(reply.pem if args.format == "pem" else reply.spiffe_jwks + "\n")
    return 0


def _bundle_for_policy_check(config: Config) -> tuple[TrustBundle, str]:
    """The daemon's trust bundle over the admin API, or an empty one and a note why not."""
    trust_domain = TrustDomain.parse(config.trust_domain)
    try:
        channel, admin = _admin(config)
        with channel:
            reply = _call(admin.GetBundle, admin_pb2.GetBundleRequest())
    except CommandError as exc:
        note = f"note: no trust bundle ({exc}); SVIDs and certificates cannot be verified"
        return TrustBundle(trust_domain), note
    return TrustBundle.parse(reply.spiffe_jwks, trust_domain), ""


DENIED_EXIT = 3


def cmd_policy_check(args: argparse.Namespace) -> int:
    import asyncio

    from google.protobuf.json_format import ParseDict
    from google.protobuf.json_format import ParseError as ProtoParseError

    from authd.authz import service as authz_service
    from authd.authz.grpc_service import context_from_check_request
    from authd.policy.base import PolicyError
    from ca.clock import SystemClock

    config = _config(args)
    try:
        document = json.loads(Path(args.input).read_text())
        attributes = document.get("attributes") if isinstance(document, dict) else None
        if not isinstance(attributes, dict):
            raise CommandError(f"{args.input}: expected a JSON object with 'attributes'")
        request = ParseDict({"attributes": attributes}, CheckRequest(), ignore_unknown_fields=True)
    except OSError as exc:
        raise CommandError(f"cannot read {args.input}: {exc.strerror}") from None
    except (ValueError, ProtoParseError) as exc:
        raise CommandError(f"{args.input}: not a CheckRequest or OPA-Envoy input: {exc}") from None
    bundle, note = _bundle_for_policy_check(config)
    try:
        policy = authz_service.policy_source(config).load()
        resolver = authz_service.build_resolver(config, bundle=lambda: bundle, clock=SystemClock())
    except (PolicyError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    authorizer = authz_service.build_authorizer(config, resolver=resolver, policy=lambda: policy)
    ctx = context_from_check_request(request)
    outcome = asyncio.run(authorizer.check(ctx))
    identities = outcome.identities
    explain = getattr(policy, "explain", None)
    explanation: list[str] = explain(ctx, identities) if explain is not None else []
    decision = outcome.decision
    report = {
        "allowed": outcome.allowed,
        "status": outcome.status,
        "reason": str(decision.reason),
        "rule": decision.rule,
        "policy": policy.name,
        "identities": {
            "peer": str(identities.peer) if identities.peer else None,
            "peer_serial": identities.peer_serial,
            "workload": str(identities.workload) if identities.workload else None,
            "user": identities.user.subject if identities.user else None,
            "api_key": identities.api_key,
            "problems": [f"{p.kind}: {p.reason}" for p in identities.problems],
        },
        "upstream_headers": outcome.upstream_headers,
        "removed_headers": outcome.remove_headers,
        "explanation": explanation,
    }
    if note:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        verdict = "ALLOW" if outcome.allowed else f"DENY {outcome.status}"
        print(f"{verdict}  reason={decision.reason}  rule={decision.rule or '-'}")
        print(f"policy: {policy.name}")
        print("identities:")
        for key, value in report["identities"].items():  # type: ignore[attr-defined]
            if value:
                print(f"  {key}: {value}")
        if not identities.authenticated and not identities.problems:
            print("  (none: no verified credential in the request)")
        for line in explanation:
            print(f"  {line}")
        for name, value in outcome.upstream_headers.items():
            print(f"upstream header {name}: {value}")
    return 0 if outcome.allowed else DENIED_EXIT


def cmd_apikey_hash(args: argparse.Namespace) -> int:
    from authd.authz.api_keys import hash_api_key

    key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        raise CommandError("no API key on standard input")
    print(f'[[keys]]\nname = "{args.name}"\nsha256 = "{hash_api_key(key)}"')
    return 0


# --- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help="TOML config file (default: $AUTHD_CONFIG, else none)"
    )
    common.add_argument(
        "--data-dir", metavar="DIR", help="where state lives (default: /var/lib/authd for root)"
    )
    common.add_argument(
        "--socket", metavar="PATH", help="admin socket (default: <data-dir>/admin.sock)"
    )

    parser = argparse.ArgumentParser(
        prog="authd",
        description="A SPIFFE certificate authority and Envoy ext_authz decision point.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    run = commands.add_parser("run", parents=[common], help="run the daemon")
    run.add_argument("--trust-domain", metavar="NAME", help="trust domain (default example.org)")
    run.set_defaults(func=cmd_run)

    check = commands.add_parser(
        "healthcheck", parents=[common], help="exit 0 if the daemon is serving"
    )
    check.add_argument("--quiet", action="store_true", help="print nothing on success")
    check.set_defaults(func=cmd_healthcheck)

    ca = commands.add_parser("ca", help="the certificate authority").add_subparsers(
        dest="ca_command", metavar="<command>", required=True
    )
    show = ca.add_parser("show", parents=[common], help="trust domain and authorities")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_ca_show)

    x509_commands = commands.add_parser("x509", help="X.509-SVIDs").add_subparsers(
        dest="x509_command", metavar="<command>", required=True
    )
    mint = x509_commands.add_parser(
        "mint", parents=[common], help="mint an X.509-SVID (key made locally, sent as a CSR)"
    )
    mint.add_argument("--spiffe-id", required=True, metavar="ID", help="spiffe://trust-domain/path")
    mint.add_argument("--dns", action="append", default=[], metavar="NAME", help="DNS SAN (repeat)")
    mint.add_argument("--ttl", metavar="DURATION", help="e.g. 30m (default: ca.x509_svid_ttl)")
    mint.add_argument(
        "--key-type",
        default="ec-p256",
        choices=["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"],
        help="key to generate (default ec-p256)",
    )
    mint.add_argument(
        "--out", required=True, metavar="DIR", help="writes svid.pem, svid.key, bundle.pem"
    )
    mint.set_defaults(func=cmd_x509_mint)

    jwt_commands = commands.add_parser("jwt", help="JWT-SVIDs").add_subparsers(
        dest="jwt_command", metavar="<command>", required=True
    )
    jwt_mint = jwt_commands.add_parser("mint", parents=[common], help="mint a JWT-SVID")
    jwt_mint.add_argument("--spiffe-id", required=True, metavar="ID")
    jwt_mint.add_argument(
        "--audience", action="append", required=True, metavar="AUD", help="audience (repeat)"
    )
    jwt_mint.add_argument("--ttl", metavar="DURATION", help="e.g. 5m (default: ca.jwt_svid_ttl)")
    jwt_mint.set_defaults(func=cmd_jwt_mint)

    bundle = commands.add_parser("bundle", help="the trust bundle").add_subparsers(
        dest="bundle_command", metavar="<command>", required=True
    )
    bundle_show = bundle.add_parser("show", parents=[common], help="print the trust bundle")
    bundle_show.add_argument("--format", choices=["spiffe", "pem"], default="spiffe")
    bundle_show.set_defaults(func=cmd_bundle_show)

    policy = commands.add_parser("policy", help="the authorization policy").add_subparsers(
        dest="policy_command", metavar="<command>", required=True
    )
    policy_check = policy.add_parser(
        "check",
        parents=[common],
        help="decide a request offline and explain why (exit 0 allow, 3 deny)",
    )
    policy_check.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help="a CheckRequest as JSON, or an OPA-Envoy input document (uses 'attributes')",
    )
    policy_check.add_argument("--json", action="store_true", help="print JSON")
    policy_check.set_defaults(func=cmd_policy_check)

    apikey = commands.add_parser("apikey", help="API keys for ext_authz").add_subparsers(
        dest="apikey_command", metavar="<command>", required=True
    )
    apikey_hash = apikey.add_parser(
        "hash", help="read a key on stdin, print its entry for authz.api_keys_file"
    )
    apikey_hash.add_argument("--name", required=True, help="the key's name in policies")
    apikey_hash.set_defaults(func=cmd_apikey_hash)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except (CommandError, ConfigError) as exc:
        print(f"authd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

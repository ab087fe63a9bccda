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
from authd.config import Config, ConfigError, format_duration, load_config, parse_duration
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


def _read_pem(path: str, flag: str, kind: str) -> bytes:
    """A PEM file given to ``flag``, checked to hold ``kind`` (certificates or key)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    try:
        if kind == "key":
            serialization.load_pem_private_key(data, password=None)
        else:
            x509.load_pem_x509_certificates(data)
    except (ValueError, TypeError):
        what = "an unencrypted PEM private key" if kind == "key" else "PEM certificates"
        raise CommandError(f"{flag}: {path} does not hold {what}") from None
    return data


def _remote_channel(args: argparse.Namespace) -> grpc.Channel:
    """The admin API of the authd at ``--server``, over mutual TLS with an X.509-SVID.

    grpc cannot show the client the server's certificate, so the server is recognised by
    the DNS SAN its SVID carries (``authd-admin``), checked against ``--bundle``.
    """
    from authd.admin.remote import ADMIN_TLS_NAME

    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_pem(args.bundle, "--bundle", "certificates"),
        private_key=_read_pem(args.key, "--key", "key"),
        certificate_chain=_read_pem(args.cert, "--cert", "certificates"),
    )
    return grpc.secure_channel(
        args.server, credentials, options=[("grpc.ssl_target_name_override", ADMIN_TLS_NAME)]
    )


def _connect(args: argparse.Namespace) -> grpc.Channel:
    """The admin API: of the authd at ``--server`` over mTLS, else on the local socket."""
    if getattr(args, "server", None):
        return _remote_channel(args)
    return _channel(_config(args))


def _admin(args: argparse.Namespace) -> tuple[grpc.Channel, admin_pb2_grpc.AdminStub]:
    channel = _connect(args)
    return channel, admin_pb2_grpc.AdminStub(channel)


def _call(method: Callable[..., Any], request: Any) -> Any:
    try:
        return method(request, timeout=RPC_TIMEOUT)
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise CommandError(f"cannot reach the authd daemon: {exc.details()}") from None
        raise CommandError(f"{code.name.lower().replace('_', ' ')}: {exc.details()}") from None


def _ttl(text: str | None, flag: str = "--ttl") -> int:
    if not text:
        return 0
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CommandError(f"{flag}: {exc}") from None


def _timestamp(text: str, flag: str) -> int:
    """Unix seconds from digits or an RFC 3339 time with a zone (``2030-01-01T00:00:00Z``)."""
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{flag}: {text!r} is not an RFC 3339 time or Unix seconds") from None
    if when.tzinfo is None:
        raise CommandError(f"{flag}: {text!r} has no time zone; add 'Z' or an offset like +02:00")
    return int(when.timestamp())


def _when(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- subcommands -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import uvloop

    from authd.app.daemon import StartupError, serve

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
    with _connect(args) as channel:
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


def _authority_json(a: admin_pb2.Authority) -> dict[str, Any]:
    return {
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


def _authority_line(a: admin_pb2.Authority) -> str:
    flags = "".join((" tainted" if a.tainted else "", " revoked" if a.revoked else ""))
    return (
        f"  {a.authority_id}  {a.state:<8}  {a.key_type:<8}  "
        f"{_when(a.not_before)} .. {_when(a.not_after)}{flags}"
    )


def cmd_ca_show(args: argparse.Namespace) -> int:
    channel, admin = _admin(args)
    with channel:
        reply = _call(admin.ShowCA, admin_pb2.ShowCARequest())
    if args.json:
        print(
            json.dumps(
                {
                    "trust_domain": reply.trust_domain,
                    "bundle_sequence": reply.bundle_sequence,
                    "upstream": reply.upstream,
                    "authorities": [_authority_json(a) for a in reply.authorities],
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
                print(_authority_line(a))
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
    channel, admin = _admin(args)
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
    ttl = _ttl(args.ttl)
    channel, admin = _admin(args)
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
    channel, admin = _admin(args)
    with channel:
        reply = _call(admin.GetBundle, admin_pb2.GetBundleRequest())
    sys.stdout.write(reply.pem if args.format == "pem" else reply.spiffe_jwks + "\n")
    return 0


# --- registration entries ---------------------------------------------------------------------


def _selector(text: str) -> admin_pb2.Selector:
    # Split only; the daemon checks the type, key and value and names the bad one.
    type_, _, value = text.partition(":")
    return admin_pb2.Selector(type=type_, value=value)


def _apply_entry_flags(entry: admin_pb2.Entry, args: argparse.Namespace) -> None:
    """Set the fields given on the command line; the others keep their value."""
    if args.spiffe_id is not None:
        entry.spiffe_id = args.spiffe_id
    if args.parent_id is not None:
        entry.parent_id = args.parent_id
    if args.selector is not None:
        del entry.selectors[:]
        entry.selectors.extend(_selector(s) for s in args.selector)
    if args.x509_svid_ttl is not None:
        entry.x509_svid_ttl = _ttl(args.x509_svid_ttl, "--x509-svid-ttl")
    if args.jwt_svid_ttl is not None:
        entry.jwt_svid_ttl = _ttl(args.jwt_svid_ttl, "--jwt-svid-ttl")
    if args.dns is not None or getattr(args, "clear_dns", False):
        entry.dns_names[:] = args.dns or []
    if args.federates_with is not None or getattr(args, "clear_federates_with", False):
        entry.federates_with[:] = args.federates_with or []
    if args.admin is not None:
        entry.admin = args.admin
    if args.downstream is not None:
        entry.downstream = args.downstream
    if args.hint is not None:
        entry.hint = args.hint
    if args.expires_at is not None:
        entry.expires_at = _timestamp(args.expires_at, "--expires-at")


def _entry_json(entry: admin_pb2.Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "spiffe_id": entry.spiffe_id,
        "parent_id": entry.parent_id,
        "selectors": [f"{s.type}:{s.value}" for s in entry.selectors],
        "x509_svid_ttl": entry.x509_svid_ttl,
        "jwt_svid_ttl": entry.jwt_svid_ttl,
        "dns_names": list(entry.dns_names),
        "federates_with": list(entry.federates_with),
        "admin": entry.admin,
        "downstream": entry.downstream,
        "hint": entry.hint,
        "expires_at": entry.expires_at,
        "revision": entry.revision,
        "created_at": entry.created_at,
    }


def _entry_lines(entry: admin_pb2.Entry) -> list[str]:
    """The entry as ``spire-server entry show`` prints it."""

    def ttl(seconds: int) -> str:
        return format_duration(seconds) if seconds else "default"

    fields = [
        ("Entry ID", entry.id),
        ("SPIFFE ID", entry.spiffe_id),
        ("Parent ID", entry.parent_id),
        ("Revision", str(entry.revision)),
        ("X509-SVID TTL", ttl(entry.x509_svid_ttl)),
        ("JWT-SVID TTL", ttl(entry.jwt_svid_ttl)),
    ]
    if entry.expires_at:
        fields.append(("Expiration time", _when(entry.expires_at)))
    fields += [("Selector", f"{s.type}:{s.value}") for s in entry.selectors]
    fields += [("FederatesWith", name) for name in entry.federates_with]
    fields += [("DNS name", name) for name in entry.dns_names]
    if entry.admin:
        fields.append(("Admin", "true"))
    if entry.downstream:
        fields.append(("Downstream", "true"))
    if entry.hint:
        fields.append(("Hint", entry.hint))
    if entry.created_at:
        fields.append(("Created at", _when(entry.created_at)))
    return [f"{name:<16} : {value}" for name, value in fields]


def _print_entry(entry: admin_pb2.Entry, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_entry_json(entry), indent=2))
    else:
        print("\n".join(_entry_lines(entry)))


def cmd_entry_create(args: argparse.Namespace) -> int:
    entry = admin_pb2.Entry(id=args.entry_id or "")
    _apply_entry_flags(entry, args)
    channel, admin = _admin(args)
    with channel:
        reply = _call(admin.CreateEntry, admin_pb2.CreateEntryRequest(entry=entry))
    _print_entry(reply.entry, args.json)
    return 0


def cmd_entry_show(args: argparse.Namespace) -> int:
    channel, admin = _admin(args)
    with channel:
        reply = _call(admin.GetEntry, admin_pb2.GetEntryRequest(id=args.id))
    _print_entry(reply.entry, args.json)
    return 0


def cmd_entry_list(args: argparse.Namespace) -> int:
    channel, admin = _admin(args)
    request = admin_pb2.ListEntriesRequest(
        spiffe_id=args.spiffe_id or "", parent_id=args.parent_id or "", selector=args.selector or ""
    )
    with channel:
        reply = _call(admin.ListEntries, request)
    if args.json:
        print(json.dumps({"entries": [_entry_json(e) for e in reply.entries]}, indent=2))
        return 0
    count = len(reply.entries)
    print(f"Found {count} {'entry' if count == 1 else 'entries'}")
    for entry in reply.entries:
        print()
        print("\n".join(_entry_lines(entry)))
    return 0


def cmd_entry_update(args: argparse.Namespace) -> int:
    channel, admin = _admin(args)
    with channel:
        current = _call(admin.GetEntry, admin_pb2.GetEntryRequest(id=args.id)).entry
        entry = admin_pb2.Entry()
        entry.CopyFrom(current)
        _apply_entry_flags(entry, args)
        # Without --revision the update is based on what was just read, so a change made
        # by someone else in between is refused rather than overwritten.
        if args.revision is not None:
            entry.revision = args.revision
        reply = _call(admin.UpdateEntry, admin_pb2.UpdateEntryRequest(entry=entry))
    _print_entry(reply.entry, args.json)
    return 0


def cmd_entry_delete(args: argparse.Namespace) -> int:
    channel, admin = _admin(args)
    with channel:
        _call(admin.DeleteEntry, admin_pb2.DeleteEntryRequest(id=args.id))
    print(f"Deleted entry {args.id}")
    return 0


# --- operator-driven authority rotation --------------------------------------------------------


def cmd_authority_show(args: argparse.Namespace) -> int:
    channel, admin = _admin(args)
    with channel:
        reply = _call(admin.ShowCA, admin_pb2.ShowCARequest())
    if args.json:
        print(
            json.dumps(
                {
                    "bundle_sequence": reply.bundle_sequence,
                    "authorities": [_authority_json(a) for a in reply.authorities],
                },
                indent=2,
            )
        )
        return 0
    print(f"Bundle sequence: {reply.bundle_sequence}")
    for kind, title in (("x509", "X.509 authorities"), ("jwt", "JWT authorities")):
        print(f"\n{title}:")
        for state in ("active", "prepared", "retired"):
            for a in reply.authorities:
                if a.kind == kind and a.state == state:
                    print(_authority_line(a))
    return 0


def _authority_step(
    args: argparse.Namespace, method: str, request: Any, done: str
) -> admin_pb2.AuthorityResponse:
    channel, admin = _admin(args)
    with channel:
        reply: admin_pb2.AuthorityResponse = _call(getattr(admin, method), request)
    a = reply.authority
    print(f"{done} {a.kind} authority {a.authority_id}; bundle sequence {reply.bundle_sequence}")
    return reply


def cmd_authority_prepare(args: argparse.Namespace) -> int:
    request = admin_pb2.PrepareAuthorityRequest(kind=args.kind)
    _authority_step(args, "PrepareAuthority", request, "Prepared")
    return 0


def cmd_authority_activate(args: argparse.Namespace) -> int:
    request = admin_pb2.ActivateAuthorityRequest(kind=args.kind)
    _authority_step(args, "ActivateAuthority", request, "Activated")
    return 0


def cmd_authority_taint(args: argparse.Namespace) -> int:
    request = admin_pb2.TaintAuthorityRequest(kind=args.kind, authority_id=args.id)
    _authority_step(args, "TaintAuthority", request, "Tainted")
    return 0


def cmd_authority_revoke(args: argparse.Namespace) -> int:
    request = admin_pb2.RevokeAuthorityRequest(kind=args.kind, authority_id=args.id)
    _authority_step(args, "RevokeAuthority", request, "Revoked")
    return 0


# --- revocation, the issuance log and the audit log ------------------------------------------

# The CLI spells kinds as flags are spelled; the API as fields are.
REVOCATION_KINDS = {"serial": "serial", "spiffe-id": "spiffe_id", "entry": "entry"}


def _cli_kind(kind: str) -> str:
    return kind.replace("_", "-")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell; the last one is not padded."""
    table = [headers, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers) - 1)]
    return [
        "  ".join([*(row[i].ljust(width) for i, width in enumerate(widths)), row[-1]]).rstrip()
        for row in table
    ]


def _revocation_json(r: admin_pb2.Revocation) -> dict[str, Any]:
    return {
        "kind": _cli_kind(r.kind),
        "target": r.target,
        "reason": r.reason,
        "reason_code": r.reason_code,
        "note": r.note,
        "revoked_at": _when(r.revoked_at),
        "revoked_by": r.revoked_by,
    }


def cmd_revoke(args: argparse.Namespace) -> int:
    request = admin_pb2.RevokeRequest(
        kind=REVOCATION_KINDS[args.kind], target=args.target, reason=args.reason, note=args.note
    )
    channel, admin = _admin(args)
    with channel:
        reply = _call(admin.Revoke, request)
    r = reply.revocation
    print(f"Revoked {args.kind} {r.target} ({r.reason}) at {_when(r.revoked_at)}")
    return 0


def cmd_unrevoke(args: argparse.Namespace) -> int:
    request = admin_pb2.UnrevokeRequest(kind=REVOCATION_KINDS[args.kind], target=args.target)
    channel, admin = _admin(args)
    with channel:
        reply = _call(admin.Unrevoke, request)
    print(f"Lifted the revocation of {args.kind} {reply.lifted.target} ({reply.lifted.reason})")
    return 0


def cmd_revocations_list(args: argparse.Namespace) -> int:
    kind = REVOCATION_KINDS[args.kind] if args.kind else ""
    channel, admin = _admin(args)
    with channel:
        reply = _call(admin.ListRevocations, admin_pb2.ListRevocationsRequest(kind=kind))
    revocations = [_revocation_json(r) for r in reply.revocations]
    if args.json:
        print(json.dumps({"revocations": revocations}, indent=2))
        return 0
    count = len(revocations)
    print(f"Found {count} {'revocation' if count == 1 else 'revocations'}")
    if revocations:
        columns = ("kind", "target", "reason", "revoked_at", "revoked_by", "note")
        rows = [[r[c] for c in columns] for r in revocations]
        print("\n".join(_table(("KIND", "TARGET", "REASON", "REVOKED AT", "BY", "NOTE"), rows)))
    return 0


def _svid_json(svid: admin_pb2.Svid) -> dict[str, Any]:
    requester = svid.requester
    return {
        "serial": svid.serial,
        "kind": svid.kind,
        "spiffe_id": svid.spiffe_id,
        "authority_id": svid.authority_id,
        "not_before": _when(svid.not_before),
        "not_after": _when(svid.not_after),
        "issued_at": _when(svid.issued_at),
        "requester": requester,
        "entry_id": requester.removeprefix("entry:") if requester.startswith("entry:") else None,
        "revoked": svid.HasField("revocation"),
        "revocation": _revocation_json(svid.revocation) if svid.HasField("revocation") else None,
    }


def cmd_svid_list(args: argparse.Namespace) -> int:
    request = admin_pb2.ListSvidsRequest(
        authority_id=args.authority, spiffe_id=args.spiffe_id or ""
    )
    channel, admin = _admin(args)
    with channel:
        reply = _call(admin.ListSvids, request)
    svids = [_svid_json(s) for s in reply.svids]
    if args.json:
        print(json.dumps({"svids": svids}, indent=2))
        return 0
    count = len(svids)
    print(f"Found {count} {'SVID' if count == 1 else 'SVIDs'} signed by authority {args.authority}")
    if svids:
        rows = [
            [
                s["serial"],
                s["spiffe_id"],
                s["not_after"],
                s["requester"],
                f"{s['revocation']['reason']} ({s['revocation']['kind']})"
                if s["revoked"]
                else "no",
            ]
            for s in svids
        ]
        print("\n".join(_table(("SERIAL", "SPIFFE ID", "NOT AFTER", "REQUESTER", "REVOKED"), rows)))
    return 0


def _audit_json(record: admin_pb2.AuditRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "time": _when(record.time),
        "actor": record.actor,
        "action": record.action,
        "subject": record.subject,
        "details": json.loads(record.details_json),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def cmd_audit_log(args: argparse.Namespace) -> int:
    request = admin_pb2.ListAuditRequest(
        since=_timestamp(args.since, "--since") if args.since else 0,
        subject=args.subject or "",
        spiffe_id=args.spiffe_id or "",
    )
    channel, admin = _admin(args)
    with channel:
        reply = _call(admin.ListAudit, request)
    if args.json:
        print(json.dumps({"records": [_audit_json(r) for r in reply.records]}, indent=2))
        return 0
    rows = [
        [str(r.seq), _when(r.time), r.actor, r.action, r.subject, r.details_json]
        for r in reply.records
    ]
    print("\n".join(_table(("SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT", "DETAILS"), rows)))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    channel, admin = _admin(args)
    with channel:
        reply = _call(admin.VerifyAudit, admin_pb2.VerifyAuditRequest())
    records = f"{reply.records} {'record' if reply.records == 1 else 'records'}"
    if not reply.intact:
        raise CommandError(
            f"audit log broken at record {reply.broken_seq}: {reply.problem} ({records} read)"
        )
    print(f"audit log intact: {records}, last hash {reply.last_hash}")
    return 0


def _bundle_for_policy_check(config: Config) -> tuple[TrustBundle, str]:
    """The daemon's trust bundle over the admin API, or an empty one and a note why not."""
    trust_domain = TrustDomain.parse(config.trust_domain)
    try:
        channel = _channel(config)
        with channel:
            reply = _call(admin_pb2_grpc.AdminStub(channel).GetBundle, admin_pb2.GetBundleRequest())
    except CommandError as exc:
        note = f"note: no trust bundle ({exc}); SVIDs and certificates cannot be verified"
        return TrustBundle(trust_domain), note
    return TrustBundle.parse(reply.spiffe_jwks, trust_domain), ""


DENIED_EXIT = 3


def cmd_policy_check(args: argparse.Namespace) -> int:
    import asyncio

    from google.protobuf.json_format import ParseDict
    from google.protobuf.json_format import ParseError as ProtoParseError

    from authd.authz import assembly as authz_service
    from authd.extauthz.grpc_servicer import context_from_check_request
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


def _add_entry_flags(parser: argparse.ArgumentParser, *, update: bool) -> None:
    parser.add_argument(
        "--spiffe-id", required=not update, metavar="ID", help="spiffe://trust-domain/path"
    )
    parser.add_argument(
        "--parent-id", metavar="ID", help="default: spiffe://<trust-domain>/authd (authd itself)"
    )
    parser.add_argument(
        "--selector",
        action="append",
        required=not update,
        metavar="TYPE:KEY:VALUE",
        help="e.g. unix:uid:1000 (repeat; all must match)"
        + ("; replaces all selectors" if update else ""),
    )
    parser.add_argument("--x509-svid-ttl", metavar="DURATION", help="0: the CA's default")
    parser.add_argument("--jwt-svid-ttl", metavar="DURATION", help="0: the CA's default")
    dns = parser.add_mutually_exclusive_group()
    dns.add_argument("--dns", action="append", metavar="NAME", help="DNS SAN (repeat)")
    federates = parser.add_mutually_exclusive_group()
    federates.add_argument(
        "--federates-with", action="append", metavar="TRUST_DOMAIN", help="(repeat)"
    )
    if update:
        dns.add_argument("--clear-dns", action="store_true", help="remove every DNS name")
        federates.add_argument(
            "--clear-federates-with", action="store_true", help="federate with no one"
        )
    for flag in ("--admin", "--downstream"):
        parser.add_argument(
            flag,
            action=argparse.BooleanOptionalAction,
            default=None,
            help="SPIRE's flag of that name (stored, not yet acted on)",
        )
    parser.add_argument("--hint", metavar="TEXT", help="tells a workload's SVIDs apart")
    parser.add_argument(
        "--expires-at", metavar="TIME", help="RFC 3339 (2030-01-01T00:00:00Z) or Unix seconds"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


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
    # Every command that calls the admin API can call a remote authd over mutual TLS.
    client = argparse.ArgumentParser(add_help=False, parents=[common])
    remote = client.add_argument_group("remote admin over mTLS (all four together)")
    remote.add_argument(
        "--server", metavar="HOST:PORT", help="the admin.mtls_address of a remote authd"
    )
    remote.add_argument("--cert", metavar="FILE", help="your X.509-SVID, PEM (e.g. svid.pem)")
    remote.add_argument("--key", metavar="FILE", help="its private key, PEM (e.g. svid.key)")
    remote.add_argument("--bundle", metavar="FILE", help="the trust bundle, PEM (bundle.pem)")

    parser = argparse.ArgumentParser(
        prog="authd",
        description="A SPIFFE certificate authority and Envoy ext_authz decision point.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    run = commands.add_parser("run", parents=[common], help="run the daemon")
    run.add_argument("--trust-domain", metavar="NAME", help="trust domain (default example.org)")
    run.set_defaults(func=cmd_run)

    check = commands.add_parser(
        "healthcheck", parents=[client], help="exit 0 if the daemon is serving"
    )
    check.add_argument("--quiet", action="store_true", help="print nothing on success")
    check.set_defaults(func=cmd_healthcheck)

    ca = commands.add_parser("ca", help="the certificate authority").add_subparsers(
        dest="ca_command", metavar="<command>", required=True
    )
    show = ca.add_parser("show", parents=[client], help="trust domain and authorities")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_ca_show)

    x509_commands = commands.add_parser("x509", help="X.509-SVIDs").add_subparsers(
        dest="x509_command", metavar="<command>", required=True
    )
    mint = x509_commands.add_parser(
        "mint", parents=[client], help="mint an X.509-SVID (key made locally, sent as a CSR)"
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
    jwt_mint = jwt_commands.add_parser("mint", parents=[client], help="mint a JWT-SVID")
    jwt_mint.add_argument("--spiffe-id", required=True, metavar="ID")
    jwt_mint.add_argument(
        "--audience", action="append", required=True, metavar="AUD", help="audience (repeat)"
    )
    jwt_mint.add_argument("--ttl", metavar="DURATION", help="e.g. 5m (default: ca.jwt_svid_ttl)")
    jwt_mint.set_defaults(func=cmd_jwt_mint)

    bundle = commands.add_parser("bundle", help="the trust bundle").add_subparsers(
        dest="bundle_command", metavar="<command>", required=True
    )
    bundle_show = bundle.add_parser("show", parents=[client], help="print the trust bundle")
    bundle_show.add_argument("--format", choices=["spiffe", "pem"], default="spiffe")
    bundle_show.set_defaults(func=cmd_bundle_show)

    entry = commands.add_parser("entry", help="registration entries").add_subparsers(
        dest="entry_command", metavar="<command>", required=True
    )
    entry_create = entry.add_parser("create", parents=[client], help="create an entry")
    entry_create.add_argument(
        "--entry-id", metavar="ID", help="the entry's id (default: generated)"
    )
    _add_entry_flags(entry_create, update=False)
    entry_create.set_defaults(func=cmd_entry_create)
    entry_show = entry.add_parser("show", parents=[client], help="show one entry")
    entry_show.add_argument("id", metavar="ID")
    entry_show.add_argument("--json", action="store_true", help="print JSON")
    entry_show.set_defaults(func=cmd_entry_show)
    entry_list = entry.add_parser("list", parents=[client], help="list entries")
    entry_list.add_argument("--spiffe-id", metavar="ID", help="only entries for this SPIFFE ID")
    entry_list.add_argument("--parent-id", metavar="ID", help="only entries under this parent")
    entry_list.add_argument(
        "--selector", metavar="TYPE:KEY:VALUE", help="only entries with this selector"
    )
    entry_list.add_argument("--json", action="store_true", help="print JSON")
    entry_list.set_defaults(func=cmd_entry_list)
    entry_update = entry.add_parser(
        "update", parents=[client], help="change an entry (flags not given keep their value)"
    )
    entry_update.add_argument("id", metavar="ID")
    entry_update.add_argument(
        "--revision",
        type=int,
        metavar="N",
        help="refuse the update unless the entry is at revision N (default: as just read)",
    )
    _add_entry_flags(entry_update, update=True)
    entry_update.set_defaults(func=cmd_entry_update)
    entry_delete = entry.add_parser("delete", parents=[client], help="delete an entry")
    entry_delete.add_argument("id", metavar="ID")
    entry_delete.set_defaults(func=cmd_entry_delete)

    authority = commands.add_parser(
        "authority", help="rotate the CA's authorities by hand"
    ).add_subparsers(dest="authority_command", metavar="<command>", required=True)
    authority_show = authority.add_parser(
        "show", parents=[client], help="every X.509 and JWT authority and its state"
    )
    authority_show.add_argument("--json", action="store_true", help="print JSON")
    authority_show.set_defaults(func=cmd_authority_show)
    for name, func, text, needs_id in (
        ("prepare", cmd_authority_prepare, "prepare the next authority (enters the bundle)", False),
        ("activate", cmd_authority_activate, "make the prepared authority sign", False),
        ("taint", cmd_authority_taint, "taint a retired authority (re-issue what it signed)", True),
        ("revoke", cmd_authority_revoke, "remove a tainted authority from the bundle", True),
    ):
        step = authority.add_parser(name, parents=[client], help=text)
        step.add_argument("--kind", required=True, choices=["x509", "jwt"])
        if needs_id:
            step.add_argument("--id", required=True, metavar="AUTHORITY_ID")
        step.set_defaults(func=func)

    revoke = commands.add_parser(
        "revoke", parents=[client], help="revoke SVIDs by serial, SPIFFE ID or registration entry"
    )
    unrevoke = commands.add_parser(
        "unrevoke", parents=[client], help="lift a certificate-hold revocation"
    )
    for step in (revoke, unrevoke):
        step.add_argument("kind", choices=list(REVOCATION_KINDS), help="what TARGET is")
        step.add_argument(
            "target",
            metavar="TARGET",
            help="a serial (hex, 0x... or AA:BB:...), SPIFFE ID or entry id",
        )
    revoke.add_argument(
        "--reason",
        default="unspecified",
        metavar="REASON",
        help="RFC 5280 reason: key-compromise, ca-compromise, affiliation-changed, superseded, "
        "cessation-of-operation, certificate-hold (the only one unrevoke lifts), "
        "privilege-withdrawn, aa-compromise, unspecified (default), or its number",
    )
    revoke.add_argument("--note", default="", metavar="TEXT", help="kept with the revocation")
    revoke.set_defaults(func=cmd_revoke)
    unrevoke.set_defaults(func=cmd_unrevoke)

    revocations = commands.add_parser("revocations", help="what is revoked").add_subparsers(
        dest="revocations_command", metavar="<command>", required=True
    )
    revocations_list = revocations.add_parser("list", parents=[client], help="list revocations")
    revocations_list.add_argument("--kind", choices=list(REVOCATION_KINDS), help="only this kind")
    revocations_list.add_argument("--json", action="store_true", help="print JSON")
    revocations_list.set_defaults(func=cmd_revocations_list)

    svid = commands.add_parser("svid", help="issued SVIDs").add_subparsers(
        dest="svid_command", metavar="<command>", required=True
    )
    svid_list = svid.add_parser(
        "list", parents=[client], help="the SVIDs an authority signed, who holds them, revoked?"
    )
    svid_list.add_argument(
        "--authority", required=True, metavar="AUTHORITY_ID", help="see `authd authority show`"
    )
    svid_list.add_argument("--spiffe-id", metavar="ID", help="only SVIDs of this SPIFFE ID")
    svid_list.add_argument("--json", action="store_true", help="print JSON")
    svid_list.set_defaults(func=cmd_svid_list)

    audit = commands.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit_command", metavar="<command>", required=True
    )
    audit_log = audit.add_parser("log", parents=[client], help="print the audit log")
    audit_log.add_argument(
        "--since", metavar="TIME", help="RFC 3339 (2030-01-01T00:00:00Z) or Unix seconds"
    )
    audit_log.add_argument(
        "--spiffe-id",
        metavar="ID",
        help="only records about this SPIFFE ID (its revocations, its entries, its serials)",
    )
    audit_log.add_argument("--subject", metavar="SUBJECT", help="only records with this subject")
    audit_log.add_argument("--json", action="store_true", help="print JSON")
    audit_log.set_defaults(func=cmd_audit_log)
    audit_verify = audit.add_parser(
        "verify",
        parents=[client],
        help="check the hash chain; exit 1 naming the first broken record",
    )
    audit_verify.set_defaults(func=cmd_audit_verify)

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
    remote = [getattr(args, name, None) for name in ("server", "cert", "key", "bundle")]
    if any(remote) and not all(remote):
        parser.error("--server, --cert, --key and --bundle go together")
    try:
        result: int = args.func(args)
        return result
    except (CommandError, ConfigError) as exc:
        print(f"authd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

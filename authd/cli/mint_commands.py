"""`authd x509 mint` and `authd jwt mint`: SVIDs for an operator. The X.509-SVID's key is
made here and never leaves this process: the daemon sees only a CSR."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.client import CommandError, ask
from authd.cli.flags import duration_flag
from authd.cli.output import print_json, when


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
    ttl = duration_flag(args.ttl)
    out = Path(args.out)
    key = _new_key(args.key_type)
    # The key never leaves this process: the daemon sees only a CSR (proof of possession).
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    reply = ask(
        args,
        "MintX509SVID",
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
    if args.json:
        print_json(
            {
                "spiffe_id": args.spiffe_id,
                "serial": reply.serial,
                "expires_at": when(reply.expires_at),
                "svid": str(out / "svid.pem"),
                "key": str(out / "svid.key"),
                "bundle": str(out / "bundle.pem"),
            }
        )
        return 0
    print(
        f"X.509-SVID {args.spiffe_id} serial {reply.serial} expires {when(reply.expires_at)}; "
        f"wrote {out / 'svid.pem'}, {out / 'svid.key'}, {out / 'bundle.pem'}"
    )
    return 0


def cmd_jwt_mint(args: argparse.Namespace) -> int:
    ttl = duration_flag(args.ttl)
    reply = ask(
        args,
        "MintJWTSVID",
        admin_pb2.MintJWTSVIDRequest(
            spiffe_id=args.spiffe_id, audience=args.audience, ttl_seconds=ttl
        ),
    )
    if args.json:
        print_json(
            {
                "spiffe_id": args.spiffe_id,
                "audience": list(args.audience),
                "expires_at": when(reply.expires_at),
                "token": reply.token,
            }
        )
        return 0
    print(reply.token)
    return 0

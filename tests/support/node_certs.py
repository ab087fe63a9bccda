"""Node certificates for x509pop, as an organisation's own PKI would issue them."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.certs import make_root

DAY = 86400


def node_certificate(
    ca: tuple[x509.Certificate, Any], name: str, key: Any, *, ca_flag: bool = False
) -> x509.Certificate:
    now = time.time()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - 60, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(now + DAY, tz=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
        .sign(ca[1], hashes.SHA256())
    )


class NodePki:
    """A root that x509pop trusts, and node certificates it issues."""

    def __init__(self, name: str = "node CA") -> None:
        now = time.time()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.root = make_root(self.key, common_name=name, not_before=now - 60, not_after=now + DAY)

    def issue(self, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        return node_certificate((self.root, self.key), name, key), key

    def write_root(self, path: Path) -> Path:
        path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))
        return path

    def write_node(self, directory: Path, name: str) -> tuple[Path, Path, x509.Certificate]:
        cert, key = self.issue(name)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path, cert

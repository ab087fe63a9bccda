"""Shared fixtures for the CA tests: real CAs on SQLite in a temp dir, a fake clock, keys, CSRs.

Helpers are handed out as fixtures (not imported from here), so test modules stay
independent of how pytest names conftest modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ca.certificate_authority import CASettings, CertificateAuthority, UpstreamAuthority
from ca.clock import FakeClock
from ca.keys import KeyStore
from ca.spiffe_id import TrustDomain
from ca.store import SQLiteStore
from tests.support.certs import make_root

EXAMPLE = TrustDomain("example.org")

# Every key a test may want as a CSR key, by a readable name.
_KEY_MAKERS: dict[str, Callable[[], Any]] = {
    "P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "P-521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
    "RSA-1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
    "RSA-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "RSA-3072": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "Ed25519": ed25519.Ed25519PrivateKey.generate,
}


class OpenCA(Protocol):
    def __call__(
        self,
        directory: Path,
        *,
        clock: FakeClock,
        trust_domain: TrustDomain = ...,
        settings: CASettings | None = ...,
        upstream: UpstreamAuthority | None = ...,
    ) -> CertificateAuthority: ...


class _CAOpener:
    """Opens CAs (SQLite store + key store under ``directory``) and closes them all at the end."""

    def __init__(self) -> None:
        self._opened: list[CertificateAuthority] = []

    def __call__(
        self,
        directory: Path,
        *,
        clock: FakeClock,
        trust_domain: TrustDomain = EXAMPLE,
        settings: CASettings | None = None,
        upstream: UpstreamAuthority | None = None,
    ) -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority(
            trust_domain=trust_domain,
            store=SQLiteStore(directory / "store.db"),
            keystore=KeyStore(directory / "keys"),
            clock=clock,
            settings=settings,
            upstream=upstream,
        )
        self._opened.append(ca)
        return ca

    def close_all(self) -> None:
        for ca in self._opened:
            ca.close()
            ca.store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def trust_domain() -> TrustDomain:
    return EXAMPLE


@pytest.fixture
def open_ca() -> Iterator[OpenCA]:
    """Open a CA in a directory of your choice; closed after the test."""
    opener = _CAOpener()
    yield opener
    opener.close_all()


@pytest.fixture(scope="module")
def open_module_ca() -> Iterator[OpenCA]:
    """Like ``open_ca`` for module-scoped fixtures."""
    opener = _CAOpener()
    yield opener
    opener.close_all()


@pytest.fixture
def ca(open_ca: OpenCA, tmp_path: Path, clock: FakeClock) -> CertificateAuthority:
    """A P-256 CA for spiffe://example.org with default settings, on the fake clock."""
    return open_ca(tmp_path / "ca", clock=clock)


class KeyCache:
    """Test keys by name, generated once per session (RSA generation is slow)."""

    def __init__(self) -> None:
        self._keys: dict[str, Any] = {}

    def __call__(self, name: str) -> Any:
        if name not in self._keys:
            self._keys[name] = _KEY_MAKERS[name]()
        return self._keys[name]

    def fresh(self, name: str) -> Any:
        return _KEY_MAKERS[name]()


@pytest.fixture(scope="session")
def key() -> KeyCache:
    return KeyCache()


MakeCsr = Callable[..., bytes]


def _make_csr(
    private_key: Any,
    *,
    common_name: str = "ignored.example.com",
    dns_names: Sequence[str] = (),
    uris: Sequence[str] = (),
    encoding: serialization.Encoding = serialization.Encoding.PEM,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(private_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(private_key, algorithm).public_bytes(encoding)


@pytest.fixture(scope="session")
def make_csr() -> MakeCsr:
    """``make_csr(key, common_name=..., dns_names=..., uris=..., encoding=...)`` -> CSR bytes."""
    return _make_csr


@pytest.fixture(scope="session")
def make_ca_certificate() -> Callable[..., x509.Certificate]:
    """``make_ca_certificate(key, common_name=, not_before=, not_after=, issuer=(cert, key))``."""
    return make_root

"""Independent checkers accept what we issue: py-spiffe and ``openssl verify``.

py-spiffe checks the SPIFFE rules of an X.509-SVID and JWT-SVID on its own (its JWT validator
reads the real clock, so those CAs start at the real time); ``openssl verify`` does RFC 5280
path validation at the fake clock's time (``-attime``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import spiffe
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.certificate_authority import CASettings, CertificateAuthority, UpstreamAuthority
from ca.clock import FakeClock
from ca.keys import KeyType
from ca.spiffe_id import SpiffeId
from ca.x509svid import X509Svid

WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
PY_SPIFFE_TD = spiffe.TrustDomain("example.org")


def pkcs8(private_key: Any, encoding: serialization.Encoding) -> bytes:
    return private_key.private_bytes(
        encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue(ca: CertificateAuthority, private_key: Any, make_csr: Any, **kwargs: Any) -> X509Svid:
    return ca.issue_x509_svid(
        make_csr(private_key), spiffe_id=WORKLOAD, requester="interop", **kwargs
    )


# --- py-spiffe ----------------------------------------------------------------------------


@pytest.mark.parametrize("ca_key", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
@pytest.mark.parametrize("leaf_key", ["P-256", "RSA-2048"])
def test_py_spiffe_parses_our_x509_svid_from_pem(
    open_ca: Any,
    tmp_path: Path,
    clock: FakeClock,
    key: Any,
    make_csr: Any,
    ca_key: KeyType,
    leaf_key: str,
) -> None:
    ca = open_ca(tmp_path, clock=clock, settings=CASettings(key_type=ca_key))
    private_key = key(leaf_key)
    ours = issue(ca, private_key, make_csr, dns_names=["web.example.org"])
    theirs = spiffe.X509Svid.parse(ours.chain_pem(), pkcs8(private_key, serialization.Encoding.PEM))
    assert str(theirs.spiffe_id) == str(WORKLOAD)
    assert theirs.leaf == ours.leaf
    assert list(theirs.cert_chain) == list(ours.chain)
    assert theirs.private_key.public_key() == private_key.public_key()


def test_py_spiffe_parses_our_x509_svid_in_workload_api_form(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    # The Workload API carries the chain as concatenated DER and the key as PKCS#8 DER.
    private_key = key("P-256")
    ours = issue(ca, private_key, make_csr)
    theirs = spiffe.X509Svid.parse_raw(
        b"".join(ours.chain_der()), pkcs8(private_key, serialization.Encoding.DER)
    )
    assert str(theirs.spiffe_id) == str(WORKLOAD)
    assert list(theirs.cert_chain) == list(ours.chain)


def test_py_spiffe_bundle_of_our_authorities_validates_our_svid(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    ours = issue(ca, key("P-256"), make_csr)
    bundle = spiffe.X509Bundle.parse(PY_SPIFFE_TD, ca.bundle.to_pem())
    assert bundle.x509_authorities == set(ca.bundle.x509_authorities)
    der_bundle = spiffe.X509Bundle.parse_raw(
        PY_SPIFFE_TD,
        b"".join(c.public_bytes(serialization.Encoding.DER) for c in ca.bundle.x509_authorities),
    )
    assert der_bundle.x509_authorities == bundle.x509_authorities
    (authority,) = bundle.x509_authorities
    ours.leaf.verify_directly_issued_by(authority)


def test_py_spiffe_parses_our_upstream_mode_svid(
    open_ca: Any,
    tmp_path: Path,
    clock: FakeClock,
    key: Any,
    make_csr: Any,
    make_ca_certificate: Any,
) -> None:
    root_key = key("P-384")
    now = clock.now()
    root = make_ca_certificate(
        root_key, common_name="Upstream Root", not_before=now - 60, not_after=now + 10 * 86400
    )
    ca = open_ca(
        tmp_path,
        clock=clock,
        upstream=UpstreamAuthority(certificate=root, key=root_key, roots=(root,)),
    )
    private_key = key("P-256")
    ours = issue(ca, private_key, make_csr)
    theirs = spiffe.X509Svid.parse(ours.chain_pem(), pkcs8(private_key, serialization.Encoding.PEM))
    assert len(theirs.cert_chain) == 2  # py-spiffe checked the intermediate is a CA too
    bundle = spiffe.X509Bundle.parse(PY_SPIFFE_TD, ca.bundle.to_pem())
    assert bundle.x509_authorities == {root}


@pytest.mark.parametrize(
    "key_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048], ids=lambda k: k.value
)
def test_py_spiffe_validates_our_jwt_svid_against_our_jwt_bundle(
    open_ca: Any, tmp_path: Path, key_type: KeyType
) -> None:
    clock = FakeClock(start=float(int(time.time())))
    ca = open_ca(tmp_path, clock=clock, settings=CASettings(jwt_key_type=key_type))
    ours = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=["db", "cache"])
    bundle = spiffe.JwtBundle.parse(PY_SPIFFE_TD, ca.bundle.jwt_jwks_json().encode())
    assert set(bundle.jwt_authorities) == set(ca.bundle.jwt_authorities)
    theirs = spiffe.JwtSvid.parse_and_validate(ours.token, bundle, {"db"})
    assert str(theirs.spiffe_id) == str(WORKLOAD)
    assert set(theirs.audience) == {"db", "cache"}
    assert theirs.expiry == ours.expiry


def test_py_spiffe_rejects_our_jwt_svid_against_a_foreign_jwt_bundle(
    open_ca: Any, tmp_path: Path
) -> None:
    clock = FakeClock(start=float(int(time.time())))
    ours = open_ca(tmp_path / "ours", clock=clock)
    foreign = open_ca(tmp_path / "foreign", clock=clock)
    svid = ours.mint_jwt_svid(spiffe_id=WORKLOAD, audience=["db"])
    foreign_jwks = json.loads(foreign.bundle.jwt_jwks_json())
    foreign_jwks["keys"][0]["kid"] = svid.kid  # a foreign key under our kid
    bundle = spiffe.JwtBundle.parse(PY_SPIFFE_TD, json.dumps(foreign_jwks).encode())
    with pytest.raises(spiffe.svid.errors.InvalidTokenError):
        spiffe.JwtSvid.parse_and_validate(svid.token, bundle, {"db"})


# --- openssl verify -----------------------------------------------------------------------


def openssl_verify(
    directory: Path,
    leaf: x509.Certificate,
    *,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    at: float,
    options: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    def write(name: str, certificates: Sequence[x509.Certificate]) -> str:
        path = directory / name
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
        return str(path)

    command = ["openssl", "verify", "-attime", str(int(at)), *options]
    command += ["-CAfile", write("bundle.pem", roots)]
    if intermediates:
        command += ["-untrusted", write("intermediates.pem", intermediates)]
    command.append(write("svid.pem", [leaf]))
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)


OPENSSL_MODES = [
    [],
    ["-x509_strict"],
    ["-purpose", "sslclient"],
    ["-purpose", "sslserver"],
]


@pytest.mark.parametrize("options", OPENSSL_MODES, ids=lambda o: " ".join(o) or "default")
@pytest.mark.parametrize("ca_key", [KeyType.EC_P256, KeyType.RSA_2048], ids=lambda k: k.value)
@pytest.mark.parametrize("dns_names", [(), ("web.example.org",)], ids=["no-dns", "dns"])
def test_openssl_verify_accepts_our_svid_against_our_bundle(
    open_ca: Any,
    tmp_path: Path,
    clock: FakeClock,
    key: Any,
    make_csr: Any,
    options: list[str],
    ca_key: KeyType,
    dns_names: tuple[str, ...],
) -> None:
    ca = open_ca(tmp_path / "ca", clock=clock, settings=CASettings(key_type=ca_key))
    svid = issue(ca, key("P-256"), make_csr, dns_names=dns_names)
    result = openssl_verify(
        tmp_path,
        svid.leaf,
        roots=ca.bundle.x509_authorities,
        intermediates=svid.chain[1:],
        at=clock.now(),
        options=options,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


@pytest.mark.parametrize("options", OPENSSL_MODES, ids=lambda o: " ".join(o) or "default")
def test_openssl_verify_accepts_our_upstream_mode_chain(
    open_ca: Any,
    tmp_path: Path,
    clock: FakeClock,
    key: Any,
    make_csr: Any,
    make_ca_certificate: Any,
    options: list[str],
) -> None:
    root_key = key("P-384")
    issuing_key = key("RSA-2048")
    now = clock.now()
    root = make_ca_certificate(
        root_key, common_name="Upstream Root", not_before=now - 60, not_after=now + 10 * 86400
    )
    issuing = make_ca_certificate(
        issuing_key,
        common_name="Upstream Issuing CA",
        not_before=now - 60,
        not_after=now + 5 * 86400,
        issuer=(root, root_key),
    )
    upstream = UpstreamAuthority(certificate=issuing, key=issuing_key, roots=(root,))
    ca = open_ca(tmp_path / "ca", clock=clock, upstream=upstream)
    svid = issue(ca, key("P-256"), make_csr)
    assert len(svid.chain) == 3
    result = openssl_verify(
        tmp_path,
        svid.leaf,
        roots=ca.bundle.x509_authorities,
        intermediates=svid.chain[1:],
        at=clock.now(),
        options=options,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # and without the intermediates the chain cannot be built
    result = openssl_verify(
        tmp_path, svid.leaf, roots=ca.bundle.x509_authorities, at=clock.now(), options=options
    )
    assert result.returncode != 0


def test_openssl_verify_rejects_our_svid_against_a_foreign_bundle(
    open_ca: Any, tmp_path: Path, clock: FakeClock, key: Any, make_csr: Any
) -> None:
    ours = open_ca(tmp_path / "ours", clock=clock)
    foreign = open_ca(tmp_path / "foreign", clock=clock)
    svid = issue(ours, key("P-256"), make_csr)
    result = openssl_verify(
        tmp_path, svid.leaf, roots=foreign.bundle.x509_authorities, at=clock.now()
    )
    assert result.returncode != 0
    assert "unable to get local issuer certificate" in result.stdout + result.stderr


def test_openssl_verify_rejects_our_svid_after_it_expires(
    ca: CertificateAuthority, tmp_path: Path, clock: FakeClock, key: Any, make_csr: Any
) -> None:
    svid = issue(ca, key("P-256"), make_csr, ttl=600)
    roots = ca.bundle.x509_authorities
    assert openssl_verify(tmp_path, svid.leaf, roots=roots, at=clock.now() + 599).returncode == 0
    result = openssl_verify(tmp_path, svid.leaf, roots=roots, at=clock.now() + 601)
    assert result.returncode != 0
    assert "certificate has expired" in result.stdout + result.stderr


def test_openssl_parses_our_leaf_extensions_as_we_intend(
    ca: CertificateAuthority, tmp_path: Path, key: Any, make_csr: Any
) -> None:
    svid = issue(ca, key("P-256"), make_csr, dns_names=["web.example.org"])
    path = tmp_path / "leaf.pem"
    path.write_bytes(svid.leaf.public_bytes(serialization.Encoding.PEM))
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert "X509v3 Basic Constraints: critical\n                CA:FALSE" in text
    assert "X509v3 Key Usage: critical\n                Digital Signature, Key Agreement" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert f"URI:{WORKLOAD}, DNS:web.example.org" in text

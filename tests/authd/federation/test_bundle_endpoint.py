"""The bundle and CRL endpoint, for relying parties that are not Envoy."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from authd.federation.bundle_endpoint import BundleEndpoint
from ca.certificate_authority import CertificateAuthority
from ca.clock import SystemClock
from ca.keys import KeyStore
from ca.revoker import Revoker
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import SQLiteStore


def fetch(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.headers["content-type"], reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read()


def test_bundle_and_crls_are_served(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    ca = CertificateAuthority(
        trust_domain=TrustDomain("example.org"),
        store=store,
        keystore=KeyStore(tmp_path / "keys"),
        clock=SystemClock(),
    )
    revocations = Revoker(ca, store, SystemClock(), crl_refresh=60)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    svid = ca.issue_x509_svid(
        csr, spiffe_id=SpiffeId.parse("spiffe://example.org/web"), requester="t"
    )
    revocations.revoke("serial", svid.serial, reason="key-compromise", note="", actor="t")
    ca.prepare_authority("x509")

    async def scenario() -> dict[str, tuple[int, str, bytes]]:
        endpoint = BundleEndpoint(ca, revocations, host="127.0.0.1", port=0)
        await endpoint.start()
        try:
            paths = [
                "/bundle",
                "/crl",
                "/crl.pem",
                f"/crl/{ca.x509_authority.authority_id}",
                "/crl/unknown",
                "/nothing",
            ]
            results = await asyncio.gather(
                *(asyncio.to_thread(fetch, endpoint.port, p) for p in paths)
            )
            return dict(zip(paths, results, strict=True))
        finally:
            await endpoint.close()

    replies = asyncio.run(scenario())
    status, content_type, body = replies["/bundle"]
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body)["spiffe_sequence"] == ca.bundle.sequence
    status, content_type, body = replies["/crl"]
    assert (status, content_type) == (200, "application/pkix-crl")
    crl = x509.load_der_x509_crl(body)
    assert crl.get_revoked_certificate_by_serial_number(svid.leaf.serial_number) is not None
    assert crl.is_signature_valid(ca.x509_authority.certificate.public_key())  # type: ignore[arg-type]
    assert replies[f"/crl/{ca.x509_authority.authority_id}"][2] == body
    pem = replies["/crl.pem"][2]
    blocks = [b + b"-----END X509 CRL-----\n" for b in pem.split(b"-----END X509 CRL-----\n")[:-1]]
    assert (
        len([x509.load_pem_x509_crl(b) for b in blocks]) == 2
    )  # one per live authority: the active and the prepared one
    assert replies["/crl/unknown"][0] == 404
    assert replies["/nothing"][0] == 404
    ca.close()
    store.close()


def test_crl_of_a_replica_without_the_ca_keys_is_not_found(tmp_path: Path) -> None:
    # A decision-point replica shares the store but not the keys: it serves the bundle, and
    # answers a CRL request with 404 (it signs no CRL), never with an exception.
    store = SQLiteStore(tmp_path / "s.db")
    CertificateAuthority(
        trust_domain=TrustDomain("example.org"),
        store=store,
        keystore=KeyStore(tmp_path / "ca-keys"),
        clock=SystemClock(),
    ).close()
    replica = CertificateAuthority(
        trust_domain=TrustDomain("example.org"),
        store=store,
        keystore=KeyStore(tmp_path / "replica-keys"),
        clock=SystemClock(),
        rotates=False,
    )
    endpoint = BundleEndpoint(
        replica, Revoker(replica, store, SystemClock()), host="127.0.0.1", port=0
    )
    status, _, body = endpoint.respond("/bundle")
    assert status == 200
    assert len(json.loads(body)["keys"]) == 2
    assert endpoint.respond("/crl")[0] == 404
    assert endpoint.respond("/crl.pem")[:2] == (200, "application/x-pem-file")
    replica.close()

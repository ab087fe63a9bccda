"""The poller against a real HTTPS bundle endpoint (https_web, in process, on 127.0.0.1):
a good bundle is stored and trusted, the next poll follows its refresh hint within bounds,
and a hostile endpoint (invalid, oversized, wrong certificate) is refused with one warning
line while the bundle trusted before is kept, in memory and in the store."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from authd.config.model import ForeignTrustDomain
from authd.federation.bundle_endpoint import BundleEndpoint
from authd.federation.endpoint_tls import web_server_context
from authd.federation.federated_bundles import FederatedBundles
from authd.federation.poller import FederationPoller
from authd.ports.bundle_view import StaticBundles
from ca.bundle import TrustBundle
from ca.clock import FakeClock
from ca.spiffe_id import TrustDomain
from ca.store import SQLiteStore
from tests.support.certs import make_root

OTHER = TrustDomain("other.test")
PEM = serialization.Encoding.PEM


class _Served:
    """What the endpoint serves: any text, as if it were a bundle."""

    def __init__(self) -> None:
        self.text = ""
        self.bundle = self

    def to_json(self) -> str:
        return self.text


class _NoCrls:
    crl_refresh = 900


def _web_pki(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A web CA and a server certificate for 127.0.0.1; returns (ca, cert, key) files."""
    now = time.time()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make_root(ca_key, common_name=f"{name} CA", not_before=now - 60, not_after=now + 3600)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - 60, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(now + 3600, tz=dt.UTC))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = directory / f"{name}-ca.pem", directory / f"{name}.pem", directory / f"{name}.key"
    files[0].write_bytes(ca.public_bytes(PEM))
    files[1].write_bytes(leaf.public_bytes(PEM))
    files[2].write_bytes(
        key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def _bundle_text(sequence: int, hint: int) -> str:
    now = time.time()
    key = ec.generate_private_key(ec.SECP256R1())
    root = make_root(key, common_name="other", not_before=now - 60, not_after=now + 3600)
    return TrustBundle(OTHER, (root,), {}, sequence, hint).to_json()


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused the bundle" in r.getMessage()]


def test_poller_trusts_good_bundles_and_keeps_them_through_hostile_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca_file, cert, key = _web_pki(tmp_path, "web")
    other_ca, _, _ = _web_pki(tmp_path, "other")
    caplog.set_level(logging.INFO, logger="authd.federation")

    async def scenario() -> dict[str, Any]:
        served = _Served()
        endpoint = BundleEndpoint(
            served,  # type: ignore[arg-type]
            _NoCrls(),  # type: ignore[arg-type]
            host="127.0.0.1",
            port=0,
            tls=web_server_context(cert, key),
        )
        await endpoint.start()
        url = f"https://127.0.0.1:{endpoint.port}/"
        store = SQLiteStore(tmp_path / "s.db")
        bundles = FederatedBundles()

        def poller(ca: Path) -> FederationPoller:
            domain = ForeignTrustDomain("other.test", url, profile="https_web", ca_file=str(ca))
            return FederationPoller(
                (domain,),
                bundles=bundles,
                own=StaticBundles(TrustBundle(TrustDomain("ours.test"))),
                store=store,
                clock=FakeClock(),
                min_refresh=2,
                max_refresh=60,
            )

        good = poller(ca_file)
        found: dict[str, Any] = {}
        try:
            served.text = _bundle_text(sequence=1, hint=30)
            found["first"] = await good.refresh(OTHER)
            served.text = _bundle_text(sequence=2, hint=3600)
            found["clamped"] = await good.refresh(OTHER)
            trusted = bundles.get(OTHER)
            for name, text in (
                ("invalid", '{"keys": [{"kty": "EC", "use": "x509-svid", "x5c": []}]}'),
                ("not json", "<html>hello</html>"),
                ("oversized", " " * (1024 * 1024 + 1)),
            ):
                served.text = text
                found[name] = await good.refresh(OTHER)
                assert bundles.get(OTHER) is trusted, name
            served.text = _bundle_text(sequence=3, hint=30)
            found["wrong web CA"] = await poller(other_ca).refresh(OTHER)
            assert bundles.get(OTHER) is trusted
            found["status"] = good.status()[0]
            found["stored"] = store.get_federated_bundle("other.test")
        finally:
            await endpoint.close()
            store.close()
        return found

    found = asyncio.run(scenario())
    assert found["first"] == 30.0
    assert found["clamped"] == 60.0  # the hint is bounded by max_refresh
    for name in ("invalid", "not json", "oversized", "wrong web CA"):
        assert found[name] == 2.0, name  # after a refusal: min_refresh
    assert found["stored"].sequence == 2  # the store kept the last good one
    refusals = _refusals(caplog)
    assert len(refusals) == 4
    assert all("keeping sequence 2" in line and "\n" not in line for line in refusals)
    assert "must hold exactly one certificate" in refusals[0]
    assert "invalid bundle" in refusals[1]
    assert "larger than" in refusals[2]
    assert "certificate refused" in refusals[3]
    assert found["status"].sequence == 2
    assert "certificate refused" not in found["status"].last_error  # good's own last attempt

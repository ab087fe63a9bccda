"""A federated trust domain's SVIDs: verified against that domain's own bundle, and only when
we federate with it. Two real CAs (two trust domains) on one fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authd.authz.identity import IdentityResolver, IdentitySettings
from authd.check.model import CheckContext, Identities
from authd.ports.bundle_view import StaticBundles
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.keys import KeyStore
from ca.spiffe_id import TrustDomain
from ca.store import SQLiteStore

OURS = TrustDomain("ours.test")
PARTNER = TrustDomain("partner.test")
PARTNER_WEB = PARTNER.spiffe_id("/web")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def authorities(tmp_path: Path, clock: FakeClock) -> Iterator[dict[str, CertificateAuthority]]:
    opened = {}
    for name, td in (("ours", OURS), ("partner", PARTNER), ("impostor", PARTNER)):
        (tmp_path / name).mkdir()
        opened[name] = CertificateAuthority(
            trust_domain=td,
            store=SQLiteStore(tmp_path / name / "s.db"),
            keystore=KeyStore(tmp_path / name / "keys"),
            clock=clock,
        )
    yield opened
    for authority in opened.values():
        authority.close()
        authority.store.close()


def _certificate(authority: CertificateAuthority) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    svid = authority.issue_x509_svid(csr, spiffe_id=PARTNER_WEB, requester="test")
    return quote(svid.leaf.public_bytes(serialization.Encoding.PEM).decode())


def _resolver(ours: CertificateAuthority, bundles: StaticBundles, clock: FakeClock):
    return IdentityResolver(
        trust_domain=OURS,
        bundles=bundles,
        clock=clock,
        settings=IdentitySettings(jwt_svid_audiences=("spiffe://ours.test",)),
    )


def _resolve(resolver: IdentityResolver, **kwargs: object) -> Identities:
    ctx = CheckContext(
        method="GET",
        host="h",
        path="/",
        headers=kwargs.get("headers", {}),  # type: ignore[arg-type]
        source_principal=str(kwargs.get("principal", "")),
        source_certificate=str(kwargs.get("certificate", "")),
        context_extensions={},
    )
    return asyncio.run(resolver.resolve(ctx))


def test_a_federated_peer_certificate_verifies_against_its_domains_bundle(authorities, clock):
    ours, partner = authorities["ours"], authorities["partner"]
    resolver = _resolver(ours, StaticBundles(ours.bundle, partner.bundle), clock)
    identities = _resolve(resolver, certificate=_certificate(partner))
    assert identities.peer == PARTNER_WEB
    assert identities.problems == ()


def test_a_peer_of_a_domain_we_do_not_federate_with_is_a_problem(authorities, clock):
    ours, partner = authorities["ours"], authorities["partner"]
    resolver = _resolver(ours, StaticBundles(ours.bundle), clock)
    identities = _resolve(resolver, certificate=_certificate(partner))
    assert identities.peer is None
    assert "nor in one federated with it" in identities.problems[0].reason


def test_an_impostor_of_a_federated_domain_fails_path_validation(authorities, clock):
    ours, partner = authorities["ours"], authorities["partner"]
    resolver = _resolver(ours, StaticBundles(ours.bundle, partner.bundle), clock)
    identities = _resolve(resolver, certificate=_certificate(authorities["impostor"]))
    assert identities.peer is None
    assert identities.problems[0].reason.startswith("x509-svid/path-validation")


def test_a_cached_federated_peer_is_dropped_when_its_domain_leaves(authorities, clock):
    ours, partner = authorities["ours"], authorities["partner"]
    bundles = StaticBundles(ours.bundle, partner.bundle)
    resolver = _resolver(ours, bundles, clock)
    certificate = _certificate(partner)
    assert _resolve(resolver, certificate=certificate).peer == PARTNER_WEB
    bundles._others.clear()  # federation with partner.test ended; our bundle is unchanged
    assert _resolve(resolver, certificate=certificate).peer is None


def test_a_federated_jwt_svid_verifies_against_its_domains_jwt_keys(authorities, clock):
    ours, partner = authorities["ours"], authorities["partner"]
    token = partner.mint_jwt_svid(spiffe_id=PARTNER_WEB, audience=["spiffe://ours.test"]).token
    headers = {"authorization": f"Bearer {token}"}
    federated = _resolver(ours, StaticBundles(ours.bundle, partner.bundle), clock)
    assert _resolve(federated, headers=headers).workload == PARTNER_WEB
    alone = _resolver(ours, StaticBundles(ours.bundle), clock)
    identities = _resolve(alone, headers=headers)
    assert identities.workload is None and identities.problems


def test_a_federated_principal_alone_is_accepted_only_when_we_federate(authorities, clock):
    ours, partner = authorities["ours"], authorities["partner"]
    federated = _resolver(ours, StaticBundles(ours.bundle, partner.bundle), clock)
    assert _resolve(federated, principal=str(PARTNER_WEB)).peer == PARTNER_WEB
    alone = _resolver(ours, StaticBundles(ours.bundle), clock)
    assert _resolve(alone, principal=str(PARTNER_WEB)).peer is None

"""The signer issues with the active authority and never moves the timeline."""

from __future__ import annotations

from typing import Any

import pytest

from ca.authorities import SigningAuthorities
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.errors import InvalidRequest
from ca.settings import CASettings
from ca.signer import Signer
from ca.spiffe_id import SpiffeId

WORKLOAD = SpiffeId.parse("spiffe://example.org/workload")


def test_signer_without_an_active_authority_here_refuses_and_names_the_rotating_replica(
    ca: CertificateAuthority, clock: FakeClock, key: Any, make_csr: Any
) -> None:
    signer = Signer(
        trust_domain=ca.trust_domain,
        settings=CASettings(),
        clock=clock,
        authorities=lambda: SigningAuthorities(),  # a replica without the keys
        issuance_log=ca.issuance_log,
    )
    with pytest.raises(InvalidRequest, match=r"ca.rotates = true"):
        signer.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")
    with pytest.raises(InvalidRequest, match=r"no active JWT authority"):
        signer.mint_jwt_svid(spiffe_id=WORKLOAD, audience=["a"])


def test_signer_signs_with_whichever_authority_the_timeline_activated(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    ca.prepare_authority("x509")
    activated = ca.activate_authority("x509")
    svid = ca.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")
    ca.issuance_log.flush()
    assert ca.store.get_issuance(svid.serial).authority_id == activated.authority_id
    assert svid.leaf.issuer == ca.x509_authority.certificate.subject


def test_signing_never_moves_the_timeline(
    ca: CertificateAuthority, clock: FakeClock, key: Any, make_csr: Any
) -> None:
    before = ca.authorities()
    authority = ca.x509_authority
    life = authority.not_after - authority.record.not_before
    clock.set(authority.record.not_before + life * 9 // 10)  # past both rotation points
    ca.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, ttl=60, requester="t")
    ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=["a"], ttl=60)
    assert ca.authorities() == before  # only rotate() (the timeline) changes the records


def test_signer_refuses_an_id_of_another_trust_domain(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidRequest, match="not in this CA's trust domain"):
        ca.mint_jwt_svid(spiffe_id=SpiffeId.parse("spiffe://other.org/w"), audience=["a"])

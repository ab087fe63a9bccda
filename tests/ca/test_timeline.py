"""The authority timeline: operator steps notify, replicas without keys follow but never sign."""

from __future__ import annotations

from pathlib import Path

import pytest

from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.errors import InvalidRequest
from ca.keys import KeyStore
from ca.rotation import ACTIVE, RETIRED
from ca.spiffe_id import SpiffeId, TrustDomain

WORKLOAD = SpiffeId.parse("spiffe://example.org/workload")


def test_timeline_notifies_listeners_after_each_operator_step(ca: CertificateAuthority) -> None:
    calls: list[int] = []
    ca.add_listener(lambda: calls.append(ca.bundle.sequence))
    prepared = ca.prepare_authority("jwt")
    ca.activate_authority("jwt")
    states = {r.authority_id: r.state for r in ca.store.list_authorities("jwt")}
    assert states[prepared.authority_id] == ACTIVE
    assert RETIRED in states.values()
    assert len(calls) == 2
    assert calls[0] < calls[1] == ca.bundle.sequence


def test_replica_without_the_keys_serves_the_bundle_but_signs_nothing(
    ca: CertificateAuthority, clock: FakeClock, tmp_path: Path
) -> None:
    replica = CertificateAuthority(
        trust_domain=ca.trust_domain,
        store=ca.store,
        keystore=KeyStore(tmp_path / "replica-keys"),
        clock=clock,
        rotates=False,
    )
    try:
        assert replica.bundle == ca.bundle
        assert replica.live_x509_authorities() == ()
        with pytest.raises(InvalidRequest, match="no active JWT authority"):
            replica.mint_jwt_svid(spiffe_id=WORKLOAD, audience=["a"])
    finally:
        replica.close()


def test_ca_knows_the_bundle_of_its_own_trust_domain_only(ca: CertificateAuthority) -> None:
    assert ca.bundle_for(ca.trust_domain) is ca.bundle
    assert ca.bundle_for(TrustDomain("other.org")) is None

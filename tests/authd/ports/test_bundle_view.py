"""The ports the decision point depends on: bundles by trust domain, and revocation answers."""

from __future__ import annotations

from authd.ports.bundle_view import StaticBundles
from authd.ports.revocation_view import NeverRevoked
from ca.bundle import TrustBundle
from ca.revocation_view import RevocationQuery
from ca.spiffe_id import TrustDomain

EXAMPLE = TrustDomain("example.org")
PARTNER = TrustDomain("partner.org")


def test_static_bundles_answer_by_trust_domain_and_none_for_an_unknown_one() -> None:
    ours, theirs = TrustBundle(EXAMPLE, sequence=3), TrustBundle(PARTNER, sequence=9)
    bundles = StaticBundles(ours, theirs)
    assert bundles.trust_domain == EXAMPLE
    assert bundles.bundle_for(EXAMPLE) is ours
    assert bundles.bundle_for(PARTNER) is theirs
    assert bundles.bundle_for(TrustDomain("stranger.org")) is None


def test_static_bundles_serve_the_bundle_they_were_last_given() -> None:
    bundles = StaticBundles(TrustBundle(EXAMPLE, sequence=1))
    newer = TrustBundle(EXAMPLE, sequence=2)
    bundles.bundle = newer
    assert bundles.bundle_for(EXAMPLE) is newer
    assert bundles.bundle.sequence == 2


def test_never_revoked_revokes_nothing_and_is_never_stale() -> None:
    view = NeverRevoked()
    assert not view.is_revoked(RevocationQuery(serial="1", spiffe_id="spiffe://example.org/w"))
    assert not view.contains("entry", "e-1")
    assert view.staleness() == 0.0

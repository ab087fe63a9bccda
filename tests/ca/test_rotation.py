"""Authority rotation: the pure timeline (``plan_rotation``) and the CA that persists it.

Timeline of an authority living [0, 600): the next one is prepared at 300 (1/2), activated at
500 (5/6) when the old one retires, and the old one is pruned at 600.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ca.certificate_authority import CASettings, CertificateAuthority, UpstreamAuthority
from ca.clock import FakeClock
from ca.errors import InvalidRequest, VerificationError
from ca.rotation import ACTIVE, PREPARED, RETIRED, RotationPlan, plan_rotation
from ca.spiffe_id import SpiffeId
from ca.store import AuthorityRecord

WORKLOAD = SpiffeId.parse("spiffe://example.org/w")


def record(
    authority_id: str,
    state: str,
    not_before: int = 0,
    not_after: int = 600,
    *,
    tainted: bool = False,
    revoked: bool = False,
) -> AuthorityRecord:
    return AuthorityRecord(
        authority_id=authority_id,
        kind="x509",
        state=state,
        key_type="ec-p256",
        key_ref=f"key-{authority_id}",
        public_key_der=b"",
        certificate_der=b"",
        upstream_chain_der=(),
        not_before=not_before,
        not_after=not_after,
        created_at=not_before,
        tainted=tainted,
        revoked=revoked,
    )


# --- the pure timeline ------------------------------------------------------------------


def test_plan_creates_an_active_authority_when_there_is_none() -> None:
    plan = plan_rotation([], now=0)
    assert plan == RotationPlan(create_active=True)
    assert plan.changes_bundle


def test_plan_does_nothing_before_half_life() -> None:
    plan = plan_rotation([record("a", ACTIVE)], now=299)
    assert plan.is_empty
    assert not plan.changes_bundle


def test_plan_prepares_the_next_authority_at_half_life() -> None:
    plan = plan_rotation([record("a", ACTIVE)], now=300)
    assert plan == RotationPlan(prepare=True)
    assert plan.changes_bundle


def test_plan_prepares_only_once() -> None:
    records = [record("a", ACTIVE), record("b", PREPARED, 300, 900)]
    assert plan_rotation(records, now=400).is_empty


def test_plan_activates_the_prepared_authority_at_five_sixths_and_retires_the_old() -> None:
    records = [record("a", ACTIVE), record("b", PREPARED, 300, 900)]
    assert plan_rotation(records, now=499).is_empty
    plan = plan_rotation(records, now=500)
    assert plan == RotationPlan(activate="b", retire=("a",))
    assert not plan.changes_bundle  # same keys, only their roles change


def test_plan_prepares_late_when_five_sixths_passed_without_a_prepared_authority() -> None:
    plan = plan_rotation([record("a", ACTIVE)], now=550)
    assert plan == RotationPlan(prepare=True)


def test_plan_keeps_the_retired_authority_until_its_not_after() -> None:
    records = [record("a", RETIRED), record("b", ACTIVE, 300, 900)]
    assert plan_rotation(records, now=599).is_empty


def test_plan_prunes_the_retired_authority_at_its_not_after() -> None:
    records = [record("a", RETIRED), record("b", ACTIVE, 300, 900)]
    plan = plan_rotation(records, now=600)
    assert plan.prune == ("a",)
    assert plan.prepare  # b is at its own half-life (600) as well
    assert plan.changes_bundle


def test_plan_prunes_every_expired_authority_whatever_its_state() -> None:
    records = [
        record("old-retired", RETIRED, -600, 0),
        record("old-prepared", PREPARED, -300, 100),
        record("a", ACTIVE, 0, 600),
    ]
    plan = plan_rotation(records, now=100)
    assert set(plan.prune) == {"old-retired", "old-prepared"}
    assert not plan.create_active


def test_plan_prunes_revoked_authorities_at_once() -> None:
    records = [record("a", ACTIVE), record("b", RETIRED, -100, 500, revoked=True)]
    assert plan_rotation(records, now=10).prune == ("b",)


def test_plan_replaces_a_tainted_active_authority_with_the_prepared_one() -> None:
    records = [record("a", ACTIVE, tainted=True), record("b", PREPARED, 300, 900)]
    plan = plan_rotation(records, now=310)
    assert plan == RotationPlan(activate="b", retire=("a",))


def test_plan_replaces_a_tainted_active_authority_with_a_new_one_if_none_is_prepared() -> None:
    plan = plan_rotation([record("a", ACTIVE, tainted=True)], now=10)
    assert plan == RotationPlan(create_active=True, retire=("a",))


def test_plan_never_activates_a_tainted_prepared_authority() -> None:
    records = [record("a", ACTIVE), record("b", PREPARED, 300, 900, tainted=True)]
    plan = plan_rotation(records, now=500)
    assert plan.activate is None
    assert plan.prepare  # a clean replacement is prepared instead


def test_plan_replaces_an_expired_active_authority() -> None:
    plan = plan_rotation([record("a", ACTIVE)], now=600)
    assert plan == RotationPlan(create_active=True, prune=("a",))


def test_plan_activates_a_prepared_authority_when_the_active_one_expired() -> None:
    records = [record("a", ACTIVE), record("b", PREPARED, 300, 900)]
    plan = plan_rotation(records, now=600)
    assert plan == RotationPlan(activate="b", prune=("a",))


def test_plan_retires_all_but_the_newest_of_several_active_authorities() -> None:
    records = [record("a", ACTIVE, 0, 600), record("b", ACTIVE, 100, 700)]
    plan = plan_rotation(records, now=150)
    assert plan.retire == ("a",)
    assert plan.activate is None


# --- the CA persists the timeline -------------------------------------------------------


def test_ca_state_survives_a_restart(
    open_ca: Any, tmp_path: Path, clock: FakeClock, key: Any, make_csr: Any
) -> None:
    first = open_ca(tmp_path / "ca", clock=clock)
    start = first.x509_authority.record.not_before
    clock.set(start + (first.x509_authority.not_after - start) // 2)  # prepare the next ones
    assert first.rotate()
    svid = first.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")
    token = first.mint_jwt_svid(spiffe_id=WORKLOAD, audience=["a"]).token
    authorities = first.authorities()
    bundle = first.bundle.to_jwks()
    active = (first.x509_authority.authority_id, first.jwt_authority.kid)
    first.close()
    first.store.close()

    second = open_ca(tmp_path / "ca", clock=clock)
    assert second.authorities() == authorities
    assert second.bundle.to_jwks() == bundle
    assert second.bundle.sequence == bundle["spiffe_sequence"]
    assert (second.x509_authority.authority_id, second.jwt_authority.kid) == active
    assert not second.rotate()
    assert second.verify_x509_svid(svid.chain) == WORKLOAD
    assert second.verify_jwt_svid(token, ["a"]).spiffe_id == WORKLOAD
    assert second.store.get_issuance(svid.serial).spiffe_id == str(WORKLOAD)


def test_ca_restarted_after_activation_time_rotates_on_start(
    open_ca: Any, tmp_path: Path, clock: FakeClock
) -> None:
    first = open_ca(tmp_path / "ca", clock=clock)
    start = first.x509_authority.record.not_before
    life = first.x509_authority.not_after - start
    clock.set(start + life // 2)
    first.rotate()
    old = first.x509_authority.authority_id
    first.close()
    first.store.close()

    clock.set(start + life * 5 // 6)
    second = open_ca(tmp_path / "ca", clock=clock)
    assert second.x509_authority.authority_id != old
    assert {r.authority_id: r.state for r in second.authorities()}[old] == RETIRED


def test_ca_restarted_without_its_key_store_fails_loudly(
    open_ca: Any, tmp_path: Path, clock: FakeClock
) -> None:
    first = open_ca(tmp_path / "ca", clock=clock)
    first.close()
    first.store.close()
    for path in (tmp_path / "ca" / "keys").iterdir():
        path.unlink()
    with pytest.raises(InvalidRequest, match="is missing from"):
        open_ca(tmp_path / "ca", clock=clock)


def test_key_store_files_are_0600_and_the_directory_0700(ca: CertificateAuthority) -> None:
    directory = ca.keystore.directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert len(files) == 2  # the X.509 and the JWT authority keys
    for path in files:
        assert path.suffix == ".pem"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    refs = {r.key_ref for r in ca.authorities()}
    assert {p.stem for p in files} == refs


def test_private_keys_live_only_in_the_key_store(ca: CertificateAuthority, tmp_path: Path) -> None:
    # The store holds a reference to each key file, never the key itself.
    private_pems = [p.read_bytes() for p in ca.keystore.directory.iterdir()]
    assert all(b"PRIVATE KEY" in pem for pem in private_pems)
    database_files = list((tmp_path / "ca").glob("store.db*"))
    assert database_files
    for path in database_files:
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data
        for pem in private_pems:
            body = b"".join(pem.splitlines()[1:-1])
            assert body[:40] not in data


# --- upstream mode ----------------------------------------------------------------------


@pytest.fixture
def upstream_root(key: Any, make_ca_certificate: Any, clock: FakeClock) -> tuple[Any, Any]:
    root_key = key("P-384")
    now = clock.now()
    root = make_ca_certificate(
        root_key, common_name="Upstream Root", not_before=now - 3600, not_after=now + 10 * 86400
    )
    return root, root_key


def test_upstream_mode_authority_is_an_intermediate_signed_by_the_upstream(
    open_ca: Any, tmp_path: Path, clock: FakeClock, upstream_root: tuple[Any, Any]
) -> None:
    root, root_key = upstream_root
    upstream = UpstreamAuthority(certificate=root, key=root_key, roots=(root,))
    ca = open_ca(tmp_path, clock=clock, upstream=upstream)
    intermediate = ca.x509_authority.certificate
    assert intermediate.issuer == root.subject
    assert intermediate.subject != root.subject
    intermediate.verify_directly_issued_by(root)
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    aki = intermediate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert ca.x509_authority.upstream_chain == ()
    assert not ca.x509_authority.is_self_signed


def test_upstream_mode_bundle_holds_the_upstream_root(
    open_ca: Any, tmp_path: Path, clock: FakeClock, upstream_root: tuple[Any, Any]
) -> None:
    root, root_key = upstream_root
    ca = open_ca(
        tmp_path,
        clock=clock,
        upstream=UpstreamAuthority(certificate=root, key=root_key, roots=(root,)),
    )
    assert ca.bundle.x509_authorities == (root,)


def test_upstream_mode_svid_chain_is_leaf_then_intermediate_and_verifies(
    open_ca: Any,
    tmp_path: Path,
    clock: FakeClock,
    upstream_root: tuple[Any, Any],
    key: Any,
    make_csr: Any,
) -> None:
    root, root_key = upstream_root
    ca = open_ca(
        tmp_path,
        clock=clock,
        upstream=UpstreamAuthority(certificate=root, key=root_key, roots=(root,)),
    )
    svid = ca.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")
    assert svid.chain == (svid.leaf, ca.x509_authority.certificate)
    assert ca.verify_x509_svid(svid.chain) == WORKLOAD
    with pytest.raises(VerificationError) as caught:
        ca.verify_x509_svid([svid.leaf])  # the intermediate is not in the bundle
    assert caught.value.rule == "x509-svid/path-validation"


def test_upstream_mode_with_an_upstream_intermediate_sends_the_whole_chain(
    open_ca: Any,
    tmp_path: Path,
    clock: FakeClock,
    upstream_root: tuple[Any, Any],
    key: Any,
    make_csr: Any,
    make_ca_certificate: Any,
) -> None:
    root, root_key = upstream_root
    issuing_key = key("P-256")
    now = clock.now()
    issuing = make_ca_certificate(
        issuing_key,
        common_name="Upstream Issuing CA",
        not_before=now - 60,
        not_after=now + 5 * 86400,
        issuer=(root, root_key),
    )
    upstream = UpstreamAuthority(certificate=issuing, key=issuing_key, roots=(root,))
    ca = open_ca(tmp_path, clock=clock, upstream=upstream)
    svid = ca.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")
    assert svid.chain == (svid.leaf, ca.x509_authority.certificate, issuing)
    assert ca.bundle.x509_authorities == (root,)
    assert ca.verify_x509_svid(svid.chain) == WORKLOAD


def test_upstream_mode_authority_does_not_outlive_the_upstream(
    open_ca: Any, tmp_path: Path, clock: FakeClock, key: Any, make_ca_certificate: Any
) -> None:
    root_key = key("P-256")
    now = clock.now()
    root = make_ca_certificate(
        root_key, common_name="Short Root", not_before=now - 60, not_after=now + 7200
    )
    upstream = UpstreamAuthority(certificate=root, key=root_key, roots=(root,))
    ca = open_ca(tmp_path, clock=clock, upstream=upstream, settings=CASettings())
    assert ca.x509_authority.certificate.not_valid_after_utc == root.not_valid_after_utc
    assert ca.x509_authority.not_after == int(root.not_valid_after_utc.timestamp())


def test_upstream_mode_state_survives_a_restart(
    open_ca: Any,
    tmp_path: Path,
    clock: FakeClock,
    upstream_root: tuple[Any, Any],
    key: Any,
    make_csr: Any,
) -> None:
    root, root_key = upstream_root
    upstream = UpstreamAuthority(certificate=root, key=root_key, roots=(root,))
    first = open_ca(tmp_path / "ca", clock=clock, upstream=upstream)
    svid = first.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")
    first.close()
    first.store.close()
    second = open_ca(tmp_path / "ca", clock=clock, upstream=upstream)
    assert second.x509_authority.certificate == svid.chain[1]
    assert second.verify_x509_svid(svid.chain) == WORKLOAD

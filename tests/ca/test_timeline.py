"""The authority timeline: operator steps notify, replicas without keys follow but never sign;
each step is one write of its records, audit and bundle sequence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ca.audit import verify_chain
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.errors import InvalidRequest
from ca.keys import KeyStore
from ca.rotation import ACTIVE, RETIRED
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import AuthorityRecord, StoreError
from ca.timeline import BUNDLE_SEQUENCE
from tests.support.store_faults import fail_writes, watch_bundle

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


# --- each rotation step is one write: records, audit and the bundle's sequence -------------


def _drive(ca: CertificateAuthority, clock: FakeClock, lifetimes: int = 3) -> list[StoreError]:
    """Move the clock through ``lifetimes`` authority lifetimes, rotating at each twelfth;
    operator steps in between. Store failures are collected (the next rotation retries)."""
    start = ca.x509_authority.record.not_before
    life = ca.x509_authority.not_after - start
    failures: list[StoreError] = []
    for step in range(1, 12 * lifetimes + 1):
        clock.set(start + life * step // 12)
        operator_steps = {5: ("prepare", "jwt"), 6: ("activate", "jwt")}
        try:
            ca.rotate()
            if step in operator_steps:
                action, kind = operator_steps[step]
                getattr(ca, f"{action}_authority")(kind)
        except StoreError as exc:
            failures.append(exc)
        except InvalidRequest:
            pass  # an operator step the clock made moot
    return failures


def _assert_every_stored_step_is_audited(ca: CertificateAuthority) -> None:
    records = ca.store.list_audit()
    assert verify_chain(records).intact
    last_action: dict[str, str] = {}
    for record in records:
        last_action[record.subject] = record.action
    stored = {r.authority_id: r for r in ca.store.list_authorities()}
    for authority_id, authority in stored.items():
        assert last_action.get(authority_id) == f"authority.{authority.state}", authority_id
        assert ca.keystore.load(authority.key_ref) is not None
    gone = {subject for subject, action in last_action.items() if subject not in stored}
    assert all(last_action[subject] == "authority.pruned" for subject in gone)


def test_every_bundle_content_has_its_own_sequence_number(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    history = watch_bundle(ca.store)
    assert _drive(ca, clock) == []
    pruned = [r for r in ca.store.list_audit() if r.action == "authority.pruned"]
    assert pruned, "the drive must reach plans that prepare and prune together"
    assert history.sequences_with_two_contents() == {}
    assert ca.bundle.sequence == ca.store.current_sequence(BUNDLE_SEQUENCE)


def test_each_rotation_step_stores_its_audit_records_with_it(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    _drive(ca, clock)
    _assert_every_stored_step_is_audited(ca)


@pytest.mark.parametrize("failing_write", range(1, 15))
def test_a_rotation_step_whose_write_fails_leaves_no_trace_and_is_retried(
    open_ca: Any, tmp_path: Path, clock: FakeClock, failing_write: int
) -> None:
    ca = open_ca(tmp_path / "ca", clock=clock)
    history = watch_bundle(ca.store)
    fault = fail_writes(ca.store, at=failing_write)
    failures = _drive(ca, clock)
    assert fault.failed == [failing_write] and len(failures) == 1
    _assert_every_stored_step_is_audited(ca)
    assert history.sequences_with_two_contents() == {}
    # The step that failed happened at the next rotation: both timelines still rotate.
    states = {(r.kind, r.state) for r in ca.store.list_authorities()}
    assert {("x509", ACTIVE), ("jwt", ACTIVE)} <= states
    assert ca.bundle.sequence == ca.store.current_sequence(BUNDLE_SEQUENCE)
    assert ca.x509_authority.record.state == ACTIVE


def kids(ca: CertificateAuthority) -> set[str]:
    return {key["kid"] for key in ca.bundle.to_jwks()["keys"] if "kid" in key}


def test_a_stored_step_is_acknowledged_even_if_it_cannot_be_read_back_at_once(
    ca: CertificateAuthority,
) -> None:
    store = ca.store
    save, read = store.save_authorities, store.list_authorities

    def unreadable(kind: str | None = None) -> list[AuthorityRecord]:
        raise StoreError("store: cannot be read just now")

    def save_then_lose_the_store(*args: Any, **kwargs: Any) -> None:
        save(*args, **kwargs)
        store.list_authorities = unreadable  # type: ignore[method-assign]

    store.save_authorities = save_then_lose_the_store  # type: ignore[method-assign]
    prepared = ca.prepare_authority("jwt")  # stored and audited: not refused
    assert prepared.authority_id not in kids(ca)
    store.list_authorities = read  # type: ignore[method-assign]
    assert not ca.rotate()  # nothing to rotate, but the step is read back
    assert prepared.authority_id in kids(ca)
    assert ca.bundle.sequence == store.current_sequence(BUNDLE_SEQUENCE)

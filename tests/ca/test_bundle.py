"""SPIFFE_Trust_Domain_and_Bundle.md: the bundle we publish, how it follows rotation, and parsing.

The timeline tests drive the real CA with the fake clock: the next authority is published at
half its predecessor's life, before it signs anything; it becomes active at 5/6; the retired
one stays published until its notAfter and is then pruned. Each change bumps spiffe_sequence.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ca.bundle import TrustBundle, public_jwk, public_key_from_jwk
from ca.certificate_authority import CASettings, CertificateAuthority
from ca.clock import FakeClock
from ca.errors import VerificationError
from ca.keys import KeyType
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.x509svid import verify_x509_svid

WORKLOAD = SpiffeId.parse("spiffe://example.org/w")
EXAMPLE = TrustDomain("example.org")


def keys_of(bundle: TrustBundle, use: str) -> list[dict[str, Any]]:
    return [k for k in bundle.to_jwks()["keys"] if k["use"] == use]


def aki_of(certificate: x509.Certificate) -> bytes | None:
    return certificate.extensions.get_extension_for_class(
        x509.AuthorityKeyIdentifier
    ).value.key_identifier


# --- what we publish --------------------------------------------------------------------


def test_x509_svid_keys_hold_exactly_one_certificate_and_no_kid(ca: CertificateAuthority) -> None:
    (jwk,) = keys_of(ca.bundle, "x509-svid")
    assert "kid" not in jwk
    assert len(jwk["x5c"]) == 1
    certificate = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0], validate=True))
    assert certificate == ca.x509_authority.certificate


def test_x509_svid_key_members_match_its_certificate(ca: CertificateAuthority) -> None:
    (jwk,) = keys_of(ca.bundle, "x509-svid")
    certificate = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0]))
    assert jwk["kty"] == "EC"
    assert jwk["crv"] == "P-256"
    assert public_key_from_jwk(jwk) == certificate.public_key()


def test_jwt_svid_keys_have_a_kid_naming_the_jwt_authority(ca: CertificateAuthority) -> None:
    (jwk,) = keys_of(ca.bundle, "jwt-svid")
    assert jwk["kid"] == ca.jwt_authority.kid
    assert "x5c" not in jwk
    assert public_key_from_jwk(jwk) == ca.jwt_authority.public_key


def test_every_key_has_kty_and_use(ca: CertificateAuthority) -> None:
    for jwk in ca.bundle.to_jwks()["keys"]:
        assert jwk["kty"] in {"EC", "RSA"}
        assert jwk["use"] in {"x509-svid", "jwt-svid"}


def test_bundle_carries_refresh_hint_in_seconds_and_a_sequence(
    open_ca: Any, tmp_path: Path, clock: FakeClock
) -> None:
    ca = open_ca(tmp_path, clock=clock, settings=CASettings(refresh_hint=123))
    document = json.loads(ca.bundle.to_json())
    assert document["spiffe_refresh_hint"] == 123
    assert isinstance(document["spiffe_sequence"], int)
    assert document["spiffe_sequence"] >= 1


@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.EC_P384])
def test_bundle_publishes_rsa_and_p384_authorities(
    open_ca: Any, tmp_path: Path, clock: FakeClock, key_type: KeyType
) -> None:
    settings = CASettings(key_type=key_type, jwt_key_type=key_type)
    ca = open_ca(tmp_path, clock=clock, settings=settings)
    for jwk in ca.bundle.to_jwks()["keys"]:
        assert jwk["kty"] == ("RSA" if key_type is KeyType.RSA_2048 else "EC")
    parsed = TrustBundle.parse(ca.bundle.to_json(), EXAMPLE)
    assert parsed.x509_authorities == ca.bundle.x509_authorities
    assert parsed.jwt_authorities == ca.bundle.jwt_authorities


def test_pem_output_holds_the_x509_authorities(ca: CertificateAuthority) -> None:
    pem = ca.bundle.to_pem()
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert x509.load_pem_x509_certificates(pem) == list(ca.bundle.x509_authorities)


def test_jwt_jwks_json_holds_only_the_jwt_svid_keys(ca: CertificateAuthority) -> None:
    document = json.loads(ca.bundle.jwt_jwks_json())
    assert [k["use"] for k in document["keys"]] == ["jwt-svid"]
    assert document["keys"][0]["kid"] == ca.jwt_authority.kid


def test_bundle_round_trips_through_json(ca: CertificateAuthority) -> None:
    parsed = TrustBundle.parse(ca.bundle.to_json(), EXAMPLE)
    assert parsed.trust_domain == EXAMPLE
    assert parsed.x509_authorities == ca.bundle.x509_authorities
    assert parsed.jwt_authorities == ca.bundle.jwt_authorities
    assert parsed.sequence == ca.bundle.sequence
    assert parsed.refresh_hint == ca.bundle.refresh_hint
    assert parsed.to_jwks() == ca.bundle.to_jwks()


@pytest.mark.parametrize("name", ["P-256", "P-384", "P-521", "RSA-2048", "RSA-3072"])
def test_public_jwk_round_trips_every_supported_key(key: Any, name: str) -> None:
    public_key = key(name).public_key()
    assert public_key_from_jwk(public_jwk(public_key)) == public_key


# --- the bundle follows rotation --------------------------------------------------------


def test_bundle_follows_the_rotation_timeline(
    ca: CertificateAuthority, clock: FakeClock, key: Any, make_csr: Any
) -> None:
    csr = make_csr(key("P-256"))
    first = ca.x509_authority
    first_jwt = ca.jwt_authority
    start = first.record.not_before
    ttl = first.not_after - start
    sequence = ca.bundle.sequence

    # Just before half-life nothing changes.
    clock.set(start + ttl // 2 - 1)
    assert not ca.rotate()
    assert ca.bundle.sequence == sequence
    assert ca.bundle.x509_authorities == (first.certificate,)

    # At half-life the next authority is published, but the first one still signs.
    clock.set(start + ttl // 2)
    assert ca.rotate()
    assert ca.bundle.sequence > sequence
    sequence = ca.bundle.sequence
    assert len(ca.bundle.x509_authorities) == 2
    assert len(ca.bundle.jwt_authorities) == 2
    (prepared,) = [c for c in ca.bundle.x509_authorities if c != first.certificate]
    prepared_ski = prepared.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca.x509_authority.authority_id == first.authority_id
    assert ca.jwt_authority.kid == first_jwt.kid
    before_activation = ca.issue_x509_svid(
        csr, spiffe_id=WORKLOAD, ttl=ca.settings.max_svid_ttl, requester="t"
    )
    assert aki_of(before_activation.leaf) == bytes.fromhex(first.authority_id)
    jwt_before = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=["a"])
    assert jwt_before.kid == first_jwt.kid
    states = {r.authority_id: r.state for r in ca.authorities()}
    assert states[prepared_ski.value.digest.hex()] == "prepared"

    # At 5/6 the prepared one becomes active; the bundle's contents are unchanged.
    clock.set(start + ttl * 5 // 6)
    assert ca.rotate()
    assert ca.bundle.sequence == sequence
    assert ca.x509_authority.certificate == prepared
    assert ca.jwt_authority.kid != first_jwt.kid
    states = {r.authority_id: r.state for r in ca.authorities()}
    assert states[first.authority_id] == "retired"
    assert states[first_jwt.kid] == "retired"
    after_activation = ca.issue_x509_svid(csr, spiffe_id=WORKLOAD, requester="t")
    assert aki_of(after_activation.leaf) == prepared_ski.value.digest
    # SVIDs of the retired authority still verify: it stays in the bundle.
    assert ca.verify_x509_svid(before_activation.chain) == WORKLOAD
    assert ca.verify_x509_svid(after_activation.chain) == WORKLOAD

    # The retired authority is kept until its notAfter...
    clock.set(first.not_after - 1)
    ca.rotate()
    assert first.certificate in ca.bundle.x509_authorities
    assert first_jwt.kid in ca.bundle.jwt_authorities
    assert ca.bundle.sequence == sequence

    # ...and pruned at it, with its key deleted from the key store.
    clock.set(first.not_after)
    assert ca.rotate()
    assert ca.bundle.sequence > sequence
    assert first.certificate not in ca.bundle.x509_authorities
    assert first_jwt.kid not in ca.bundle.jwt_authorities
    assert first.authority_id not in {r.authority_id for r in ca.authorities()}
    assert not (ca.keystore.directory / f"{first.record.key_ref}.pem").exists()
    assert prepared in ca.bundle.x509_authorities


def test_sequence_increases_on_every_bundle_change(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    start = ca.x509_authority.record.not_before
    ttl = ca.x509_authority.not_after - start
    seen = [(ca.bundle.sequence, ca.bundle.to_jwks()["keys"])]
    for step in range(1, 49):  # four lifetimes, in steps of 1/12 of a life
        clock.set(start + step * ttl // 12)
        ca.rotate()
        keys = ca.bundle.to_jwks()["keys"]
        if keys != seen[-1][1]:
            assert ca.bundle.sequence > seen[-1][0], f"keys changed at step {step}"
        else:
            assert ca.bundle.sequence >= seen[-1][0]
        seen.append((ca.bundle.sequence, keys))
    assert len({tuple(json.dumps(k, sort_keys=True) for k in ks) for _, ks in seen}) > 4


def test_rotate_without_changes_keeps_the_sequence(ca: CertificateAuthority) -> None:
    sequence = ca.bundle.sequence
    assert not ca.rotate()
    assert not ca.rotate()
    assert ca.bundle.sequence == sequence


# --- parsing: reject what breaks a MUST, skip what is unknown ----------------------------


def mutated(ca: CertificateAuthority, use: str, change: Any) -> str:
    document = copy.deepcopy(ca.bundle.to_jwks())
    for jwk in document["keys"]:
        if jwk["use"] == use:
            change(jwk)
    return json.dumps(document)


def parse_rule(data: str | bytes) -> str:
    with pytest.raises(VerificationError) as caught:
        TrustBundle.parse(data, EXAMPLE)
    return caught.value.rule


def test_parse_rejects_kid_on_an_x509_svid_key(ca: CertificateAuthority) -> None:
    data = mutated(ca, "x509-svid", lambda jwk: jwk.update(kid="k1"))
    assert parse_rule(data) == "bundle/x509-svid-kid"


def test_parse_rejects_two_certificates_in_x5c(ca: CertificateAuthority) -> None:
    data = mutated(ca, "x509-svid", lambda jwk: jwk["x5c"].append(jwk["x5c"][0]))
    assert parse_rule(data) == "bundle/x509-svid-x5c"


@pytest.mark.parametrize("x5c", [[], None, "not-a-list", ["not base64!"], ["AAAA"]], ids=repr)
def test_parse_rejects_missing_or_bad_x5c(ca: CertificateAuthority, x5c: Any) -> None:
    def change(jwk: dict[str, Any]) -> None:
        if x5c is None:
            del jwk["x5c"]
        else:
            jwk["x5c"] = x5c

    assert parse_rule(mutated(ca, "x509-svid", change)) == "bundle/x509-svid-x5c"


def test_parse_rejects_jwt_svid_key_without_kid(ca: CertificateAuthority) -> None:
    data = mutated(ca, "jwt-svid", lambda jwk: jwk.pop("kid"))
    assert parse_rule(data) == "bundle/jwt-svid-kid"


def test_parse_rejects_malformed_jwt_svid_key_material(ca: CertificateAuthority) -> None:
    data = mutated(ca, "jwt-svid", lambda jwk: jwk.pop("x"))
    assert parse_rule(data) == "bundle/jwk"


@pytest.mark.parametrize("data", ["", "not json", b"\xff\xfe", "{", "[1,"], ids=repr)
def test_parse_rejects_non_json(data: str | bytes) -> None:
    assert parse_rule(data) == "bundle/json"


@pytest.mark.parametrize("data", ["[]", "{}", '{"keys": {}}', "null"])
def test_parse_rejects_document_without_a_keys_array(data: str) -> None:
    assert parse_rule(data) == "bundle/keys"


@pytest.mark.parametrize("missing", ["kty", "use"])
def test_parse_rejects_key_without_kty_or_use(ca: CertificateAuthority, missing: str) -> None:
    data = mutated(ca, "jwt-svid", lambda jwk: jwk.pop(missing))
    assert parse_rule(data) == "bundle/key"


def test_parse_rejects_non_integer_sequence(ca: CertificateAuthority) -> None:
    document = ca.bundle.to_jwks()
    document["spiffe_sequence"] = "7"
    assert parse_rule(json.dumps(document)) == "bundle/metadata"


def test_parse_skips_keys_with_an_unknown_use(ca: CertificateAuthority) -> None:
    document = ca.bundle.to_jwks()
    document["keys"].append({"kty": "EC", "use": "wit-svid", "whatever": True})
    document["keys"].append({"kty": "EC", "use": "X509-SVID", "x5c": ["a", "b"], "kid": "k"})
    parsed = TrustBundle.parse(json.dumps(document), EXAMPLE)
    assert parsed.x509_authorities == ca.bundle.x509_authorities
    assert parsed.jwt_authorities == ca.bundle.jwt_authorities


def test_parse_skips_jwt_svid_keys_with_an_unknown_kty(ca: CertificateAuthority) -> None:
    document = ca.bundle.to_jwks()
    document["keys"].append(
        {"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "k", "use": "jwt-svid"}
    )
    document["keys"].append(
        {"kty": "EC", "crv": "P-192", "x": "AA", "kid": "k2", "use": "jwt-svid"}
    )
    parsed = TrustBundle.parse(json.dumps(document), EXAMPLE)
    assert parsed.jwt_authorities == ca.bundle.jwt_authorities


def test_parse_skips_x509_svid_keys_with_an_unknown_kty(ca: CertificateAuthority) -> None:
    # "Clients encountering an unknown key type MUST ignore the entire JWK element."
    document = ca.bundle.to_jwks()
    other = copy.deepcopy(next(k for k in document["keys"] if k["use"] == "x509-svid"))
    other["kty"] = "future-kty"
    document["keys"].append(other)
    document["keys"] = [k for k in document["keys"] if k["use"] != "x509-svid" or k is other]
    parsed = TrustBundle.parse(json.dumps(document), EXAMPLE)
    assert parsed.x509_authorities == ()


def test_parse_accepts_a_bundle_without_optional_metadata(ca: CertificateAuthority) -> None:
    document = {"keys": ca.bundle.to_jwks()["keys"]}
    parsed = TrustBundle.parse(json.dumps(document).encode(), EXAMPLE)
    assert parsed.x509_authorities == ca.bundle.x509_authorities
    assert parsed.sequence == 0


def test_parsed_bundle_verifies_svids_of_its_trust_domain(
    ca: CertificateAuthority, key: Any, make_csr: Any
) -> None:
    svid = ca.issue_x509_svid(make_csr(key("P-256")), spiffe_id=WORKLOAD, requester="t")
    parsed = TrustBundle.parse(ca.bundle.to_json(), EXAMPLE)
    verified = verify_x509_svid(
        [svid.leaf], trust_domain=EXAMPLE, roots=parsed.x509_authorities, now=ca.clock.now()
    )
    assert verified == WORKLOAD

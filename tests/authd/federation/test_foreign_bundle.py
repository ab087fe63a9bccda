"""A foreign bundle endpoint is hostile input: what it serves is trusted only if it is a
SPIFFE bundle of the trust domain we asked for, and anything else is one refusal line."""

from __future__ import annotations

import json
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from authd.federation.foreign_bundle import (
    MAX_BUNDLE_BYTES,
    ForeignBundleError,
    parse_bootstrap,
    parse_foreign_bundle,
)
from ca.bundle import TrustBundle
from ca.spiffe_id import TrustDomain
from tests.support.certs import make_root

OTHER = TrustDomain("other.test")


def _authority(name: str = "other.test") -> x509.Certificate:
    now = time.time()
    key = ec.generate_private_key(ec.SECP256R1())
    root = make_root(key, common_name="root", not_before=now - 60, not_after=now + 3600)
    # With the trust domain's SPIFFE ID, as authd's own authorities carry it.
    builder = x509.CertificateBuilder(
        issuer_name=root.issuer,
        subject_name=root.subject,
        public_key=root.public_key(),
        serial_number=root.serial_number,
        not_valid_before=root.not_valid_before_utc,
        not_valid_after=root.not_valid_after_utc,
        extensions=list(root.extensions),
    ).add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{name}")]),
        critical=False,
    )
    from cryptography.hazmat.primitives import hashes

    return builder.sign(key, hashes.SHA256())


def _served(*authorities: x509.Certificate, sequence: int = 7, hint: int = 60) -> bytes:
    bundle = TrustBundle(OTHER, authorities, {}, sequence, hint)
    return bundle.to_json().encode()


def test_a_spiffe_bundle_of_the_asked_trust_domain_is_accepted() -> None:
    authority = _authority()
    bundle = parse_foreign_bundle(_served(authority), OTHER)
    assert bundle.x509_authorities == (authority,)
    assert (bundle.sequence, bundle.refresh_hint) == (7, 60)


def test_a_bundle_of_another_trust_domain_is_refused() -> None:
    with pytest.raises(ForeignBundleError, match=r"of trust domain else\.test, not other\.test"):
        parse_foreign_bundle(_served(_authority("else.test")), OTHER)


def test_an_oversized_bundle_is_refused_before_parsing() -> None:
    with pytest.raises(ForeignBundleError, match="larger than"):
        parse_foreign_bundle(b" " * (MAX_BUNDLE_BYTES + 1), OTHER)


def test_a_bundle_without_x509_authorities_is_refused() -> None:
    with pytest.raises(ForeignBundleError, match=r"no X\.509 authority"):
        parse_foreign_bundle(b'{"keys": []}', OTHER)


def test_an_x509_key_with_a_kid_breaks_a_must_and_is_refused() -> None:
    document = json.loads(_served(_authority()))
    document["keys"][0]["kid"] = "k"
    with pytest.raises(ForeignBundleError, match="must not have a kid"):
        parse_foreign_bundle(json.dumps(document).encode(), OTHER)


def test_a_deeply_nested_document_is_refused_not_a_crash() -> None:
    with pytest.raises(ForeignBundleError):
        parse_foreign_bundle(b"[" * 100_000 + b"]" * 100_000, OTHER)


def test_a_bootstrap_bundle_may_be_pem_roots() -> None:
    authority = _authority()
    from cryptography.hazmat.primitives import serialization

    pem = authority.public_bytes(serialization.Encoding.PEM)
    assert parse_bootstrap(pem, OTHER).x509_authorities == (authority,)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_jwk = st.fixed_dictionaries(
    {
        "kty": st.sampled_from(["EC", "RSA", "OKP", 1]),
        "use": st.sampled_from(["x509-svid", "jwt-svid", "enc", None]),
    },
    optional={
        "kid": _json,
        "x5c": st.lists(st.text(max_size=40) | st.binary(max_size=40).map(repr), max_size=2),
        "crv": st.sampled_from(["P-256", "P-384", "X25519", 3]),
        "x": _json,
        "y": _json,
        "n": _json,
        "e": _json,
    },
)
_document = st.fixed_dictionaries(
    {"keys": st.lists(_jwk, max_size=4) | _json},
    optional={"spiffe_sequence": _json, "spiffe_refresh_hint": _json},
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_document.map(lambda d: json.dumps(d).encode()), st.binary(max_size=300)))
def test_any_document_is_a_bundle_or_one_refusal(data: bytes) -> None:
    try:
        bundle = parse_foreign_bundle(data, OTHER)
    except ForeignBundleError as exc:
        assert "\n" not in str(exc)
    else:
        assert bundle.trust_domain == OTHER and bundle.x509_authorities

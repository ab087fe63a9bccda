"""Signed bundles: ``.signatures.json`` verified as OPA verifies it, before anything activates."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authd.policy.opa_bundle import BundleError, read_bundle
from authd.policy.opa_bundle_signing import (
    BundleVerification,
    SignatureError,
    VerificationKey,
    canonical_json,
    file_digest,
)
from tests.support.opa_bundles import (
    SigningKey,
    digest,
    policy_files,
    signatures,
    signed_bundle,
    tar_gz,
)


def _verification(key: SigningKey, **kwargs: Any) -> BundleVerification:
    keys = {key.key_id: VerificationKey.parse(key.key_id, key.algorithm, key.public_pem)}
    return BundleVerification(keys=keys, **kwargs)


@pytest.fixture(scope="module")
def es256() -> SigningKey:
    return SigningKey.generate("global_key", "ES256")


@pytest.mark.parametrize("algorithm", ["ES256", "ES384", "RS256", "PS256", "RS512"])
def test_a_signed_bundle_verifies_with_each_algorithm(algorithm: str) -> None:
    key = SigningKey.generate("k", algorithm)
    bundle = read_bundle(signed_bundle(policy_files(["/x"]), key), verification=_verification(key))
    assert bundle.signed and bundle.data["envoy"]["authz"]["open_paths"] == ["/x"]


def test_the_configured_keyid_picks_the_key_when_the_token_names_none(es256: SigningKey) -> None:
    files = policy_files(["/x"])
    sigs = signatures(files, es256, kid_in_header=False)
    blob = tar_gz({**files, "/.signatures.json": sigs})
    assert read_bundle(blob, verification=_verification(es256, key_id="global_key")).signed
    with pytest.raises(SignatureError, match="verification key ID is empty"):
        read_bundle(blob, verification=_verification(es256))


def test_a_hmac_key_verifies_hs256() -> None:
    files = policy_files(["/x"])
    listed = [
        {"name": n.lstrip("/"), "hash": digest(n, c), "algorithm": "SHA-256"}
        for n, c in files.items()
    ]
    token = jwt.encode(
        {"files": listed}, "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t", "HS256", headers={"kid": "h"}
    )
    blob = tar_gz({**files, "/.signatures.json": json.dumps({"signatures": [token]})})
    keys = {"h": VerificationKey.parse("h", "HS256", "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t")}
    assert read_bundle(blob, verification=BundleVerification(keys)).signed


def test_a_tampered_policy_is_refused(es256: SigningKey) -> None:
    files = policy_files(["/x"])
    sigs = signatures(files, es256)
    tampered = {**files, "/envoy/authz/policy.rego": files["/envoy/authz/policy.rego"] + "\n# x"}
    with pytest.raises(SignatureError, match=r"envoy/authz/policy\.rego: digest mismatch"):
        read_bundle(
            tar_gz({**tampered, "/.signatures.json": sigs}), verification=_verification(es256)
        )


def test_tampered_data_is_refused_but_whitespace_and_key_order_are_not_tampering(
    es256: SigningKey,
) -> None:
    files = {**policy_files(["/x"]), "/envoy/authz/data.json": '{"open_paths": ["/x"], "a": 1}'}
    sigs = signatures(files, es256)
    reformatted = {**files, "/envoy/authz/data.json": '{ "a" : 1,\n "open_paths" : [ "/x" ] }'}
    blob = tar_gz({**reformatted, "/.signatures.json": sigs})
    assert read_bundle(blob, verification=_verification(es256)).signed
    changed = {**files, "/envoy/authz/data.json": '{"open_paths": ["/x", "/admin"], "a": 1}'}
    with pytest.raises(SignatureError, match=r"data\.json: digest mismatch"):
        read_bundle(
            tar_gz({**changed, "/.signatures.json": sigs}), verification=_verification(es256)
        )


def test_an_added_file_or_a_missing_file_is_refused(es256: SigningKey) -> None:
    files = policy_files(["/x"])
    sigs = signatures(files, es256)
    added = tar_gz(
        {**files, "/envoy/authz/extra.rego": "package envoy.authz\n", "/.signatures.json": sigs}
    )
    with pytest.raises(SignatureError, match=r"extra\.rego not included in bundle signature"):
        read_bundle(added, verification=_verification(es256))
    missing = {k: v for k, v in files.items() if not k.endswith("data.json")}
    with pytest.raises(SignatureError, match="specified in bundle signatures but not found"):
        read_bundle(
            tar_gz({**missing, "/.signatures.json": sigs}), verification=_verification(es256)
        )


def test_excluded_files_need_no_signature(es256: SigningKey) -> None:
    files = policy_files(["/x"])
    blob = tar_gz(
        {**files, "/notes/readme.txt": "hi", "/.signatures.json": signatures(files, es256)}
    )
    assert read_bundle(blob, verification=_verification(es256, exclude_files=("notes/*",))).signed


def test_a_signature_by_another_key_is_refused(es256: SigningKey) -> None:
    other = SigningKey.generate("global_key", "ES256")
    with pytest.raises(SignatureError, match="bad signature"):
        read_bundle(signed_bundle(policy_files(["/x"]), other), verification=_verification(es256))


def test_an_unknown_key_id_is_refused(es256: SigningKey) -> None:
    stranger = SigningKey.generate("stranger", "ES256")
    with pytest.raises(SignatureError, match="ID stranger not found"):
        read_bundle(
            signed_bundle(policy_files(["/x"]), stranger), verification=_verification(es256)
        )


def test_the_token_cannot_choose_another_algorithm_than_the_key(es256: SigningKey) -> None:
    """A HS256 token "signed" with the public key's PEM as secret is refused."""
    files = policy_files(["/x"])
    listed = [
        {"name": n.lstrip("/"), "hash": digest(n, c), "algorithm": "SHA-256"}
        for n, c in files.items()
    ]
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "global_key"}).encode())
    payload = base64.urlsafe_b64encode(json.dumps({"files": listed}).encode())
    token = f"{header.decode().rstrip('=')}.{payload.decode().rstrip('=')}.AAAA"
    blob = tar_gz({**files, "/.signatures.json": json.dumps({"signatures": [token]})})
    with pytest.raises(SignatureError, match="bad signature"):
        read_bundle(blob, verification=_verification(es256))


def test_scope_must_match(es256: SigningKey) -> None:
    files = policy_files(["/x"])
    blob = tar_gz({**files, "/.signatures.json": signatures(files, es256, scope="write")})
    assert read_bundle(blob, verification=_verification(es256, scope="write")).signed
    with pytest.raises(SignatureError, match="scope mismatch"):
        read_bundle(blob, verification=_verification(es256, scope="read"))


def test_unsigned_when_a_keyid_is_configured_is_refused(es256: SigningKey) -> None:
    blob = tar_gz(policy_files(["/x"]))
    with pytest.raises(SignatureError, match=r"bundle missing \.signatures\.json file"):
        read_bundle(blob, verification=_verification(es256, key_id="global_key"))


def test_signed_without_any_signing_config_is_refused(es256: SigningKey) -> None:
    with pytest.raises(SignatureError, match="verification key not provided"):
        read_bundle(signed_bundle(policy_files(["/x"]), es256))


@pytest.mark.parametrize(
    "document",
    [
        "[]",
        "{}",
        '{"signatures": []}',
        '{"signatures": ["a", "b"]}',
        '{"signatures": ["not-a-jws"]}',
        '{"signatures": ["e30.e30.AAAA"]}',
        '{"signatures": [1]}',
        '{"signatures": ["a"], "plugin": "custom"}',
    ],
)
def test_malformed_signatures_are_refused(es256: SigningKey, document: str) -> None:
    blob = tar_gz({**policy_files(["/x"]), "/.signatures.json": document})
    with pytest.raises(SignatureError):
        read_bundle(blob, verification=_verification(es256))


@pytest.mark.parametrize(
    ("algorithm", "key", "message"),
    [("none", "x", "unsupported algorithm"), ("RS256", "not pem", "not a PEM public key")],
)
def test_bad_keys_are_refused_at_load(algorithm: str, key: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        VerificationKey.parse("k", algorithm, key)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json, st.integers(min_value=0, max_value=4))
def test_the_json_digest_is_go_s_compact_sorted_form_whatever_the_layout(
    value: Any, indent: int
) -> None:
    """OPA hashes a JSON document as Go writes it sorted and compact (no HTML escaping)."""
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = expected.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    laid_out = json.dumps(value, indent=indent or None, ensure_ascii=bool(indent % 2))
    assert canonical_json(json.loads(laid_out)) == expected.encode("utf-8", "replace")
    assert file_digest("data.json", laid_out.encode(), "SHA-256") == file_digest(
        "x/data.json", expected.encode("utf-8", "replace"), "SHA-256"
    )


def test_numbers_are_hashed_as_written() -> None:
    assert file_digest("data.json", b'{"n": 1.50}', "SHA-256") != file_digest(
        "data.json", b'{"n": 1.5}', "SHA-256"
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_signatures_file_verifies_or_is_refused_cleanly(document: bytes) -> None:
    key = VerificationKey.parse("k", "HS256", "secret")
    blob = tar_gz({**policy_files(["/x"]), "/.signatures.json": document})
    with contextlib.suppress(BundleError, SignatureError):
        read_bundle(blob, verification=BundleVerification({"k": key}))


def test_yaml_numbers_are_hashed_as_go_writes_them() -> None:
    """OPA turns data.yaml into JSON through Go: 1.0 is written 1, 1e-7 is 1e-7."""
    yaml_doc = b"a: 1.0\nb: 0.000025\nc: 1.0e-7\nd: 12\ne: 1.0e+21\n"
    expected = b'{"a":1,"b":0.000025,"c":1e-7,"d":12,"e":1e+21}'
    assert file_digest("data.yaml", yaml_doc, "SHA-256") == file_digest(
        "raw.bin", expected, "SHA-256"
    )


_json_with_floats = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(_json_with_floats, st.sampled_from(["", "1e3", "1.50", "-0", "2E-7"]))
def test_the_fast_digest_path_agrees_with_the_number_by_number_one(
    value: Any, literal: str
) -> None:
    text = json.dumps({"v": value, **({"n": None} if not literal else {})})
    if literal:
        text = text[:-1] + f', "n": {literal}}}'
    as_written = canonical_json(_numbers_as_written(text))
    assert file_digest("data.json", text.encode(), "SHA-256") == file_digest(
        "raw", as_written, "SHA-256"
    )


def _numbers_as_written(text: str) -> Any:
    from authd.policy.opa_bundle_signing import _Number

    return json.loads(text, parse_int=_Number, parse_float=_Number)

"""JWT-SVID.md: what we mint, what the verifier refuses (naming the rule), and PyJWT agreeing.

Tokens that break a rule are built here by hand and, where a signature matters, signed with
the CA's real JWT key, so only the property under test is wrong (``forge`` with the default
header and claims verifies, see ``test_forged_token_with_nothing_wrong_verifies``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ca.certificate_authority import CASettings, CertificateAuthority
from ca.clock import FakeClock
from ca.errors import InvalidRequest, VerificationError
from ca.jwtsvid import verify_jwt_svid
from ca.keys import KeyType
from ca.spiffe_id import SpiffeId, TrustDomain

WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
AUDIENCE = "spiffe://example.org/ns/prod/sa/db"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value).encode())


def decode_part(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def jws_signature(private_key: Any, alg: str, signing_input: bytes) -> bytes:
    """An independent JWS signer (RFC 7518): raw r||s for ECDSA, PKCS#1 v1.5 or PSS for RSA."""
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(digest)))
        size = (private_key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        return private_key.sign(signing_input, pss, digest)
    return private_key.sign(signing_input, padding.PKCS1v15(), digest)


def forge(
    ca: CertificateAuthority,
    *,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    signing_key: Any = None,
    **overrides: Any,
) -> str:
    """A token signed by the CA's JWT key; ``overrides`` replace claims, ``drop`` removes them."""
    authority = ca.jwt_authority
    now = int(ca.clock.now())
    if header is None:
        header = {"alg": "ES256", "kid": authority.kid, "typ": "JWT"}
    if claims is None:
        claims = {"sub": str(WORKLOAD), "aud": [AUDIENCE], "exp": now + 300, "iat": now}
    claims = {k: v for k, v in {**claims, **overrides}.items() if k not in drop}
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    key = authority.key if signing_key is None else signing_key
    signature = jws_signature(key, header["alg"], signing_input.encode())
    return f"{signing_input}.{b64url(signature)}"


def rule_of(ca: CertificateAuthority, token: str, audience: tuple[str, ...] = (AUDIENCE,)) -> str:
    with pytest.raises(VerificationError) as caught:
        ca.verify_jwt_svid(token, list(audience))
    return caught.value.rule


# --- what we mint -----------------------------------------------------------------------


def test_minted_token_is_compact_jws_with_header_exactly_alg_kid_typ(
    ca: CertificateAuthority,
) -> None:
    token = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE]).token
    parts = token.split(".")
    assert len(parts) == 3
    assert all(parts)
    assert not any("=" in p for p in parts)
    assert decode_part(parts[0]) == {"alg": "ES256", "kid": ca.jwt_authority.kid, "typ": "JWT"}


@pytest.mark.parametrize(
    ("key_type", "alg"),
    [(KeyType.EC_P256, "ES256"), (KeyType.EC_P384, "ES384"), (KeyType.RSA_2048, "RS256")],
)
def test_minted_token_alg_follows_the_jwt_key_type(
    open_ca: Any, tmp_path: Path, clock: FakeClock, key_type: KeyType, alg: str
) -> None:
    ca = open_ca(tmp_path, clock=clock, settings=CASettings(jwt_key_type=key_type))
    svid = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE])
    assert decode_part(svid.token.split(".")[0])["alg"] == alg
    assert ca.verify_jwt_svid(svid.token, [AUDIENCE]).spiffe_id == WORKLOAD


def test_minted_token_kid_names_a_jwt_key_in_the_bundle(ca: CertificateAuthority) -> None:
    svid = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE])
    assert svid.kid == ca.jwt_authority.kid
    assert ca.bundle.jwt_authorities[svid.kid] == ca.jwt_authority.public_key


def test_minted_token_claims_are_sub_aud_exp_iat(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    clock.advance(0.75)  # a fractional clock must still give integer NumericDates
    svid = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE, "other"], ttl=120)
    claims = decode_part(svid.token.split(".")[1])
    now = int(clock.now())
    assert claims == {
        "sub": str(WORKLOAD),
        "aud": [AUDIENCE, "other"],
        "exp": now + 120,
        "iat": now,
    }
    assert svid.expiry == now + 120
    assert svid.audience == (AUDIENCE, "other")


def test_minted_token_default_ttl_is_the_configured_jwt_svid_ttl(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    svid = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE])
    assert svid.expiry == int(clock.now()) + ca.settings.jwt_svid_ttl


def test_minted_token_exp_is_capped_by_the_authority_not_after(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    authority = ca.jwt_authority
    clock.set(authority.not_after - 100)
    svid = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE], ttl=300)
    assert svid.expiry == authority.not_after
    assert decode_part(svid.token.split(".")[1])["exp"] == authority.not_after


def test_minted_token_verifies_and_reports_what_it_established(ca: CertificateAuthority) -> None:
    minted = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE, "b"])
    verified = ca.verify_jwt_svid(minted.token, [AUDIENCE])
    assert verified.spiffe_id == WORKLOAD
    assert verified.audience == (AUDIENCE, "b")
    assert verified.expiry == minted.expiry
    assert verified.kid == minted.kid


def test_mint_rejects_empty_audience(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidRequest, match="at least one non-empty audience"):
        ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[])
    with pytest.raises(InvalidRequest, match="at least one non-empty audience"):
        ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[""])


def test_mint_rejects_trust_domain_id_and_foreign_ids(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidRequest, match="has no path"):
        ca.mint_jwt_svid(spiffe_id=SpiffeId.parse("spiffe://example.org"), audience=["a"])
    with pytest.raises(InvalidRequest, match="not in this CA's trust domain"):
        ca.mint_jwt_svid(spiffe_id=SpiffeId.parse("spiffe://example.com/w"), audience=["a"])


def test_mint_rejects_ttl_above_the_ca_limit(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidRequest, match="exceeds the CA's limit"):
        ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=["a"], ttl=ca.settings.max_svid_ttl + 1)


# --- what the verifier refuses ----------------------------------------------------------


def test_forged_token_with_nothing_wrong_verifies(ca: CertificateAuthority) -> None:
    assert ca.verify_jwt_svid(forge(ca), [AUDIENCE]).spiffe_id == WORKLOAD


def test_jwt_svid_rejects_alg_none(ca: CertificateAuthority) -> None:
    header = {"alg": "none", "kid": ca.jwt_authority.kid, "typ": "JWT"}
    claims = {"sub": str(WORKLOAD), "aud": [AUDIENCE], "exp": int(ca.clock.now()) + 60}
    for signature in ("", "AA"):
        token = f"{b64url_json(header)}.{b64url_json(claims)}.{signature}"
        assert rule_of(ca, token) == "jwt-svid/alg"


def test_jwt_svid_rejects_hs256_keyed_with_the_public_key(ca: CertificateAuthority) -> None:
    # The classic confusion: an HMAC "signed" with the verifier's public key bytes.
    public_key = ca.jwt_authority.public_key
    header = {"alg": "HS256", "kid": ca.jwt_authority.kid, "typ": "JWT"}
    claims = {"sub": str(WORKLOAD), "aud": [AUDIENCE], "exp": int(ca.clock.now()) + 60}
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}".encode()
    for secret in (
        public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(ca.bundle.to_jwks()["keys"][-1]).encode(),
    ):
        mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
        token = f"{signing_input.decode()}.{b64url(mac)}"
        assert rule_of(ca, token) == "jwt-svid/alg"


@pytest.mark.parametrize("alg", ["HS384", "EdDSA", "ES256K", "es256", "RSA-OAEP", ""])
def test_jwt_svid_rejects_algorithms_outside_the_spiffe_list(
    ca: CertificateAuthority, alg: str
) -> None:
    header = {"alg": alg, "kid": ca.jwt_authority.kid, "typ": "JWT"}
    claims = {"sub": str(WORKLOAD), "aud": [AUDIENCE], "exp": int(ca.clock.now()) + 60}
    token = f"{b64url_json(header)}.{b64url_json(claims)}.AAAA"
    assert rule_of(ca, token) == "jwt-svid/alg"


def test_jwt_svid_rejects_missing_alg(ca: CertificateAuthority) -> None:
    token = forge(ca).split(".")
    token[0] = b64url_json({"kid": ca.jwt_authority.kid, "typ": "JWT"})
    assert rule_of(ca, ".".join(token)) == "jwt-svid/alg"


@pytest.mark.parametrize("field", ["jku", "jwk", "x5u", "crit", "cty"])
def test_jwt_svid_rejects_header_with_extra_field(ca: CertificateAuthority, field: str) -> None:
    header = {"alg": "ES256", "kid": ca.jwt_authority.kid, "typ": "JWT", field: "x"}
    assert rule_of(ca, forge(ca, header=header)) == "jwt-svid/header"


def test_jwt_svid_rejects_typ_other_than_jwt_or_jose(ca: CertificateAuthority) -> None:
    header = {"alg": "ES256", "kid": ca.jwt_authority.kid, "typ": "foo"}
    assert rule_of(ca, forge(ca, header=header)) == "jwt-svid/typ"


@pytest.mark.parametrize("typ", ["JWT", "JOSE", None])
def test_jwt_svid_accepts_typ_jwt_jose_or_absent(ca: CertificateAuthority, typ: str | None) -> None:
    header: dict[str, Any] = {"alg": "ES256", "kid": ca.jwt_authority.kid}
    if typ is not None:
        header["typ"] = typ
    assert ca.verify_jwt_svid(forge(ca, header=header), [AUDIENCE]).spiffe_id == WORKLOAD


def test_jwt_svid_rejects_missing_kid(ca: CertificateAuthority) -> None:
    assert rule_of(ca, forge(ca, header={"alg": "ES256", "typ": "JWT"})) == "jwt-svid/kid"


def test_jwt_svid_rejects_unknown_kid(ca: CertificateAuthority) -> None:
    header = {"alg": "ES256", "kid": "not-a-known-kid", "typ": "JWT"}
    assert rule_of(ca, forge(ca, header=header)) == "jwt-svid/kid"


def test_jwt_svid_rejects_missing_aud(ca: CertificateAuthority) -> None:
    assert rule_of(ca, forge(ca, drop=("aud",))) == "jwt-svid/aud"


@pytest.mark.parametrize("aud", [[], "", [1], {"a": AUDIENCE}], ids=repr)
def test_jwt_svid_rejects_malformed_aud(ca: CertificateAuthority, aud: Any) -> None:
    assert rule_of(ca, forge(ca, aud=aud)) == "jwt-svid/aud"


def test_jwt_svid_rejects_wrong_aud(ca: CertificateAuthority) -> None:
    assert rule_of(ca, forge(ca, aud=["someone-else"])) == "jwt-svid/aud"


def test_jwt_svid_requires_every_expected_audience(ca: CertificateAuthority) -> None:
    token = forge(ca, aud=[AUDIENCE])
    assert rule_of(ca, token, audience=(AUDIENCE, "also-this")) == "jwt-svid/aud"
    assert rule_of(ca, token, audience=()) == "jwt-svid/aud"


def test_jwt_svid_accepts_a_single_string_aud(ca: CertificateAuthority) -> None:
    assert ca.verify_jwt_svid(forge(ca, aud=AUDIENCE), [AUDIENCE]).audience == (AUDIENCE,)


def test_jwt_svid_rejects_expired_token(ca: CertificateAuthority, clock: FakeClock) -> None:
    token = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE], ttl=60).token
    clock.advance(59)
    assert ca.verify_jwt_svid(token, [AUDIENCE]).spiffe_id == WORKLOAD
    clock.advance(1)
    assert rule_of(ca, token) == "jwt-svid/exp"


@pytest.mark.parametrize("exp", ["soon", None, True], ids=repr)
def test_jwt_svid_rejects_missing_or_non_numeric_exp(ca: CertificateAuthority, exp: Any) -> None:
    token = forge(ca, drop=("exp",)) if exp is None else forge(ca, exp=exp)
    assert rule_of(ca, token) == "jwt-svid/exp"


@pytest.mark.parametrize("exp", [float("nan"), float("inf")], ids=repr)
def test_jwt_svid_rejects_non_finite_exp(ca: CertificateAuthority, exp: float) -> None:
    # json.dumps writes NaN/Infinity and json.loads reads them back: not a NumericDate.
    assert rule_of(ca, forge(ca, exp=exp)) == "jwt-svid/exp"


def test_jwt_svid_rejects_nbf_in_the_future(ca: CertificateAuthority) -> None:
    now = int(ca.clock.now())
    assert rule_of(ca, forge(ca, nbf=now + 30)) == "jwt-svid/nbf"
    assert ca.verify_jwt_svid(forge(ca, nbf=now), [AUDIENCE]).spiffe_id == WORKLOAD


def test_jwt_svid_rejects_tampered_payload(ca: CertificateAuthority) -> None:
    header, _, signature = forge(ca).split(".")
    claims = {
        "sub": "spiffe://example.org/ns/prod/sa/admin",
        "aud": [AUDIENCE],
        "exp": int(ca.clock.now()) + 300,
    }
    assert rule_of(ca, f"{header}.{b64url_json(claims)}.{signature}") == "jwt-svid/signature"


def test_jwt_svid_rejects_tampered_signature(ca: CertificateAuthority) -> None:
    token = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE]).token
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[5] ^= 0x01
    assert rule_of(ca, f"{head}.{payload}.{b64url(bytes(raw))}") == "jwt-svid/signature"
    assert rule_of(ca, f"{head}.{payload}.") == "jwt-svid/signature"


def test_jwt_svid_rejects_token_signed_by_another_key_under_our_kid(
    ca: CertificateAuthority, key: Any
) -> None:
    assert rule_of(ca, forge(ca, signing_key=key("P-256"))) == "jwt-svid/signature"


@pytest.mark.parametrize(
    "sub", ["not-a-spiffe-id", "spiffe://example.org/bad path", "", 42], ids=repr
)
def test_jwt_svid_rejects_sub_that_is_not_a_spiffe_id(ca: CertificateAuthority, sub: Any) -> None:
    assert rule_of(ca, forge(ca, sub=sub)) == "jwt-svid/sub"


def test_jwt_svid_rejects_missing_sub(ca: CertificateAuthority) -> None:
    assert rule_of(ca, forge(ca, drop=("sub",))) == "jwt-svid/sub"


@pytest.mark.parametrize(
    "sub",
    [["spiffe://example.org/w"], {"id": "spiffe://example.org/w"}, "spiffe://example.org/\ud800"],
    ids=["list", "object", "lone-surrogate"],
)
def test_jwt_svid_rejects_sub_of_the_wrong_json_shape_with_a_verification_error(
    ca: CertificateAuthority, sub: Any
) -> None:
    # The payload is parsed before the signature is checked, so anyone can send these.
    assert rule_of(ca, forge(ca, sub=sub)) == "jwt-svid/sub"


def test_jwt_svid_rejects_trust_domain_id_as_sub(ca: CertificateAuthority) -> None:
    assert rule_of(ca, forge(ca, sub="spiffe://example.org")) == "jwt-svid/sub"


def test_jwt_svid_rejects_sub_in_another_trust_domain(ca: CertificateAuthority) -> None:
    assert rule_of(ca, forge(ca, sub="spiffe://example.com/w")) == "jwt-svid/trust-domain"


def test_jwt_svid_rejects_json_serialization(ca: CertificateAuthority) -> None:
    head, payload, signature = forge(ca).split(".")
    flattened = json.dumps({"protected": head, "payload": payload, "signature": signature})
    general = json.dumps(
        {"payload": payload, "signatures": [{"protected": head, "signature": signature}]}
    )
    assert rule_of(ca, flattened) == "jwt-svid/compact"
    assert rule_of(ca, general) == "jwt-svid/compact"


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", ".payload.sig", "head..sig", "!!!.???.sig", "W10.W10.sig"],
)
def test_jwt_svid_rejects_malformed_compact_form(ca: CertificateAuthority, token: str) -> None:
    assert rule_of(ca, token) == "jwt-svid/compact"


def test_jwt_svid_rejects_es256_token_whose_kid_is_an_rsa_key(
    ca: CertificateAuthority, key: Any
) -> None:
    rsa_public = key("RSA-2048").public_key()
    keys = {**ca.bundle.jwt_authorities, "rsa-kid": rsa_public}
    header = {"alg": "ES256", "kid": "rsa-kid", "typ": "JWT"}
    with pytest.raises(VerificationError) as caught:
        verify_jwt_svid(
            forge(ca, header=header),
            trust_domain=ca.trust_domain,
            keys=keys,
            audience=[AUDIENCE],
            now=ca.clock.now(),
        )
    assert caught.value.rule == "jwt-svid/alg"


def test_jwt_svid_rejects_es384_token_for_a_p256_key(ca: CertificateAuthority) -> None:
    header = {"alg": "ES384", "kid": ca.jwt_authority.kid, "typ": "JWT"}
    token = forge(ca, header=header, signing_key=ca.jwt_authority.key)
    assert rule_of(ca, token) == "jwt-svid/alg"


@pytest.mark.parametrize("alg", ["RS256", "PS256", "RS512", "PS384"])
def test_jwt_svid_rejects_rsa_algorithms_for_an_ec_key(ca: CertificateAuthority, alg: str) -> None:
    header = {"alg": alg, "kid": ca.jwt_authority.kid, "typ": "JWT"}
    claims = {"sub": str(WORKLOAD), "aud": [AUDIENCE], "exp": int(ca.clock.now()) + 60}
    token = f"{b64url_json(header)}.{b64url_json(claims)}.{b64url(b'x' * 256)}"
    assert rule_of(ca, token) == "jwt-svid/alg"


@pytest.mark.parametrize("alg", ["RS256", "RS384", "PS256", "PS512"])
def test_jwt_svid_accepts_every_allowed_rsa_algorithm_for_an_rsa_key(
    open_ca: Any, tmp_path: Path, clock: FakeClock, alg: str
) -> None:
    ca = open_ca(tmp_path, clock=clock, settings=CASettings(jwt_key_type=KeyType.RSA_2048))
    header = {"alg": alg, "kid": ca.jwt_authority.kid, "typ": "JWT"}
    assert ca.verify_jwt_svid(forge(ca, header=header), [AUDIENCE]).spiffe_id == WORKLOAD


def test_jwt_svid_rejects_tokens_of_a_pruned_authority(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    old = ca.jwt_authority
    token = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE]).token
    clock.set(old.not_after)
    ca.rotate()
    assert old.kid not in ca.bundle.jwt_authorities
    assert rule_of(ca, token) == "jwt-svid/kid"


# --- an independent checker: PyJWT -------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "alg"),
    [(KeyType.EC_P256, "ES256"), (KeyType.EC_P384, "ES384"), (KeyType.RSA_2048, "RS256")],
)
def test_pyjwt_verifies_our_tokens_with_the_bundle_key(
    open_ca: Any, tmp_path: Path, key_type: KeyType, alg: str
) -> None:
    # PyJWT checks exp/iat against the real clock, so this CA's clock starts at real time.
    clock = FakeClock(start=float(int(time.time())))
    ca = open_ca(tmp_path, clock=clock, settings=CASettings(jwt_key_type=key_type))
    svid = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE])
    jwks = ca.bundle.to_jwks()
    (jwk,) = [k for k in jwks["keys"] if k["use"] == "jwt-svid" and k["kid"] == svid.kid]
    public_key = pyjwt.PyJWK.from_dict(jwk).key
    claims = pyjwt.decode(
        svid.token,
        public_key,
        algorithms=[alg],
        audience=AUDIENCE,
        options={"require": ["sub", "aud", "exp"]},
    )
    assert claims["sub"] == str(WORKLOAD)
    assert pyjwt.get_unverified_header(svid.token) == {"alg": alg, "kid": svid.kid, "typ": "JWT"}
    assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)


def test_pyjwt_rejects_our_token_against_a_foreign_bundle_key(open_ca: Any, tmp_path: Path) -> None:
    clock = FakeClock(start=float(int(time.time())))
    ours = open_ca(tmp_path / "ours", clock=clock)
    foreign = open_ca(tmp_path / "foreign", clock=clock)
    svid = ours.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE])
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(
            svid.token, foreign.jwt_authority.public_key, algorithms=["ES256"], audience=AUDIENCE
        )


def test_verify_rejects_foreign_trust_domain_bundle(ca: CertificateAuthority) -> None:
    token = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=[AUDIENCE]).token
    with pytest.raises(VerificationError) as caught:
        verify_jwt_svid(
            token,
            trust_domain=TrustDomain("example.com"),
            keys=ca.bundle.jwt_authorities,
            audience=[AUDIENCE],
            now=ca.clock.now(),
        )
    assert caught.value.rule == "jwt-svid/trust-domain"

"""JWT-SVIDs: minting and verification (JWT-SVID.md).

Minting is hand-rolled JOSE on purpose: the header is exactly ``alg``/``kid``/``typ`` and is
encoded once per authority, so a JWT-SVID costs one signature plus a small JSON payload.
Verification accepts only compact JWS with an ``alg`` from the SPIFFE list (never ``none``,
never HMAC), looks the ``kid`` up in the bundle and checks ``sub``, ``aud`` and ``exp``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ca.authorities import JwtAuthority
from ca.errors import InvalidRequest, InvalidSpiffeId, VerificationError
from ca.keys import PrivateKey, PublicKey
from ca.spiffe_id import SpiffeId, TrustDomain

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
ALLOWED_HEADER_FIELDS = frozenset({"alg", "kid", "typ"})
ALLOWED_TYP = frozenset({"JWT", "JOSE"})

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_CURVE_FOR_ALG = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_EC_ALG = {curve: alg for alg, curve in _CURVE_FOR_ALG.items()}


@dataclass(frozen=True, slots=True)
class JwtSvid:
    """A JWT-SVID: the token and what verification (or minting) established about it."""

    token: str
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expiry: int
    claims: Mapping[str, Any]
    kid: str


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if "=" in text:
        raise ValueError("padding is not allowed in base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def algorithm_for(key: PrivateKey | PublicKey) -> str:
    """The JWS alg a key signs with: ES256/384/512 by curve, RS256 for RSA."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        try:
            return _EC_ALG[key.curve.name]
        except KeyError:
            raise InvalidRequest(f"curve {key.curve.name} cannot sign JWT-SVIDs") from None
    return "RS256"


@lru_cache(maxsize=64)
def _encoded_header(alg: str, kid: str) -> str:
    return b64url(
        json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}, separators=(",", ":")).encode()
    )


def mint_jwt_svid(
    authority: JwtAuthority,
    *,
    spiffe_id: SpiffeId,
    audience: Sequence[str],
    now: float,
    ttl: float,
) -> JwtSvid:
    """Sign a JWT-SVID for ``spiffe_id``; exp is capped by the authority's notAfter."""
    if not spiffe_id.is_workload:
        raise InvalidRequest(f"{spiffe_id} has no path; a JWT-SVID needs a workload ID")
    audience = tuple(audience)
    if not audience or any(not isinstance(a, str) or not a for a in audience):
        raise InvalidRequest("a JWT-SVID needs at least one non-empty audience")
    if ttl <= 0:
        raise InvalidRequest(f"TTL must be positive, got {ttl}")
    issued_at = int(now)
    expiry = min(int(now + ttl), authority.not_after)
    if expiry <= issued_at:
        raise InvalidRequest(f"authority {authority.kid} has expired")
    claims: dict[str, Any] = {
        "sub": str(spiffe_id),
        "aud": list(audience),
        "exp": expiry,
        "iat": issued_at,
    }
    alg = algorithm_for(authority.key)
    signing_input = (
        _encoded_header(alg, authority.kid)
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = _sign(authority.key, alg, signing_input.encode("ascii"))
    token = f"{signing_input}.{b64url(signature)}"
    return JwtSvid(token, spiffe_id, audience, expiry, claims, authority.kid)


def sign_jws(authority: JwtAuthority, claims: Mapping[str, Any], *, typ: str) -> str:
    """A compact JWS of ``claims`` signed by ``authority``, header exactly alg/kid/typ.

    For JWTs other than JWT-SVIDs that the trust domain's JWT authorities vouch for
    (transaction tokens, ``typ: txntoken+jwt``); ``exp`` is capped by the authority's notAfter.
    """
    expiry = claims.get("exp")
    if not isinstance(expiry, int) or isinstance(expiry, bool):
        raise InvalidRequest("a signed token needs an integer exp")
    if expiry > authority.not_after:
        claims = {**claims, "exp": authority.not_after}
    alg = algorithm_for(authority.key)
    header = json.dumps({"alg": alg, "kid": authority.kid, "typ": typ}, separators=(",", ":"))
    signing_input = (
        b64url(header.encode()) + "." + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = _sign(authority.key, alg, signing_input.encode("ascii"))
    return f"{signing_input}.{b64url(signature)}"


def verify_jws(
    token: str, *, keys: Mapping[str, PublicKey], typ: str, rule: str
) -> tuple[dict[str, Any], str]:
    """The claims and kid of a compact JWS whose header is exactly alg/kid/``typ``, with an
    allowed alg, a kid in ``keys`` and a signature that verifies; else VerificationError
    naming ``rule``/... (the claims themselves are the caller's to check)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise VerificationError(f"{rule}/compact", "not a compact JWS (header.payload.signature)")
    try:
        header = _json_object(parts[0], "header")
        claims = _json_object(parts[1], "payload")
    except VerificationError as exc:
        raise VerificationError(f"{rule}/compact", exc.detail) from None
    extra = set(header) - ALLOWED_HEADER_FIELDS
    if extra:
        raise VerificationError(
            f"{rule}/header",
            f"header may only hold alg, kid and typ; found {_short(sorted(extra))}",
        )
    if header.get("typ") != typ:
        raise VerificationError(f"{rule}/typ", f"typ {_short(header.get('typ'))} is not {typ}")
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise VerificationError(f"{rule}/alg", f"algorithm {_short(alg)} is not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise VerificationError(f"{rule}/kid", "header has no kid")
    key = keys.get(kid)
    if key is None:
        raise VerificationError(f"{rule}/kid", f"kid {_short(kid)} is not in the bundle")
    try:
        signature = b64url_decode(parts[2])
        _verify_signature(key, alg, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
    except VerificationError as exc:
        raise VerificationError(f"{rule}/alg", exc.detail) from None
    except (InvalidSignature, ValueError, binascii.Error):
        raise VerificationError(f"{rule}/signature", "signature does not verify") from None
    return claims, kid


def _sign(key: PrivateKey, alg: str, data: bytes) -> bytes:
    digest = _HASHES[alg[2:]]()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return key.sign(data, padding.PKCS1v15(), digest)


def _verify_signature(key: PublicKey, alg: str, data: bytes, signature: bytes) -> None:
    digest = _HASHES[alg[2:]]()
    if alg.startswith("ES"):
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != _CURVE_FOR_ALG[alg]:
            raise VerificationError("jwt-svid/alg", f"key for this kid cannot verify {alg}")
        size = (key.curve.key_size + 7) // 8
        if len(signature) != 2 * size:
            raise VerificationError("jwt-svid/signature", "malformed ECDSA signature")
        der = encode_dss_signature(
            int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
        )
        key.verify(der, data, ec.ECDSA(digest))
        return
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerificationError("jwt-svid/alg", f"key for this kid cannot verify {alg}")
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        key.verify(signature, data, pss, digest)
    else:
        key.verify(signature, data, padding.PKCS1v15(), digest)


def _short(value: object) -> str:
    """An attacker-chosen value, shown in an error message without flooding the logs."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_object(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(part))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise VerificationError("jwt-svid/compact", f"{what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise VerificationError("jwt-svid/compact", f"{what} is not a JSON object")
    return value


def verify_jwt_svid(
    token: str,
    *,
    trust_domain: TrustDomain,
    keys: Mapping[str, PublicKey],
    audience: Collection[str],
    now: float,
) -> JwtSvid:
    """Verify ``token`` against the JWT authorities (kid → key) of ``trust_domain``.

    ``audience``: every expected audience must appear in the token's ``aud``.
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise VerificationError("jwt-svid/compact", "not a compact JWS (header.payload.signature)")
    header = _json_object(parts[0], "header")
    extra = set(header) - ALLOWED_HEADER_FIELDS
    if extra:
        raise VerificationError(
            "jwt-svid/header",
            f"header may only hold alg, kid and typ; found {_short(sorted(extra))}",
        )
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise VerificationError("jwt-svid/alg", f"algorithm {_short(alg)} is not allowed")
    typ = header.get("typ")
    if typ is not None and typ not in ALLOWED_TYP:
        raise VerificationError("jwt-svid/typ", f"typ {_short(typ)} is not JWT or JOSE")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise VerificationError("jwt-svid/kid", "header has no kid")
    claims = _json_object(parts[1], "payload")
    try:
        spiffe_id = SpiffeId.parse(claims.get("sub"))  # type: ignore[arg-type]
    except InvalidSpiffeId as exc:
        raise VerificationError("jwt-svid/sub", f"sub is not a SPIFFE ID: {exc}") from None
    if not spiffe_id.is_workload:
        raise VerificationError("jwt-svid/sub", f"sub {spiffe_id} has no path")
    if not spiffe_id.member_of(trust_domain):
        raise VerificationError(
            "jwt-svid/trust-domain", f"{spiffe_id} is not in trust domain {trust_domain}"
        )
    key = keys.get(kid)
    if key is None:
        raise VerificationError(
            "jwt-svid/kid", f"kid {_short(kid)} is not in the bundle of {trust_domain}"
        )
    try:
        signature = b64url_decode(parts[2])
        _verify_signature(key, alg, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
    except (InvalidSignature, ValueError, binascii.Error):
        raise VerificationError("jwt-svid/signature", "signature does not verify") from None
    token_audience = claims.get("aud")
    if isinstance(token_audience, str):
        token_audience = [token_audience]
    if not isinstance(token_audience, list) or not token_audience:
        raise VerificationError("jwt-svid/aud", "aud claim is missing")
    if not all(isinstance(a, str) for a in token_audience):
        raise VerificationError("jwt-svid/aud", "aud must be a string or a list of strings")
    missing = [a for a in audience if a not in token_audience]
    if missing or not audience:
        raise VerificationError(
            "jwt-svid/aud", f"token audience {token_audience} does not include {missing or '?'}"
        )
    expiry = claims.get("exp")
    if isinstance(expiry, bool) or not isinstance(expiry, int | float) or not math.isfinite(expiry):
        raise VerificationError("jwt-svid/exp", "exp claim is missing or not a number")
    if now >= expiry:
        raise VerificationError("jwt-svid/exp", "token has expired")
    not_before = claims.get("nbf")
    if not_before is not None and (
        isinstance(not_before, bool)
        or not isinstance(not_before, int | float)
        or not math.isfinite(not_before)
    ):
        raise VerificationError("jwt-svid/nbf", "nbf claim is not a number")
    if not_before is not None and now < not_before:
        raise VerificationError("jwt-svid/nbf", "token is not valid yet")
    return JwtSvid(token, spiffe_id, tuple(token_audience), int(expiry), claims, kid)

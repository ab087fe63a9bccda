"""Bearer tokens before and after verification: the bounded first read, and safe messages.

``unverified_claims`` is the first look at a token, only to route it to its verifier: the
header and payload are parsed within ``bounded_json``'s limits, so the verifiers after it
(PyJWT, ``ca.jwtsvid``), which parse them again with plain ``json.loads``, never see JSON
nested deep enough to exhaust the stack. A token is at most ``MAX_TOKEN_BYTES``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import jwt

from authd.check.bounded_json import JsonLimitError, loads_bounded
from ca.jwtsvid import b64url_decode

# Far above any real token (a JWT-SVID is ~0.5 kB) and below Envoy's 60 KiB header limit.
MAX_TOKEN_BYTES = 16 * 1024


def sha256(text: str) -> bytes:
    # surrogatepass: header values are whatever the adapter decoded; hashing must not fail.
    return hashlib.sha256(text.encode(errors="surrogatepass")).digest()


def unverified_claims(token: str) -> Mapping[str, Any] | str:
    """The payload of a compact JWS, unverified (only to route it to the right verifier), or
    why it is not one.

    Header and payload are both parsed within ``bounded_json``'s limits here, so that the
    verifiers after this (PyJWT, ``ca.jwtsvid``), which parse them again with plain
    ``json.loads``, are never handed JSON nested deep enough to exhaust the stack.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return "jwt/compact: not a JWT"
    decoded = []
    for part in parts[:2]:
        try:
            # NaN allowed: the verifiers name the claim it is in (user-jwt/claims, ...).
            decoded.append(
                loads_bounded(b64url_decode(part), max_bytes=MAX_TOKEN_BYTES, allow_nan=True)
            )
        except JsonLimitError as exc:
            return f"jwt/json: {exc}"
        except ValueError:  # binascii.Error and UnicodeDecodeError included
            return "jwt/compact: not a JWT"
    header, claims = decoded
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return "jwt/compact: not a JWT"
    return claims


def is_time(value: object) -> bool:
    # JSON allows NaN and Infinity; a NaN exp would compare as never expired.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def short(value: object) -> str:
    """A header value fit for a message: attacker-chosen, so bounded."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def pyjwt_reason(exc: Exception, issuer_name: str, iss: str) -> str:
    # PyJWT's own messages can quote token content; ours name the rule and the issuer only.
    if isinstance(exc, jwt.InvalidSignatureError):
        return "user-jwt/signature: signature does not verify"
    if isinstance(exc, jwt.InvalidAudienceError):
        return f"user-jwt/aud: token audience is not one of issuer {issuer_name}'s audiences"
    if isinstance(exc, jwt.InvalidIssuerError):
        return f"user-jwt/iss: iss is not {iss}"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"user-jwt/claims: token has no {exc.claim} claim"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "user-jwt/alg: algorithm not allowed"
    if isinstance(exc, jwt.DecodeError):
        return "user-jwt/compact: token is not a valid JWS"
    return "user-jwt/claims: token claims are invalid"

"""The trust bundle of a trust domain, in SPIFFE format (a JWKS) and as PEM.

SPIFFE_Trust_Domain_and_Bundle.md: ``use: x509-svid`` keys carry exactly one certificate in
``x5c`` and no ``kid``; ``use: jwt-svid`` keys carry a ``kid``; ``spiffe_sequence`` grows on
every change and ``spiffe_refresh_hint`` tells relying parties how often to refetch.
Keys with an unknown ``use`` or ``kty`` are skipped, not fatal.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.errors import VerificationError
from ca.jwtsvid import b64url, b64url_decode
from ca.keys import PublicKey
from ca.spiffe_id import TrustDomain

_CRV_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """The X.509 and JWT authorities that relying parties of ``trust_domain`` trust."""

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: Mapping[str, PublicKey] = field(default_factory=dict)
    sequence: int = 0
    refresh_hint: int = 300

    def to_jwks(self) -> dict[str, Any]:
        keys: list[dict[str, Any]] = []
        for certificate in self.x509_authorities:
            public_key = certificate.public_key()
            assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
            der = certificate.public_bytes(serialization.Encoding.DER)
            keys.append(
                {
                    **public_jwk(public_key),
                    "use": "x509-svid",
                    "x5c": [base64.b64encode(der).decode("ascii")],
                }
            )
        for kid, public_key in self.jwt_authorities.items():
            keys.append({**public_jwk(public_key), "kid": kid, "use": "jwt-svid"})
        return {
            "keys": keys,
            "spiffe_refresh_hint": self.refresh_hint,
            "spiffe_sequence": self.sequence,
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_jwks(), indent=indent)

    def jwt_jwks_json(self) -> str:
        """Only the jwt-svid keys (what a JWT relying party, e.g. py-spiffe, expects)."""
        keys = [k for k in self.to_jwks()["keys"] if k["use"] == "jwt-svid"]
        return json.dumps({"keys": keys})

    def to_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.x509_authorities)

    @classmethod
    def parse(cls, data: str | bytes, trust_domain: TrustDomain) -> TrustBundle:
        """Parse a SPIFFE bundle, rejecting what breaks a MUST and skipping unknown keys."""
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise VerificationError("bundle/json", f"bundle is not JSON: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise VerificationError("bundle/keys", "bundle must be a JSON object with 'keys'")
        roots: list[x509.Certificate] = []
        jwt_keys: dict[str, PublicKey] = {}
        for index, jwk in enumerate(document["keys"]):
            if not isinstance(jwk, dict) or "kty" not in jwk or "use" not in jwk:
                raise VerificationError("bundle/key", f"key {index} lacks 'kty' or 'use'")
            if jwk["kty"] not in ("EC", "RSA"):
                continue  # unknown key types are ignored, not fatal
            if jwk["use"] == "x509-svid":
                roots.append(_x509_authority(jwk, index))
            elif jwk["use"] == "jwt-svid":
                kid = jwk.get("kid")
                if not isinstance(kid, str) or not kid:
                    raise VerificationError(
                        "bundle/jwt-svid-kid", f"jwt-svid key {index} has no kid"
                    )
                public_key = public_key_from_jwk(jwk)
                if public_key is not None:
                    jwt_keys[kid] = public_key
        sequence = document.get("spiffe_sequence", 0)
        hint = document.get("spiffe_refresh_hint", 0)
        if not isinstance(sequence, int) or not isinstance(hint, int):
            raise VerificationError(
                "bundle/metadata", "spiffe_sequence and spiffe_refresh_hint must be integers"
            )
        return cls(trust_domain, tuple(roots), jwt_keys, sequence, hint)


def _x509_authority(jwk: Mapping[str, Any], index: int) -> x509.Certificate:
    if "kid" in jwk:
        raise VerificationError(
            "bundle/x509-svid-kid", f"x509-svid key {index} must not have a kid"
        )
    x5c = jwk.get("x5c")
    if not isinstance(x5c, list) or len(x5c) != 1:
        raise VerificationError(
            "bundle/x509-svid-x5c", f"x509-svid key {index} must hold exactly one certificate"
        )
    try:
        return x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise VerificationError(
            "bundle/x509-svid-x5c", f"key {index}: bad certificate: {exc}"
        ) from None


def public_jwk(key: PublicKey) -> dict[str, Any]:
    """The public JWK members of an EC or RSA key (no use, no kid)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        return {
            "kty": "EC",
            "crv": _CRV_NAMES[key.curve.name],
            "x": b64url(numbers.x.to_bytes(size, "big")),
            "y": b64url(numbers.y.to_bytes(size, "big")),
        }
    rsa_numbers = key.public_numbers()
    return {
        "kty": "RSA",
        "n": b64url(rsa_numbers.n.to_bytes((rsa_numbers.n.bit_length() + 7) // 8, "big")),
        "e": b64url(rsa_numbers.e.to_bytes((rsa_numbers.e.bit_length() + 7) // 8, "big")),
    }


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey | None:
    """The key of an EC or RSA JWK; None for a kty or curve we do not know (skipped)."""
    try:
        if jwk["kty"] == "EC":
            curve = _CURVES.get(jwk.get("crv", ""))
            if curve is None:
                return None
            x = int.from_bytes(b64url_decode(jwk["x"]), "big")
            y = int.from_bytes(b64url_decode(jwk["y"]), "big")
            return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        if jwk["kty"] == "RSA":
            n = int.from_bytes(b64url_decode(jwk["n"]), "big")
            e = int.from_bytes(b64url_decode(jwk["e"]), "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
    except (KeyError, ValueError, TypeError, binascii.Error) as exc:
        raise VerificationError("bundle/jwk", f"malformed {jwk.get('kty')} key: {exc}") from None
    return None

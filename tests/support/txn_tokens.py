"""Transaction tokens signed with a daemon's own JWT authority key, for tests.

The key is read from the daemon's key store (as the CA's operator could): how a token that
is expired, for another audience or of another ``typ`` is made without waiting for expiry
or injecting a clock into a running daemon.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ca.bundle import TrustBundle
from ca.spiffe_id import TrustDomain

TYP = "txntoken+jwt"


def txn_claims(trust_domain: str = "example.org", **changes: Any) -> dict[str, Any]:
    """The claims of a well-formed Txn-Token minted by the gateway just now, changed."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iat": now,
        "exp": now + 60,
        "aud": f"spiffe://{trust_domain}",
        "txn": "forged-1",
        "sub": "mallory",
        "scope": "orders:read",
        "req_wl": f"spiffe://{trust_domain}/gateway",
    }
    return base | changes


def sign_txn_token(
    data_dir: Path,
    bundle_jwks: str,
    claims: dict[str, Any],
    *,
    typ: str = TYP,
    trust_domain: str = "example.org",
) -> str:
    """``claims`` signed by whichever key of ``data_dir/keys`` is a JWT authority of the
    bundle ``bundle_jwks`` (``authd bundle show``)."""
    bundle = TrustBundle.parse(bundle_jwks, TrustDomain.parse(trust_domain))
    for path in (data_dir / "keys").glob("*.pem"):
        key = load_pem_private_key(path.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            continue
        for kid, public in bundle.jwt_authorities.items():
            if public == key.public_key():
                return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": typ})
    raise AssertionError(f"no JWT authority key in {data_dir / 'keys'}")

"""The token-signer port: who signs the JWTs the decision point mints (transaction tokens).

Today the local CA answers it (``ca.certificate_authority.CertificateAuthority.sign_jwt``),
with its active JWT authority, whose ``kid`` is in the trust bundle's JWKS, so every hop
verifies what the front door minted against the bundle it already trusts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["TokenSigner"]


class TokenSigner(Protocol):
    def sign_jwt(self, claims: Mapping[str, Any], *, typ: str) -> str:
        """``claims`` as a compact JWS (header alg/kid/typ); ``ca.errors.CAError`` when this
        replica holds no JWT authority key."""
        ...

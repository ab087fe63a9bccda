"""Join tokens: single-use secrets an operator hands to one node so its agent can attest.

A token is a random UUID (as SPIRE's); the store keeps only its SHA-256, so a copy of the
store does not let anyone attest. The agent's SPIFFE ID names the token, which is harmless
once it has been used (and it can be used only once).
"""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["METHOD", "hash_token", "new_token", "valid_token"]

METHOD = "join_token"
MAX_TOKEN_LENGTH = 64


def new_token() -> str:
    return str(uuid.uuid4())


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def valid_token(token: str) -> bool:
    """A token as :func:`new_token` makes them (anything else is refused before the store)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return False
    try:
        return str(uuid.UUID(token)) == token
    except ValueError:
        return False

"""What the decision point asks about revocation, whoever keeps the answers.

Today ``ca.revocation_view.RevocationView`` answers it: an in-memory view the daemon's
``Revoker`` (and, with a shared store, the replica follower) keeps in step with the store.
An agent fed by a remote server, or a view of several trust domains, satisfies the same port.
"""

from __future__ import annotations

from typing import Protocol

from ca.revocation_view import RevocationQuery

__all__ = ["NeverRevoked", "RevocationQuery", "RevocationView"]


class RevocationView(Protocol):
    """Is this serial, SPIFFE ID, registration entry or JWT id revoked; how stale is that?"""

    def is_revoked(self, query: RevocationQuery) -> bool:
        """True if any part of ``query`` (serial, SPIFFE ID, jti, entry) is revoked."""
        ...

    def contains(self, kind: str, target: str) -> bool:
        """True if ``target`` of ``kind`` (``serial``, ``spiffe_id``, ``entry``, ``jti``) is
        revoked."""
        ...

    def staleness(self) -> float:
        """Seconds since the view last matched its source (0 when it is the source's own)."""
        ...


class NeverRevoked:
    """A view in which nothing is revoked: for a decision point without revocations."""

    def is_revoked(self, query: RevocationQuery) -> bool:
        return False

    def contains(self, kind: str, target: str) -> bool:
        return False

    def staleness(self) -> float:
        return 0.0

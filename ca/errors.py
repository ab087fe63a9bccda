"""The errors the CA core raises: one family, each message saying exactly what is wrong."""

from __future__ import annotations


class CAError(Exception):
    """Base of every error raised by the CA core."""


class InvalidSpiffeId(CAError, ValueError):
    """A string is not a valid SPIFFE ID or trust domain (SPIFFE-ID.md)."""


class InvalidRequest(CAError, ValueError):
    """A signing request cannot be honoured: bad CSR, weak key, bad TTL, unknown type."""


class AlreadyRevoked(InvalidRequest):
    """The target is revoked already."""


class UnknownTarget(InvalidRequest):
    """What a revocation names (a serial, a registration entry) does not exist."""


class NotRevoked(InvalidRequest):
    """The target to lift is not revoked."""


class FinalRevocation(InvalidRequest):
    """Only a certificate hold can be lifted (RFC 5280 5.3.1)."""


class VerificationError(CAError):
    """An SVID or bundle failed verification; ``rule`` names the rule that failed."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.detail = message

"""What a CA is configured with: its knobs, and the upstream CA that may sign its authorities."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from ca.keys import KeyType, PrivateKey

DEFAULT_SUBJECT = x509.Name.from_rfc4514_string("O=authd")


@dataclass(frozen=True, slots=True)
class CASettings:
    """The knobs of the CA; defaults follow SPIRE (CA 24h, X.509-SVID 1h, JWT-SVID 5m)."""

    key_type: KeyType = KeyType.EC_P256
    jwt_key_type: KeyType = KeyType.EC_P256
    ca_ttl: int = 24 * 3600
    x509_svid_ttl: int = 3600
    jwt_svid_ttl: int = 300
    subject: x509.Name = DEFAULT_SUBJECT
    refresh_hint: int = 300

    @property
    def max_svid_ttl(self) -> int:
        """An SVID may live at most half an authority's life, so rotation can outrun it."""
        return self.ca_ttl // 2


@dataclass(frozen=True, slots=True)
class UpstreamAuthority:
    """An upstream CA that signs our X.509 authorities as intermediates."""

    certificate: x509.Certificate
    key: PrivateKey
    roots: tuple[x509.Certificate, ...]

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """Certificates between our authority and a root: the upstream cert unless it is a root."""
        return () if self.certificate in self.roots else (self.certificate,)

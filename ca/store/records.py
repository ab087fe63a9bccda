"""The values the store keeps: plain frozen dataclasses, times as int Unix seconds.

Nothing here knows about a backend, so every backend stores and returns exactly these values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

AUTHORITY_KINDS = ("x509", "jwt")
AUTHORITY_STATES = ("prepared", "active", "retired")
ISSUANCE_KINDS = ("x509", "jwt")
REVOCATION_TARGET_KINDS = ("serial", "spiffe_id", "entry", "authority", "jti", "txn")
# RFC 5280 section 5.3.1; 7 is unused.
CRL_REASON_CODES = frozenset({0, 1, 2, 3, 4, 5, 6, 8, 9, 10})

AUDIT_GENESIS_HASH = "0" * 64


def _require_one_of(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")


@dataclass(frozen=True, slots=True)
class AuthorityRecord:
    """A signing authority (X.509 CA key + certificate, or JWT key) and its rotation state."""

    authority_id: str
    kind: str
    state: str
    key_type: str
    key_ref: str
    public_key_der: bytes
    certificate_der: bytes
    upstream_chain_der: tuple[bytes, ...]
    not_before: int
    not_after: int
    created_at: int
    tainted: bool = False
    revoked: bool = False

    def __post_init__(self) -> None:
        _require_one_of("authority kind", self.kind, AUTHORITY_KINDS)
        _require_one_of("authority state", self.state, AUTHORITY_STATES)


@dataclass(frozen=True, slots=True)
class IssuanceRecord:
    """One SVID the CA signed, kept so it can be found again (audit, revocation by serial)."""

    serial: str
    kind: str
    spiffe_id: str
    authority_id: str
    not_before: int
    not_after: int
    requester: str
    issued_at: int

    def __post_init__(self) -> None:
        _require_one_of("issuance kind", self.kind, ISSUANCE_KINDS)


@dataclass(frozen=True, slots=True)
class Selector:
    """A workload property such as ``unix:uid:1000``: ``type`` is ``unix``, ``value`` the rest."""

    type: str
    value: str


@dataclass(frozen=True, slots=True)
class RegistrationEntry:
    """Which SPIFFE ID a workload gets when it shows all of ``selectors`` under ``parent_id``.

    ``revision`` is owned by the store: 0 on create, incremented by every update.
    """

    entry_id: str
    spiffe_id: str
    parent_id: str
    selectors: tuple[Selector, ...]
    x509_svid_ttl: int = 0
    jwt_svid_ttl: int = 0
    dns_names: tuple[str, ...] = ()
    federates_with: tuple[str, ...] = ()
    admin: bool = False
    downstream: bool = False
    hint: str = ""
    expires_at: int = 0
    revision: int = 0
    created_at: int = 0


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revoked serial, SPIFFE ID, registration entry or authority."""

    target_kind: str
    target: str
    reason: int
    note: str
    revoked_at: int
    revoked_by: str

    def __post_init__(self) -> None:
        _require_one_of("revocation target kind", self.target_kind, REVOCATION_TARGET_KINDS)
        if self.reason not in CRL_REASON_CODES:
            raise ValueError(f"revocation reason {self.reason!r} is not an RFC 5280 CRLReason")


@dataclass(frozen=True, slots=True)
class FederatedBundleRecord:
    """The last good bundle of a foreign trust domain, as its bundle endpoint served it.

    ``bundle_json`` is the SPIFFE bundle (JWKS) text, ``sequence`` its ``spiffe_sequence``,
    ``refreshed_at`` when it was fetched, ``endpoint_url`` where from.
    """

    trust_domain: str
    bundle_json: str
    sequence: int
    refreshed_at: int
    endpoint_url: str


@dataclass(frozen=True, slots=True)
class JoinTokenRecord:
    """A join token an agent may attest with once before ``expires_at``.

    ``token_hash`` is the SHA-256 (hex) of the token: the token itself is never stored.
    ``node_id`` is the SPIFFE ID the token's agent answers to as a parent, besides its own.
    """

    token_hash: str
    node_id: str
    expires_at: int
    created_at: int


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An attested node agent: its SPIFFE ID, how it attested, its current SVID's serial.

    ``node_id`` is an alias entries may name as their parent (from the join token), or "".
    A ``banned`` agent may neither renew nor attest again; an evicted one is deleted.
    """

    agent_id: str
    method: str
    node_id: str
    serial: str
    attested_at: int
    expires_at: int
    banned: bool = False


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One link of the append-only audit chain; ``seq``, ``prev_hash`` and ``hash`` come from
    the store."""

    seq: int
    time: int
    actor: str
    action: str
    subject: str
    details: dict[str, Any] = field(hash=False)
    prev_hash: str
    hash: str


def canonical_json(value: Any) -> str:
    """The one JSON encoding that is hashed and stored: sorted keys, no spaces, ASCII only.

    Raises ``TypeError`` or ``ValueError`` for values JSON cannot represent exactly (NaN too).
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def audit_record_hash(
    *,
    seq: int,
    time: int,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any],
    prev_hash: str,
) -> str:
    """The hex SHA-256 that chains audit record ``seq`` to ``prev_hash``.

    The hashed bytes are the canonical JSON array
    ``[seq, time, actor, action, subject, details, prev_hash]``, so any verifier that can
    produce canonical JSON can recompute it.
    """
    encoded = canonical_json([seq, time, actor, action, subject, details, prev_hash])
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def link_audit_record(
    *,
    seq: int,
    time: int,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> AuditRecord:
    """The audit record ``seq`` chained to ``prev_hash``, ``details`` in its JSON round trip.

    Raises ``TypeError`` or ``ValueError`` if ``details`` is not a JSON-serialisable mapping.
    """
    if not isinstance(details, Mapping):
        raise TypeError(f"audit details must be a mapping, not {type(details).__name__}")
    normalised: dict[str, Any] = json.loads(canonical_json(details))
    digest = audit_record_hash(
        seq=seq,
        time=time,
        actor=actor,
        action=action,
        subject=subject,
        details=normalised,
        prev_hash=prev_hash,
    )
    return AuditRecord(seq, time, actor, action, subject, normalised, prev_hash, digest)


@dataclass(frozen=True, slots=True)
class StorePosition:
    """Which store this is and how far its history has come.

    ``generation`` is made once, when the store is initialised, and never changes; a store
    that was wiped or replaced has another one (or none: ``""``). The audit chain's head
    (``audit_seq``, ``audit_hash``; 0 and the genesis hash for an empty chain) only moves
    forward, since every change is audited.
    """

    generation: str
    audit_seq: int
    audit_hash: str

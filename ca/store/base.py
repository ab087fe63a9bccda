"""The one store interface every backend implements, the errors it raises, and the port
through which replicas sharing a store follow each other's changes (``ChangeFeed``).

Backends are synchronous and safe to share between threads. They keep what they are given and
nothing more: rotating does not revoke; callers do. Every change method takes the audit records
that describe it (``AuditDraft``s, linked into the chain by the store) and writes them with the
change, its change-feed event and any sequence bump in one transaction: a change that raises left
nothing behind, and a change that returned is audited. A backend raises only ``StoreError`` and
its subclasses, never its driver's exceptions.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, TypedDict

from ca.lease import Claim, Lease
from ca.store.records import (
    AUDIT_GENESIS_HASH,
    AgentRecord,
    AuditRecord,
    AuthorityRecord,
    FederatedBundleRecord,
    IssuanceRecord,
    JoinTokenRecord,
    RegistrationEntry,
    Revocation,
    Selector,
    StorePosition,
    link_audit_record,
)


class StoreError(Exception):
    """The store could not do what was asked (and changed nothing)."""


class NotFound(StoreError):
    """The named record does not exist."""


class AlreadyExists(StoreError):
    """A record with the same identity (or, for entries, the same selectors) exists."""


class Conflict(StoreError):
    """An update was based on a revision that is no longer the stored one."""


class CorruptRecord(StoreError):
    """A stored record can no longer be read (damage outside the store's own writes)."""


class SchemaError(StoreError):
    """The stored data was written by a newer schema than this code knows."""


class ChangeFeedGap(StoreError):
    """Events after the consumer's last id are gone (trimmed, or the feed was reset): the
    consumer must rebuild its whole view from the store."""


class Fenced(StoreError):
    """A rotation write carried a fencing token that is no longer the highest granted: the
    rotation lease has moved to another replica since (see ``ca.lease``)."""


@dataclass(frozen=True, slots=True)
class AuditDraft:
    """An audit record before the store links it: the store gives it its ``seq`` and hashes
    in the same transaction as the change it describes."""

    time: int
    actor: str
    action: str
    subject: str
    details: Mapping[str, Any] = field(default_factory=dict)


#: The audit records that go with one change: one draft, several, or none.
Audit = AuditDraft | Sequence[AuditDraft]


def audit_drafts(audit: Audit) -> tuple[AuditDraft, ...]:
    """``audit`` as a tuple of drafts, in the order they are appended."""
    return (audit,) if isinstance(audit, AuditDraft) else tuple(audit)


class Change(TypedDict):
    """One change-feed event. ``key`` is the authority_id, the entry_id, or for a
    revocation ``"<target_kind>:<target>"`` (target kinds never contain a colon)."""

    id: str
    kind: str  # "revocation" | "entry" | "authority"
    op: str  # "add" | "remove" | "update"
    key: str


class ChangeFeed(Protocol):
    """The changes every handle on a shared store makes, in order, for views kept in step.

    To (re)build a view: ``last = latest_change_id()``, then load the view from the store,
    then apply ``changes_since(last)`` in a loop; events the load already saw replay
    harmlessly if applying is idempotent. On ``ChangeFeedGap``, rebuild.
    """

    def latest_change_id(self) -> str:
        """The id of the newest change: the point a view loaded from the store now is at."""
        ...

    def changes_since(
        self, last_id: str, *, block_ms: int | None = None
    ) -> tuple[str, list[Change]]:
        """Changes after ``last_id``, oldest first, and the id to ask from next; with
        ``block_ms``, waits up to that long for a first one. ``ChangeFeedGap`` if some are
        gone."""
        ...


class RotationLeaseStore(Protocol):
    """The shared rotation lease and its fencing counter (``ca.lease`` decides the claims)."""

    def claim(self, claimant: str, *, now: float, ttl: float) -> Claim:
        """Claim or renew the lease for ``claimant`` at ``now`` in one atomic step."""
        ...

    def release(self, holder: str, token: int) -> bool:
        """Give the lease up if ``holder`` still holds it under ``token``."""
        ...

    def current(self) -> tuple[Lease | None, int]:
        """The stored lease (if any) and the highest fencing token ever granted."""
        ...


class WrappedKeyVault(Protocol):
    """Authority keys wrapped with the replicas' key-encryption key, shared by the replicas."""

    def put_wrapped(self, key_ref: str, wrapped: bytes, *, fence: int | None) -> None:
        """Store ``wrapped`` under ``key_ref``; ``Fenced`` if ``fence`` is stale."""
        ...

    def get_wrapped(self, key_ref: str) -> bytes | None:
        """The wrapped key stored under ``key_ref``, or None."""
        ...

    def delete_wrapped(self, key_ref: str, *, fence: int | None) -> None:
        """Forget ``key_ref``'s wrapped key; ``Fenced`` if ``fence`` is stale."""
        ...


class Store(abc.ABC):
    """Persistent CA state: authorities, counters, issuances, entries, revocations, audit."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend; closing twice is harmless, any other call afterwards fails."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The version of the stored schema."""

    @abc.abstractmethod
    def position(self) -> StorePosition:
        """This store's generation and the head of its audit chain (see ``StorePosition``)."""

    def change_feed(self) -> ChangeFeed | None:
        """The feed of changes made through any handle, for a store several replicas share;
        None for a store only this process writes (SQLite), where there is nothing to follow."""
        return None

    def rotation_lease(self) -> RotationLeaseStore | None:
        """The lease one replica at a time leads rotation under; None for a store only this
        process writes, whose one process always leads."""
        return None

    def wrapped_keys(self) -> WrappedKeyVault | None:
        """Where replicas share the authority keys wrapped with their key-encryption key;
        None for a store only this process uses."""
        return None

    # -- authorities ---------------------------------------------------------------------

    @abc.abstractmethod
    def get_authority(self, authority_id: str) -> AuthorityRecord:
        """The authority ``authority_id``; ``NotFound`` if there is none."""

    @abc.abstractmethod
    def list_authorities(self, kind: str | None = None) -> list[AuthorityRecord]:
        """Authorities (of ``kind`` if given), ordered by ``not_before`` then ``created_at``."""

    @abc.abstractmethod
    def save_authorities(
        self,
        records: Sequence[AuthorityRecord],
        *,
        delete: Sequence[str] = (),
        audit: Audit = (),
        sequence: str | None = None,
        fence: int | None = None,
    ) -> None:
        """Insert or replace ``records``, forget the authorities ``delete`` names, append
        ``audit`` and increment the counter ``sequence`` (if given), in one transaction.

        Rotation depends on this: the prepared authority becomes active in the same write that
        retires the old one, so no reader ever sees two active authorities or none; and the
        bundle's sequence moves in the write that changes the bundle, so one sequence number
        never stands for two bundles. ``NotFound`` (and nothing written) if an authority in
        ``delete`` does not exist. With ``fence`` (a rotation lease's token), ``Fenced`` and
        nothing written unless it is the highest token granted; a store no other process
        writes has no lease and ignores it.
        """

    @abc.abstractmethod
    def delete_authority(self, authority_id: str) -> None:
        """Forget the authority ``authority_id``; ``NotFound`` if there is none."""

    # -- counters ------------------------------------------------------------------------

    @abc.abstractmethod
    def next_sequence(self, name: str) -> int:
        """Atomically increment the persistent counter ``name`` and return it (first is 1)."""

    @abc.abstractmethod
    def current_sequence(self, name: str) -> int:
        """The last value ``next_sequence(name)`` returned, or 0 if it never ran."""

    # -- issuance log --------------------------------------------------------------------

    def record_issuance(self, record: IssuanceRecord) -> None:
        """Log one signed SVID; ``AlreadyExists`` if its serial is already logged."""
        self.record_issuances((record,))

    @abc.abstractmethod
    def record_issuances(self, records: Sequence[IssuanceRecord]) -> None:
        """Log signed SVIDs atomically (all or none); ``AlreadyExists`` on a logged serial."""

    @abc.abstractmethod
    def get_issuance(self, serial: str) -> IssuanceRecord:
        """The issuance with ``serial``; ``NotFound`` if there is none."""

    @abc.abstractmethod
    def list_issuances(
        self,
        *,
        spiffe_id: str | None = None,
        authority_id: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[IssuanceRecord]:
        """Issuances matching every given filter, newest ``issued_at`` first (ties: newest
        recorded first), at most ``limit`` of them."""

    # -- registration entries ------------------------------------------------------------

    @abc.abstractmethod
    def create_entry(self, entry: RegistrationEntry, *, audit: Audit = ()) -> RegistrationEntry:
        """Store a new entry with revision 0 and return it as stored (with ``audit``).

        ``AlreadyExists`` if ``entry_id`` is taken, or if another entry has the same
        ``spiffe_id``, ``parent_id`` and set of selectors (the message names that entry).
        """

    @abc.abstractmethod
    def get_entry(self, entry_id: str) -> RegistrationEntry:
        """The entry ``entry_id``; ``NotFound`` if there is none."""

    @abc.abstractmethod
    def list_entries(
        self,
        *,
        spiffe_id: str | None = None,
        parent_id: str | None = None,
        selector: Selector | None = None,
    ) -> list[RegistrationEntry]:
        """Entries matching every given filter (``selector``: entries that have it), ordered by
        ``created_at`` then ``entry_id``."""

    @abc.abstractmethod
    def update_entry(
        self, entry: RegistrationEntry, *, expected_revision: int, audit: Audit = ()
    ) -> RegistrationEntry:
        """Replace entry ``entry.entry_id`` if its stored revision is ``expected_revision``
        (with ``audit``).

        Returns the stored value: revision incremented, ``created_at`` kept from the original.
        ``NotFound`` if there is no such entry, ``Conflict`` if the revision moved on,
        ``AlreadyExists`` if the new selectors duplicate another entry's.
        """

    @abc.abstractmethod
    def delete_entry(
        self, entry_id: str, *, expected_revision: int | None = None, audit: Audit = ()
    ) -> None:
        """Delete the entry ``entry_id`` (with ``audit``); ``NotFound`` if there is none,
        ``Conflict`` if ``expected_revision`` is given and the stored one differs."""

    # -- revocations ---------------------------------------------------------------------

    @abc.abstractmethod
    def add_revocation(self, revocation: Revocation, *, audit: Audit = ()) -> None:
        """Record a revocation (with ``audit``); ``AlreadyExists`` if that target is already
        revoked."""

    @abc.abstractmethod
    def get_revocation(self, target_kind: str, target: str) -> Revocation:
        """The revocation of ``target``; ``NotFound`` if it is not revoked."""

    @abc.abstractmethod
    def remove_revocation(self, target_kind: str, target: str, *, audit: Audit = ()) -> None:
        """Lift the revocation of ``target`` (with ``audit``); ``NotFound`` if it is not
        revoked."""

    @abc.abstractmethod
    def list_revocations(self, target_kind: str | None = None) -> list[Revocation]:
        """Revocations (of ``target_kind`` if given), oldest ``revoked_at`` first."""

    # -- federated bundles ---------------------------------------------------------------

    @abc.abstractmethod
    def save_federated_bundle(self, record: FederatedBundleRecord) -> None:
        """Insert or replace the bundle of ``record.trust_domain``."""

    @abc.abstractmethod
    def get_federated_bundle(self, trust_domain: str) -> FederatedBundleRecord:
        """The stored bundle of ``trust_domain``; ``NotFound`` if there is none."""

    @abc.abstractmethod
    def list_federated_bundles(self) -> list[FederatedBundleRecord]:
        """Every stored foreign bundle, by trust domain name."""

    @abc.abstractmethod
    def delete_federated_bundle(self, trust_domain: str) -> None:
        """Forget the bundle of ``trust_domain``; ``NotFound`` if there is none."""

    # -- node agents ---------------------------------------------------------------------

    @abc.abstractmethod
    def save_join_token(self, record: JoinTokenRecord) -> None:
        """Keep a new join token; ``AlreadyExists`` if one with its hash is kept already."""

    @abc.abstractmethod
    def take_join_token(self, token_hash: str) -> JoinTokenRecord:
        """Remove and return the join token with ``token_hash``, atomically: of two callers
        only one gets it. ``NotFound`` if there is none (never made, or already used)."""

    @abc.abstractmethod
    def save_agent(self, record: AgentRecord) -> None:
        """Insert or replace the agent ``record.agent_id``."""

    @abc.abstractmethod
    def get_agent(self, agent_id: str) -> AgentRecord:
        """The agent ``agent_id``; ``NotFound`` if there is none."""

    @abc.abstractmethod
    def list_agents(self) -> list[AgentRecord]:
        """Every attested agent, by SPIFFE ID."""

    @abc.abstractmethod
    def delete_agent(self, agent_id: str) -> None:
        """Forget the agent ``agent_id``; ``NotFound`` if there is none."""

    # -- audit ---------------------------------------------------------------------------

    @abc.abstractmethod
    def append_audit(
        self,
        *,
        time: int,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any],
    ) -> AuditRecord:
        """Append one record that goes with no change to the audit chain and return it with
        its ``seq`` and hashes (a change's records go with the change: ``audit=``).

        ``details`` is stored as canonical JSON, so the returned ``details`` is its JSON
        round trip (tuples become lists); ``StoreError`` if it is not JSON-serialisable.
        """

    @abc.abstractmethod
    def list_audit(
        self,
        *,
        since: int | None = None,
        subject: str | None = None,
        after_seq: int | None = None,
    ) -> list[AuditRecord]:
        """Audit records with ``time >= since``, this ``subject`` and ``seq > after_seq``
        (each filter only if given), ascending by ``seq``."""


def link_audit_drafts(
    previous: tuple[int, str] | None, drafts: Sequence[AuditDraft]
) -> list[AuditRecord]:
    """``drafts`` linked into the chain after ``previous`` (its seq and hash; None if empty)."""
    records: list[AuditRecord] = []
    for draft in drafts:
        record = next_audit_record(
            previous,
            time=draft.time,
            actor=draft.actor,
            action=draft.action,
            subject=draft.subject,
            details=draft.details,
        )
        records.append(record)
        previous = (record.seq, record.hash)
    return records


def next_audit_record(
    previous: tuple[int, str] | None,
    *,
    time: int,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
) -> AuditRecord:
    """The record that follows ``previous`` (its seq and hash; None for the first one).

    Every backend appends through this, so the chain is built one way; details that cannot
    be stored become a ``StoreError``.
    """
    seq, prev_hash = (1, AUDIT_GENESIS_HASH) if previous is None else (previous[0] + 1, previous[1])
    try:
        return link_audit_record(
            seq=seq,
            time=time,
            actor=actor,
            action=action,
            subject=subject,
            details=details,
            prev_hash=prev_hash,
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(f"audit details for {action!r} cannot be stored: {exc}") from exc

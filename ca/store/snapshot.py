"""Everything a store holds at one point in time, as plain records: what a backup carries.

``take_snapshot`` reads a store consistently while others write to it: SQLite through its
online backup API (a page copy under the store's lock, then read at leisure), Redis in one
MULTI/EXEC (``ca.store.redis.snapshot``). ``read_snapshot`` reads any store through the
``Store`` interface, for a store nobody else writes (a copy, a staging file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ca.store.base import Store
from ca.store.records import (
    AuditRecord,
    AuthorityRecord,
    IssuanceRecord,
    RegistrationEntry,
    Revocation,
    StorePosition,
)

__all__ = ["StoreSnapshot", "read_snapshot"]


@dataclass(frozen=True)
class StoreSnapshot:
    """A store's contents: its position (generation and audit head), the counters named
    when it was taken, and every record; issuances newest first, as the store lists them."""

    position: StorePosition
    sequences: Mapping[str, int] = field(default_factory=dict)
    authorities: Sequence[AuthorityRecord] = ()
    entries: Sequence[RegistrationEntry] = ()
    revocations: Sequence[Revocation] = ()
    issuances: Sequence[IssuanceRecord] = ()
    audit: Sequence[AuditRecord] = ()

    def counts(self) -> dict[str, int]:
        return {
            "authorities": len(self.authorities),
            "entries": len(self.entries),
            "revocations": len(self.revocations),
            "issuances": len(self.issuances),
            "audit": len(self.audit),
        }

    def with_sequences(self, sequences: Mapping[str, int]) -> StoreSnapshot:
        return replace(self, sequences=dict(sequences))


def read_snapshot(store: Store, sequences: Sequence[str]) -> StoreSnapshot:
    """``store``'s contents through the interface: consistent only if nobody writes to it."""
    return StoreSnapshot(
        position=store.position(),
        sequences={name: store.current_sequence(name) for name in sequences},
        authorities=tuple(store.list_authorities()),
        entries=tuple(store.list_entries()),
        revocations=tuple(store.list_revocations()),
        issuances=tuple(store.list_issuances()),
        audit=tuple(store.list_audit()),
    )

"""The registration entries in memory, indexed by selector, for attestation-time matching.

A workload gets the SVID of every entry whose selectors are *all* among the workload's
attested selectors (SPIRE's rule). The index maps each selector to the entries that name
it, so matching costs a few set operations, not a scan of every entry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from ca.clock import Clock
from ca.store import NotFound, RegistrationEntry, Selector, Store


class EntryRegistry:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, RegistrationEntry] = {}
        self._by_selector: dict[Selector, set[str]] = {}
        self._listeners: list[Callable[[], None]] = []
        self.generation = 0
        self.reload()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the entries."""
        self._listeners.append(listener)

    def reload(self) -> None:
        """Re-read every entry from the store (after an admin change, or periodically)."""
        entries = {e.entry_id: e for e in self._store.list_entries()}
        index: dict[Selector, set[str]] = {}
        for entry in entries.values():
            for selector in entry.selectors:
                index.setdefault(selector, set()).add(entry.entry_id)
        with self._lock:
            changed = entries != self._entries
            self._entries, self._by_selector = entries, index
            if changed:
                self.generation += 1
        if changed:
            for listener in self._listeners:
                listener()

    def refresh(self, entry_id: str) -> None:
        """Re-read one entry (after it was created, updated or deleted): O(its selectors)."""
        try:
            entry: RegistrationEntry | None = self._store.get_entry(entry_id)
        except NotFound:
            entry = None
        with self._lock:
            old = self._entries.get(entry_id)
            if old == entry:
                return
            # Index sets are replaced, never mutated, so a concurrent match() sees either.
            by_selector = self._by_selector
            if old is not None:
                for selector in old.selectors:
                    by_selector[selector] = by_selector.get(selector, set()) - {entry_id}
            if entry is not None:
                self._entries[entry_id] = entry
                for selector in entry.selectors:
                    by_selector[selector] = by_selector.get(selector, set()) | {entry_id}
            else:
                self._entries.pop(entry_id, None)
            self.generation += 1
        for listener in self._listeners:
            listener()

    def get(self, entry_id: str) -> RegistrationEntry | None:
        """The entry, unless it does not exist or has expired."""
        entry = self._entries.get(entry_id)
        if entry is not None and entry.expires_at and entry.expires_at <= self._clock.now():
            return None
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, selectors: Iterable[Selector]) -> list[RegistrationEntry]:
        """Entries whose selectors are all satisfied by ``selectors``, oldest first."""
        have = frozenset(selectors)
        entries, index = self._entries, self._by_selector
        candidates: set[str] = set()
        for selector in have:
            candidates |= index.get(selector, set())
        now = self._clock.now()
        matched = [
            entry
            for entry_id in candidates
            if (entry := entries.get(entry_id)) is not None
            and entry.selectors
            and have.issuperset(entry.selectors)
            and (not entry.expires_at or entry.expires_at > now)
        ]
        matched.sort(key=lambda e: (e.created_at, e.entry_id))
        return matched

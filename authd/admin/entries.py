"""Registration entries as admin operations: create, read, list, update, delete.

What makes an entry valid is ``authd.workload.entries``; every change is audited and
reloaded into the in-memory registry before the operation returns.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from authd.admin.callers import AdminCaller
from authd.admin.errors import InvalidArgument, store_refusal
from authd.workload.entries import EntryError, EntryRules, parse_selector
from authd.workload.registry import EntryRegistry
from ca.certificate_authority import CertificateAuthority
from ca.errors import InvalidSpiffeId
from ca.spiffe_id import SpiffeId
from ca.store import RegistrationEntry, Selector, StoreError

log = logging.getLogger(__name__)


def _audit_details(entry: RegistrationEntry) -> dict[str, Any]:
    return {
        "spiffe_id": entry.spiffe_id,
        "parent_id": entry.parent_id,
        "selectors": [f"{s.type}:{s.value}" for s in entry.selectors],
        "revision": entry.revision,
    }


class EntryOperations:
    def __init__(self, ca: CertificateAuthority, registry: EntryRegistry) -> None:
        self._ca = ca
        self._store = ca.store
        self._registry = registry
        self._rules = EntryRules(ca.trust_domain, ca.settings.max_svid_ttl)

    def create(self, caller: AdminCaller, wanted: RegistrationEntry) -> RegistrationEntry:
        """Stores ``wanted`` as a new entry (its revision and creation time are ours)."""
        now = self._ca.clock.now()
        wanted = replace(wanted, revision=0, created_at=int(now))
        try:
            entry = self._store.create_entry(self._rules.check(wanted, now=now))
        except EntryError as exc:
            raise InvalidArgument(str(exc)) from None
        except StoreError as exc:
            raise store_refusal(exc) from None
        self._changed(caller, "entry.create", entry)
        return entry

    def get(self, entry_id: str) -> RegistrationEntry:
        try:
            return self._store.get_entry(entry_id)
        except StoreError as exc:
            raise store_refusal(exc) from None

    def list(
        self, *, spiffe_id: str = "", parent_id: str = "", selector: str = ""
    ) -> list[RegistrationEntry]:
        """The entries matching every filter given (empty: not filtered), oldest first."""
        for field, value in (("spiffe_id", spiffe_id), ("parent_id", parent_id)):
            try:
                if value:
                    SpiffeId.parse(value)
            except InvalidSpiffeId as exc:
                raise InvalidArgument(f"filter {field!r}: {exc}") from None
        wanted: Selector | None = None
        if selector:
            try:
                wanted = parse_selector(selector)
            except EntryError as exc:
                raise InvalidArgument(f"filter 'selector': {exc.why}") from None
        try:
            return self._store.list_entries(
                spiffe_id=spiffe_id or None, parent_id=parent_id or None, selector=wanted
            )
        except StoreError as exc:
            raise store_refusal(exc) from None

    def update(self, caller: AdminCaller, wanted: RegistrationEntry) -> RegistrationEntry:
        """Replaces the entry ``wanted.entry_id`` if it is still at ``wanted.revision``."""
        try:
            if not wanted.entry_id:
                raise EntryError("entry_id", "is required to update an entry")
            checked = self._rules.check(wanted, now=self._ca.clock.now())
            entry = self._store.update_entry(checked, expected_revision=wanted.revision)
        except EntryError as exc:
            raise InvalidArgument(str(exc)) from None
        except StoreError as exc:
            raise store_refusal(exc) from None
        self._changed(caller, "entry.update", entry)
        return entry

    def delete(self, caller: AdminCaller, entry_id: str) -> None:
        try:
            entry = self._store.get_entry(entry_id)
            self._store.delete_entry(entry_id)
        except StoreError as exc:
            raise store_refusal(exc) from None
        self._changed(caller, "entry.delete", entry)

    def _changed(self, caller: AdminCaller, action: str, entry: RegistrationEntry) -> None:
        try:
            self._registry.refresh(entry.entry_id)
            self._store.append_audit(
                time=int(self._ca.clock.now()),
                actor=caller.actor,
                action=action,
                subject=entry.entry_id,
                details=_audit_details(entry),
            )
        except StoreError as exc:
            raise store_refusal(exc) from None
        log.info("%s %s (%s) by %s", action, entry.entry_id, entry.spiffe_id, caller)

"""Registration entries as admin operations: create, read, list, update, delete.

What makes an entry valid is ``authd.workload.entries``; every change is stored with its audit
record in one write, then reloaded into the in-memory registry before the operation returns. A
refused operation changed nothing; once the write is done the operation succeeds (a registry
that cannot re-read the entry now is logged; it catches up from a shared store's change feed,
or when the daemon restarts).
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
from ca.store import AuditDraft, RegistrationEntry, Selector, StoreError

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
            checked = self._rules.check(wanted, now=now)
            audit = self._audit(caller, "entry.create", checked)
            entry = self._store.create_entry(checked, audit=audit)
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
            # The stored revision will be one past the expected one, or nothing is stored.
            audit = self._audit(
                caller, "entry.update", replace(checked, revision=wanted.revision + 1)
            )
            entry = self._store.update_entry(
                checked, expected_revision=wanted.revision, audit=audit
            )
        except EntryError as exc:
            raise InvalidArgument(str(exc)) from None
        except StoreError as exc:
            raise store_refusal(exc) from None
        self._changed(caller, "entry.update", entry)
        return entry

    def delete(self, caller: AdminCaller, entry_id: str) -> None:
        try:
            entry = self._store.get_entry(entry_id)
            # The audit record describes what is deleted: refused if it changed meanwhile.
            self._store.delete_entry(
                entry_id,
                expected_revision=entry.revision,
                audit=self._audit(caller, "entry.delete", entry),
            )
        except StoreError as exc:
            raise store_refusal(exc) from None
        self._changed(caller, "entry.delete", entry)

    def _audit(self, caller: AdminCaller, action: str, entry: RegistrationEntry) -> AuditDraft:
        return AuditDraft(
            time=int(self._ca.clock.now()),
            actor=caller.actor,
            action=action,
            subject=entry.entry_id,
            details=_audit_details(entry),
        )

    def _changed(self, caller: AdminCaller, action: str, entry: RegistrationEntry) -> None:
        """After the write: the change and its audit are stored, so this never refuses."""
        log.info("%s %s (%s) by %s", action, entry.entry_id, entry.spiffe_id, caller)
        try:
            self._registry.refresh(entry.entry_id)
        except StoreError as exc:
            log.error(
                "%s %s is stored, but the registry could not re-read it: %s",
                action,
                entry.entry_id,
                exc,
            )

"""The audit log as admin operations: its records (filtered by time, subject or SPIFFE ID)
and a check of its whole hash chain. What the chain proves is ``ca.audit``."""

from __future__ import annotations

import logging

from authd.admin.callers import AdminCaller
from authd.admin.errors import DataLoss, store_refusal
from authd.admin.issuance import spiffe_id_filter
from ca.audit import AuditVerdict, records_about, verify_chain
from ca.certificate_authority import CertificateAuthority
from ca.store import AuditRecord, CorruptRecord, StoreError

log = logging.getLogger(__name__)


class AuditOperations:
    def __init__(self, ca: CertificateAuthority) -> None:
        self._ca = ca

    def records(
        self, *, since: int = 0, subject: str = "", spiffe_id: str = ""
    ) -> list[AuditRecord]:
        """The records matching every filter given (empty or 0: not filtered), oldest first."""
        about = spiffe_id_filter(spiffe_id)
        records = self._read(since=since or None, subject=subject or None)
        if about is None:
            return records
        try:
            self._ca.issuance_log.flush()
            serials = [i.serial for i in self._ca.store.list_issuances(spiffe_id=about)]
        except StoreError as exc:
            raise store_refusal(exc) from None
        # Entries are recognised by their own records, which may precede the filters.
        history = self._read() if since or subject else records
        return records_about(about, records, history=history, serials=serials)

    def verify(self, caller: AdminCaller) -> AuditVerdict:
        verdict = verify_chain(self._read())
        if verdict.intact:
            log.info("audit log intact: %d records (checked by %s)", verdict.records, caller)
        else:
            log.warning("audit log broken at record %d: %s", verdict.broken_seq, verdict.problem)
        return verdict

    def _read(self, *, since: int | None = None, subject: str | None = None) -> list[AuditRecord]:
        try:
            return self._ca.store.list_audit(since=since, subject=subject)
        except CorruptRecord as exc:
            # A row that no longer parses (details that are not JSON) is damage as well.
            raise DataLoss(f"cannot read the audit log: {exc}") from None
        except StoreError as exc:
            raise store_refusal(exc) from None

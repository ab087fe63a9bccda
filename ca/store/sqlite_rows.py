"""Records as SQLite rows and back."""

from __future__ import annotations

import base64
import json
from typing import Any

from ca.store.records import (
    AuditRecord,
    AuthorityRecord,
    IssuanceRecord,
    RegistrationEntry,
    Revocation,
    Selector,
    canonical_json,
)


def authority_to_row(record: AuthorityRecord) -> tuple[object, ...]:
    chain = [base64.b64encode(der).decode("ascii") for der in record.upstream_chain_der]
    return (
        record.authority_id,
        record.kind,
        record.state,
        record.key_type,
        record.key_ref,
        record.public_key_der,
        record.certificate_der,
        json.dumps(chain),
        record.not_before,
        record.not_after,
        record.created_at,
        record.tainted,
        record.revoked,
    )


def authority_from_row(row: tuple[Any, ...]) -> AuthorityRecord:
    (
        authority_id,
        kind,
        state,
        key_type,
        key_ref,
        public_key_der,
        certificate_der,
        chain,
        not_before,
        not_after,
        created_at,
        tainted,
        revoked,
    ) = row
    return AuthorityRecord(
        authority_id=authority_id,
        kind=kind,
        state=state,
        key_type=key_type,
        key_ref=key_ref,
        public_key_der=public_key_der,
        certificate_der=certificate_der,
        upstream_chain_der=tuple(base64.b64decode(der) for der in json.loads(chain)),
        not_before=not_before,
        not_after=not_after,
        created_at=created_at,
        tainted=bool(tainted),
        revoked=bool(revoked),
    )


def entry_to_row(entry: RegistrationEntry) -> tuple[object, ...]:
    return (
        entry.entry_id,
        entry.spiffe_id,
        entry.parent_id,
        canonical_json([[s.type, s.value] for s in entry.selectors]),
        entry.x509_svid_ttl,
        entry.jwt_svid_ttl,
        canonical_json(list(entry.dns_names)),
        canonical_json(list(entry.federates_with)),
        entry.admin,
        entry.downstream,
        entry.hint,
        entry.expires_at,
        entry.revision,
        entry.created_at,
    )


def entry_from_row(row: tuple[Any, ...]) -> RegistrationEntry:
    (
        entry_id,
        spiffe_id,
        parent_id,
        selectors,
        x509_svid_ttl,
        jwt_svid_ttl,
        dns_names,
        federates_with,
        admin,
        downstream,
        hint,
        expires_at,
        revision,
        created_at,
    ) = row
    return RegistrationEntry(
        entry_id=entry_id,
        spiffe_id=spiffe_id,
        parent_id=parent_id,
        selectors=selectors_from_json(selectors),
        x509_svid_ttl=x509_svid_ttl,
        jwt_svid_ttl=jwt_svid_ttl,
        dns_names=tuple(json.loads(dns_names)),
        federates_with=tuple(json.loads(federates_with)),
        admin=bool(admin),
        downstream=bool(downstream),
        hint=hint,
        expires_at=expires_at,
        revision=revision,
        created_at=created_at,
    )


def selectors_from_json(text: str) -> tuple[Selector, ...]:
    return tuple(Selector(type_, value) for type_, value in json.loads(text))


def issuance_to_row(r: IssuanceRecord) -> tuple[object, ...]:
    return (
        r.serial,
        r.kind,
        r.spiffe_id,
        r.authority_id,
        r.not_before,
        r.not_after,
        r.requester,
        r.issued_at,
    )


def revocation_to_row(r: Revocation) -> tuple[object, ...]:
    return (r.target_kind, r.target, r.reason, r.note, r.revoked_at, r.revoked_by)


def audit_to_row(r: AuditRecord) -> tuple[object, ...]:
    details = canonical_json(r.details)
    return (r.seq, r.time, r.actor, r.action, r.subject, details, r.prev_hash, r.hash)

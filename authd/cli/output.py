"""How the CLI prints what the admin API answers: times, tables, JSON, and the fields of
an entry as ``spire-server`` shows them."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from authd.api.authd.admin.v1 import admin_pb2
from authd.config import format_duration


def when(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell; the last one is not padded."""
    table = [headers, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers) - 1)]
    return [
        "  ".join([*(row[i].ljust(width) for i, width in enumerate(widths)), row[-1]]).rstrip()
        for row in table
    ]


def print_json(document: Any) -> None:
    """What every ``--json`` prints: one JSON document, indented."""
    print(json.dumps(document, indent=2))


AUTHORITY_KINDS = ("x509", "jwt")
AUTHORITY_STATES = ("active", "prepared", "retired")


def ordered_authorities(authorities: Iterable[admin_pb2.Authority]) -> list[admin_pb2.Authority]:
    """The one order every command lists authorities in: X.509 before JWT, then active,
    prepared, retired, and the newest first within a state."""

    def rank(a: admin_pb2.Authority) -> tuple[int, int, int]:
        kinds, states = AUTHORITY_KINDS, AUTHORITY_STATES
        kind = kinds.index(a.kind) if a.kind in kinds else len(kinds)
        state = states.index(a.state) if a.state in states else len(states)
        return kind, state, -a.not_before

    return sorted(authorities, key=rank)


def authority_lines(authorities: Iterable[admin_pb2.Authority]) -> list[str]:
    """X.509 and JWT authorities under their headings, in the one order."""
    ordered = ordered_authorities(authorities)
    lines: list[str] = []
    for kind, title in (("x509", "X.509 authorities"), ("jwt", "JWT authorities")):
        lines += ["", f"{title}:"]
        lines += [authority_line(a) for a in ordered if a.kind == kind]
    return lines


def authority_json(a: admin_pb2.Authority) -> dict[str, Any]:
    return {
        "authority_id": a.authority_id,
        "kind": a.kind,
        "state": a.state,
        "key_type": a.key_type,
        "not_before": when(a.not_before),
        "not_after": when(a.not_after),
        "subject": a.subject,
        "tainted": a.tainted,
        "revoked": a.revoked,
    }


def authority_line(a: admin_pb2.Authority) -> str:
    flags = "".join((" tainted" if a.tainted else "", " revoked" if a.revoked else ""))
    return (
        f"  {a.authority_id}  {a.state:<8}  {a.key_type:<8}  "
        f"{when(a.not_before)} .. {when(a.not_after)}{flags}"
    )


def entry_json(entry: admin_pb2.Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "spiffe_id": entry.spiffe_id,
        "parent_id": entry.parent_id,
        "selectors": [f"{s.type}:{s.value}" for s in entry.selectors],
        "x509_svid_ttl": entry.x509_svid_ttl,
        "jwt_svid_ttl": entry.jwt_svid_ttl,
        "dns_names": list(entry.dns_names),
        "federates_with": list(entry.federates_with),
        "admin": entry.admin,
        "downstream": entry.downstream,
        "hint": entry.hint,
        "expires_at": entry.expires_at,
        "revision": entry.revision,
        "created_at": entry.created_at,
    }


def entry_lines(entry: admin_pb2.Entry) -> list[str]:
    """The entry as ``spire-server entry show`` prints it."""

    def ttl(seconds: int) -> str:
        return format_duration(seconds) if seconds else "default"

    fields = [
        ("Entry ID", entry.id),
        ("SPIFFE ID", entry.spiffe_id),
        ("Parent ID", entry.parent_id),
        ("Revision", str(entry.revision)),
        ("X509-SVID TTL", ttl(entry.x509_svid_ttl)),
        ("JWT-SVID TTL", ttl(entry.jwt_svid_ttl)),
    ]
    if entry.expires_at:
        fields.append(("Expiration time", when(entry.expires_at)))
    fields += [("Selector", f"{s.type}:{s.value}") for s in entry.selectors]
    fields += [("FederatesWith", name) for name in entry.federates_with]
    fields += [("DNS name", name) for name in entry.dns_names]
    if entry.admin:
        fields.append(("Admin", "true"))
    if entry.downstream:
        fields.append(("Downstream", "true"))
    if entry.hint:
        fields.append(("Hint", entry.hint))
    if entry.created_at:
        fields.append(("Created at", when(entry.created_at)))
    return [f"{name:<16} : {value}" for name, value in fields]


def print_entry(entry: admin_pb2.Entry, as_json: bool) -> None:
    if as_json:
        print_json(entry_json(entry))
    else:
        print("\n".join(entry_lines(entry)))


def revocation_json(r: admin_pb2.Revocation) -> dict[str, Any]:
    return {
        "kind": cli_kind(r.kind),
        "target": r.target,
        "reason": r.reason,
        "reason_code": r.reason_code,
        "note": r.note,
        "revoked_at": when(r.revoked_at),
        "revoked_by": r.revoked_by,
    }


def cli_kind(kind: str) -> str:
    return kind.replace("_", "-")


def svid_json(svid: admin_pb2.Svid) -> dict[str, Any]:
    requester = svid.requester
    return {
        "serial": svid.serial,
        "kind": svid.kind,
        "spiffe_id": svid.spiffe_id,
        "authority_id": svid.authority_id,
        "not_before": when(svid.not_before),
        "not_after": when(svid.not_after),
        "issued_at": when(svid.issued_at),
        "requester": requester,
        "entry_id": requester.removeprefix("entry:") if requester.startswith("entry:") else None,
        "revoked": svid.HasField("revocation"),
        "revocation": revocation_json(svid.revocation) if svid.HasField("revocation") else None,
    }


def audit_json(record: admin_pb2.AuditRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "time": when(record.time),
        "actor": record.actor,
        "action": record.action,
        "subject": record.subject,
        "details": json.loads(record.details_json),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }

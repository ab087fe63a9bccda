"""The backup file: a store snapshot as JSON lines, version 1.

One JSON object per line, UTF-8, each line ending in ``\\n``::

    {"format": "authd-store-backup", "version": 1, "created_at": T, "source": "sqlite",
     "generation": G, "audit_seq": N, "audit_hash": H, "sequences": {name: value},
     "counts": {"authorities": a, "entries": e, "revocations": r, "issuances": i, "audit": n}}
    {"type": "authority", "record": {...}}       one per authority
    {"type": "entry", "record": {...}}           one per registration entry
    {"type": "revocation", "record": {...}}      one per revocation, oldest first
    {"type": "issuance", "record": {...}}        one per logged SVID, newest first
    {"type": "audit", "record": {...}}           the audit chain, record 1 first
    {"type": "end", "lines": L, "sha256": S}

A record is the canonical JSON of its dataclass's fields, as the Redis store keeps it (bytes
in base64, selectors as ``["type", "value"]``). ``lines`` counts the lines before the last and
``sha256`` is the hex SHA-256 of their bytes, so a file cut short, or changed without
recomputing it, is refused. ``parse_backup`` reads a file an operator hands over: anything
but a well-formed version 1 file is a ``BackupError`` naming the line, never another error.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from ca.store.base import StoreError
from ca.store.records import AuditRecord, StorePosition, canonical_json
from ca.store.redis.codec import AUDIT, AUTHORITIES, ENTRIES, ISSUANCES, REVOCATIONS, RecordCodec
from ca.store.snapshot import StoreSnapshot

__all__ = ["FORMAT", "VERSION", "Backup", "BackupError", "parse_backup", "write_backup"]

FORMAT = "authd-store-backup"
VERSION = 1
MAX_LINE = 1 << 20  # bytes; no record comes near it

_CODECS: dict[str, tuple[str, RecordCodec[Any]]] = {
    "authority": ("authorities", AUTHORITIES),
    "entry": ("entries", ENTRIES),
    "revocation": ("revocations", REVOCATIONS),
    "issuance": ("issuances", ISSUANCES),
    "audit": ("audit", AUDIT),
}
_HEX = re.compile(r"[0-9a-f]+")
_INT64_MAX = 2**63 - 1


class BackupError(Exception):
    """The file is not a readable, whole authd backup (the message says where and why)."""


@dataclass(frozen=True)
class Backup:
    """A parsed backup file: when and from what it was taken, and the snapshot it holds."""

    created_at: int
    source: str
    snapshot: StoreSnapshot


def _line(value: object) -> bytes:
    return (canonical_json(value) + "\n").encode("ascii")


def _record_line(kind: str, codec: RecordCodec[Any], record: object, what: str) -> bytes:
    try:
        encoded = codec.encode(record, what)
    except StoreError as exc:
        raise BackupError(str(exc)) from None
    return f'{{"record":{encoded},"type":"{kind}"}}\n'.encode("ascii")


def backup_lines(backup: Backup) -> Iterator[bytes]:
    """The file's lines, the trailer last."""
    snapshot = backup.snapshot
    digest = hashlib.sha256()
    count = 0

    def counted(line: bytes) -> bytes:
        nonlocal count
        digest.update(line)
        count += 1
        return line

    yield counted(
        _line(
            {
                "format": FORMAT,
                "version": VERSION,
                "created_at": backup.created_at,
                "source": backup.source,
                "generation": snapshot.position.generation,
                "audit_seq": snapshot.position.audit_seq,
                "audit_hash": snapshot.position.audit_hash,
                "sequences": dict(snapshot.sequences),
                "counts": snapshot.counts(),
            }
        )
    )
    groups: list[tuple[str, Any]] = [
        ("authority", snapshot.authorities),
        ("entry", snapshot.entries),
        ("revocation", snapshot.revocations),
        ("issuance", snapshot.issuances),
        ("audit", snapshot.audit),
    ]
    for kind, records in groups:
        codec = _CODECS[kind][1]
        for record in records:
            yield counted(_record_line(kind, codec, record, f"a backup's {kind}"))
    yield _line({"type": "end", "lines": count, "sha256": digest.hexdigest()})


def write_backup(backup: Backup, out: IO[bytes]) -> None:
    for line in backup_lines(backup):
        out.write(line)


def _int(value: object, what: str, *, lowest: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= _INT64_MAX:
        raise BackupError(f"{what} must be an integer from {lowest}, not {value!r}")
    return value


def _hex(value: object, what: str, lengths: tuple[int, int]) -> str:
    if (
        not isinstance(value, str)
        or not lengths[0] <= len(value) <= lengths[1]
        or not _HEX.fullmatch(value)
    ):
        raise BackupError(f"{what} must be lowercase hex, not {value!r}")
    return value


def _object(raw: bytes, number: int) -> dict[str, Any]:
    if not raw.endswith(b"\n"):
        if len(raw) > MAX_LINE:
            raise BackupError(f"line {number} is longer than {MAX_LINE} bytes")
        raise BackupError(f"line {number} is cut short: the file is truncated")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BackupError(f"line {number} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BackupError(f"line {number} is not a JSON object")
    return value


def _header(
    value: dict[str, Any],
) -> tuple[int, str, StorePosition, dict[str, int], dict[str, int]]:
    if value.get("format") != FORMAT:
        raise BackupError(f"not an authd store backup (line 1 has no format {FORMAT!r})")
    if value.get("version") != VERSION:
        raise BackupError(
            f"backup format version {value.get('version')!r}; this authd reads version {VERSION}"
        )
    source = value.get("source")
    if source not in ("sqlite", "redis"):
        raise BackupError(f"unknown source {source!r} in the header")
    position = StorePosition(
        _hex(value.get("generation"), "generation", (1, 64)),
        _int(value.get("audit_seq"), "audit_seq"),
        _hex(value.get("audit_hash"), "audit_hash", (64, 64)),
    )
    sequences, counts = value.get("sequences"), value.get("counts")
    if not isinstance(sequences, dict) or not isinstance(counts, dict):
        raise BackupError("the header's sequences and counts must be JSON objects")
    if set(counts) != {group for group, _ in _CODECS.values()}:
        raise BackupError(f"the header's counts name {sorted(counts)}")
    return (
        _int(value.get("created_at"), "created_at"),
        source,
        position,
        {str(name): _int(n, f"sequence {name!r}") for name, n in sequences.items()},
        {str(group): _int(n, f"count of {group}") for group, n in counts.items()},
    )


def _record(value: dict[str, Any], number: int) -> tuple[str, object]:
    kind, record = value.get("type"), value.get("record")
    if kind not in _CODECS or not isinstance(record, dict) or set(value) != {"type", "record"}:
        raise BackupError(f"line {number} is not a record line")
    group, codec = _CODECS[kind]
    try:
        decoded = codec.decode(json.dumps(record))
        if codec.encode(decoded, f"the {kind} on line {number}") != canonical_json(record):
            raise BackupError(f"line {number}: the {kind} has fields of the wrong type")
    except StoreError as exc:
        raise BackupError(f"line {number}: {exc}") from None
    except (TypeError, ValueError, RecursionError) as exc:  # what canonical JSON cannot hold
        raise BackupError(f"line {number}: {exc}") from None
    return group, decoded


def parse_backup(source: IO[bytes]) -> Backup:
    """Read a whole backup file from ``source``; ``BackupError`` if it is anything else."""
    digest = hashlib.sha256()
    raw = source.readline(MAX_LINE + 1)
    if not raw:
        raise BackupError("the file is empty")
    digest.update(raw)
    created_at, origin, position, sequences, counts = _header(_object(raw, 1))
    groups: dict[str, list[object]] = {group: [] for group, _ in _CODECS.values()}
    number = 1
    while True:
        raw = source.readline(MAX_LINE + 1)
        number += 1
        if not raw:
            raise BackupError(f"the file ends at line {number - 1} without its end line")
        value = _object(raw, number)
        if value.get("type") == "end":
            break
        digest.update(raw)
        group, record = _record(value, number)
        groups[group].append(record)
    if value.get("lines") != number - 1 or value.get("sha256") != digest.hexdigest():
        raise BackupError(
            f"the checksum on line {number} does not match the {number - 1} lines before it: "
            "the file was damaged or changed"
        )
    if source.read(1):
        raise BackupError(f"there is more after the end line (line {number})")
    found = {group: len(records) for group, records in groups.items()}
    if found != counts:
        raise BackupError(f"the header counts {counts}, the file holds {found}")
    audit = [r for r in groups["audit"] if isinstance(r, AuditRecord)]
    snapshot = StoreSnapshot(
        position=position,
        sequences=sequences,
        authorities=tuple(groups["authorities"]),  # type: ignore[arg-type]
        entries=tuple(groups["entries"]),  # type: ignore[arg-type]
        revocations=tuple(groups["revocations"]),  # type: ignore[arg-type]
        issuances=tuple(groups["issuances"]),  # type: ignore[arg-type]
        audit=tuple(audit),
    )
    return Backup(created_at, origin, snapshot)

"""The backup file parser takes operator input: whatever it is given ends in a parsed backup
or a ``BackupError`` (then the restore is refused), never another exception.

Inputs: arbitrary bytes, arbitrary JSON lines under a valid header, a valid file cut
anywhere, and a valid file with bytes replaced or inserted.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.backup import take_snapshot, verify_snapshot
from ca.store import AuditDraft, Revocation, SQLiteStore
from ca.store.backup_file import Backup, BackupError, parse_backup, write_backup

EXAMPLES = int(os.environ.get("AUTHD_HYPOTHESIS_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _valid_file() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        store = SQLiteStore(Path(directory) / "store.db")
        for n in range(3):
            target = f"spiffe://example.org/r{n}"
            store.add_revocation(
                Revocation("spiffe_id", target, 1, "", n, "admin"),
                audit=AuditDraft(n, "admin", "revocation.add", target, {"n": [n, "x"]}),
            )
        snapshot = take_snapshot(store, ("bundle",), scratch=Path(directory))
        store.close()
    out = io.BytesIO()
    write_backup(Backup(1, "sqlite", snapshot), out)
    return out.getvalue()


VALID = _valid_file()
HEADER = VALID.split(b"\n", 1)[0] + b"\n"


def refused_or_parsed(data: bytes) -> None:
    try:
        backup = parse_backup(io.BytesIO(data))
    except BackupError:
        return
    try:
        verify_snapshot(backup.snapshot)
    except BackupError:
        return


def test_the_valid_file_parses() -> None:
    verify_snapshot(parse_backup(io.BytesIO(VALID)).snapshot)


@SETTINGS
@given(st.binary(max_size=2_000))
def test_arbitrary_bytes_are_refused_cleanly(data: bytes) -> None:
    refused_or_parsed(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
record_lines = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["authority", "entry", "revocation", "issuance", "audit", "end"]),
        "record": st.dictionaries(st.text(max_size=15), json_values, max_size=10),
    }
)


@SETTINGS
@given(st.lists(record_lines | json_values, max_size=6))
def test_arbitrary_json_lines_after_a_valid_header_are_refused_cleanly(lines: list[object]) -> None:
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    refused_or_parsed(HEADER + body)


@SETTINGS
@given(st.integers(min_value=0, max_value=len(VALID) - 1))
def test_a_file_cut_anywhere_is_refused(length: int) -> None:
    try:
        parse_backup(io.BytesIO(VALID[:length]))
    except BackupError:
        return
    raise AssertionError(f"a file cut at byte {length} was accepted")


@SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(VALID) - 1), st.binary(max_size=8)),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_a_valid_file_with_bytes_replaced_or_inserted_is_refused_cleanly(
    edits: list[tuple[int, bytes]], insert: bool
) -> None:
    data = bytearray(VALID)
    for at, replacement in edits:
        if insert:
            data[at:at] = replacement
        else:
            data[at : at + len(replacement)] = replacement
    refused_or_parsed(bytes(data))

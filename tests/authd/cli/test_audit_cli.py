"""End to end: `authd audit log` and `authd audit verify` against a real `authd run`, and a
log altered behind the daemon's back."""

from __future__ import annotations

import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from authd.cli.errors import Exit
from tests.support.cli_exit import expected_exit
from tests.support.daemon import NOBODY, Daemon, as_uid, authd, cli_json

WEB = "spiffe://example.org/web"
API = "spiffe://example.org/api"


def audit_log(daemon: Daemon, *filters: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = cli_json(daemon, "audit", "log", *filters)["records"]
    return records


def failure(daemon: Daemon, *args: str) -> str:
    """The one line of stderr of a command that must fail, with the exit status it names."""
    result = authd(*args, data_dir=daemon.data_dir, check=False)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == expected_exit(lines[0]), (args, result.stdout, result.stderr)
    return lines[0]


def mint_serial(daemon: Daemon, spiffe_id: str) -> str:
    out = Path(tempfile.mkdtemp(prefix="svid-", dir=daemon.data_dir.parent))
    authd("x509", "mint", "--spiffe-id", spiffe_id, "--out", str(out), data_dir=daemon.data_dir)
    leaf = x509.load_pem_x509_certificates((out / "svid.pem").read_bytes())[0]
    return format(leaf.serial_number, "x")


def test_audit_log_shows_authority_entry_and_revocation_events(daemon: Daemon) -> None:
    data = daemon.data_dir
    entry = cli_json(daemon, "entry", "create", "--spiffe-id", WEB, "--selector", "unix:uid:7")
    serial = mint_serial(daemon, WEB)
    authd(
        "revoke", "serial", serial, "--reason", "key-compromise", "--note", "INC-7", data_dir=data
    )
    authd("revoke", "entry", entry["id"], "--reason", "certificate-hold", data_dir=data)
    authd("unrevoke", "entry", entry["id"], data_dir=data)
    authd("revoke", "spiffe-id", API, data_dir=data)

    records = audit_log(daemon)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    events = [(r["actor"], r["action"], r["subject"]) for r in records]
    assert [(actor, action) for actor, action, _ in events[:2]] == [
        ("authd", "authority.active"),
        ("authd", "authority.active"),
    ]
    assert events[2:] == [
        ("admin:uid=0", "entry.create", entry["id"]),
        ("admin:uid=0", "revoke", f"serial:{serial}"),
        ("admin:uid=0", "revoke", f"entry:{entry['id']}"),
        ("admin:uid=0", "unrevoke", f"entry:{entry['id']}"),
        ("admin:uid=0", "revoke", f"spiffe_id:{API}"),
    ]
    assert records[3]["details"] == {"reason": "key-compromise", "note": "INC-7"}
    assert records[2]["details"]["spiffe_id"] == WEB
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["hash"]) for r in records)
    assert [r["prev_hash"] for r in records[1:]] == [r["hash"] for r in records[:-1]]

    # About the web workload: its entry's changes and revocations, its serial's revocation.
    about_web = audit_log(daemon, "--spiffe-id", WEB)
    assert [r["seq"] for r in about_web] == [3, 4, 5, 6]
    assert [r["seq"] for r in audit_log(daemon, "--spiffe-id", API)] == [7]
    assert audit_log(daemon, "--spiffe-id", "spiffe://example.org/we") == []
    assert [r["seq"] for r in audit_log(daemon, "--subject", f"entry:{entry['id']}")] == [5, 6]

    first = records[0]["time"]
    assert audit_log(daemon, "--since", first) == records  # RFC 3339
    assert audit_log(daemon, "--since", str(int(time.time()) + 3600)) == []  # Unix seconds
    assert failure(daemon, "audit", "log", "--since", "yesterday").startswith(
        "authd: --since: 'yesterday' is not an RFC 3339 time or Unix seconds"
    )
    assert failure(daemon, "audit", "log", "--spiffe-id", "web").startswith(
        "authd: invalid argument: filter 'spiffe_id': 'web': missing scheme"
    )

    human = authd("audit", "log", "--spiffe-id", API, data_dir=data).stdout.splitlines()
    assert human[0].split() == ["SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT", "DETAILS"]
    assert human[1].split() == [
        "7", records[6]["time"], "admin:uid=0", "revoke", f"spiffe_id:{API}",
        '{"note":"","reason":"unspecified"}',
    ]  # fmt: skip


def test_audit_verify_reports_an_intact_log(daemon: Daemon) -> None:
    authd(
        "entry", "create", "--spiffe-id", WEB, "--selector", "unix:uid:7", data_dir=daemon.data_dir
    )
    records = audit_log(daemon)
    verified = authd("audit", "verify", data_dir=daemon.data_dir)
    assert verified.stdout.strip() == (
        f"audit log intact: {len(records)} records, last hash {records[-1]['hash']}"
    )


def test_audit_verify_names_the_record_altered_while_the_daemon_was_stopped(
    daemon: Daemon,
) -> None:
    data = daemon.data_dir
    serial = mint_serial(daemon, WEB)
    authd("revoke", "serial", serial, "--reason", "key-compromise", data_dir=data)
    authd("entry", "create", "--spiffe-id", API, "--selector", "unix:uid:8", data_dir=data)
    (revoked,) = [r for r in audit_log(daemon) if r["action"] == "revoke"]
    assert daemon.stop() == 0

    # Someone with write access to the database makes the compromise look routine.
    with sqlite3.connect(data / "authd.db") as db:
        changed = db.execute(
            "UPDATE audit SET details = ? WHERE seq = ?",
            ('{"note":"","reason":"superseded"}', revoked["seq"]),
        ).rowcount
    db.close()
    assert changed == 1

    daemon.start()
    count = len(audit_log(daemon))
    message = failure(daemon, "audit", "verify")
    assert message == (
        f"authd: audit log broken at record {revoked['seq']}: hash does not match the "
        f"record's contents: the record was altered ({count} records read)"
    )
    # The log is still readable, showing what was written over the original.
    shown = audit_log(daemon, "--subject", f"serial:{serial}")
    assert [r["details"]["reason"] for r in shown] == ["superseded"]
    # And the daemon still serves.
    assert authd("healthcheck", data_dir=data).returncode == 0


def test_audit_rows_that_no_longer_parse_are_reported_as_data_loss(daemon: Daemon) -> None:
    authd(
        "entry", "create", "--spiffe-id", WEB, "--selector", "unix:uid:7", data_dir=daemon.data_dir
    )
    assert daemon.stop() == 0
    with sqlite3.connect(daemon.data_dir / "authd.db") as db:
        db.execute("UPDATE audit SET details = 'not json' WHERE action = 'entry.create'")
    db.close()
    daemon.start()
    for args in (["audit", "verify"], ["audit", "log"]):
        assert failure(daemon, *args).startswith("authd: data loss: cannot read the audit log: ")


def test_audit_commands_refuse_a_non_admin_uid(daemon: Daemon) -> None:
    for args in (["audit", "log"], ["audit", "verify"]):
        result = as_uid(NOBODY, args, daemon.data_dir)
        assert result.returncode == Exit.PERMISSION, (args, result.stdout)
        assert f"permission denied: uid {NOBODY} is not an authd admin" in result.stderr, args

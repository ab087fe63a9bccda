"""`authd store backup` and `authd store restore` against a running daemon on SQLite.

Rules: the backup file is 0600, replaced atomically and verifies; a restore after damage
gives back the entries, revocations and authorities of the backup and the audit chain
verifies, with one `store.restored` record on top; a file that does not verify is refused
with one line and exit 4, the store untouched; a restore onto a store ahead of the backup is
refused (exit 1) until `--force`; a backup taken while revocations stream in verifies and
holds exactly the revocations its chain records.
"""

from __future__ import annotations

import io
import json
import stat
import threading
from pathlib import Path

from ca.store.backup_file import parse_backup
from tests.support.daemon import Daemon, authd, cli_json

TD = "spiffe://example.org"


def run(daemon: Daemon, *args: str) -> str:
    return authd(*args, data_dir=daemon.data_dir).stdout


def state(daemon: Daemon) -> dict[str, object]:
    return {
        "entries": cli_json(daemon, "entry", "list")["entries"],
        "revocations": cli_json(daemon, "revocations", "list")["revocations"],
        "authorities": cli_json(daemon, "authority", "show")["authorities"],
    }


def populate(daemon: Daemon) -> None:
    run(daemon, "entry", "create", "--spiffe-id", f"{TD}/web", "--selector", "unix:uid:1000",
        "--entry-id", "web")  # fmt: skip
    run(daemon, "entry", "update", "web", "--x509-svid-ttl", "30m")
    run(daemon, "revoke", "spiffe-id", f"{TD}/stolen", "--reason", "key-compromise")
    run(daemon, "revoke", "entry", "web", "--reason", "superseded")


def test_a_backup_restored_after_damage_gives_back_the_store(daemon: Daemon, workdir: Path) -> None:
    populate(daemon)
    before = state(daemon)
    backup = workdir / "authd.backup"
    backup.write_text("an older file")
    shown = cli_json(daemon, "store", "backup", str(backup))
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert shown["counts"]["revocations"] == 2
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".authd.backup")] == []
    head = shown["audit_seq"]
    # Damage: what an operator's bad day removes.
    run(daemon, "entry", "delete", "web")
    run(daemon, "authority", "prepare", "--kind", "jwt")
    refused = authd("store", "restore", str(backup), data_dir=daemon.data_dir, check=False)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("authd: failed precondition: store not restored: the store")
    assert "--force" in refused.stderr
    restored = cli_json(daemon, "store", "restore", str(backup), "--force")
    assert restored["forced"] is True
    assert restored["restored"]["audit_seq"] == head
    assert restored["position"]["audit_seq"] == head + 1
    assert state(daemon) == before
    verdict = cli_json(daemon, "audit", "verify")
    assert verdict["intact"] is True
    assert verdict["records"] == head + 1
    last = cli_json(daemon, "audit", "log")["records"][-1]
    assert (last["action"], last["subject"]) == ("store.restored", "store")
    assert cli_json(daemon, "store", "show")["regressed"] is False


def test_a_backup_onto_a_store_not_ahead_needs_no_force(daemon: Daemon, workdir: Path) -> None:
    populate(daemon)
    backup = workdir / "b"
    run(daemon, "store", "backup", str(backup))
    out = run(daemon, "store", "restore", str(backup))
    assert out.startswith(f"store restored from {backup}: ")
    assert cli_json(daemon, "audit", "verify")["intact"] is True


def test_a_damaged_or_forged_file_is_refused_and_the_store_untouched(
    daemon: Daemon, workdir: Path
) -> None:
    populate(daemon)
    good = workdir / "good"
    run(daemon, "store", "backup", str(good))
    run(daemon, "revoke", "spiffe-id", f"{TD}/later")
    before = state(daemon), cli_json(daemon, "audit", "verify")
    data = good.read_bytes()
    lines = data.splitlines(keepends=True)
    cases = {
        "cut": data[: len(data) // 2],
        "garbage": b"\x00\xffnot a backup\n",
        "empty": b"",
        "a byte changed": data.replace(b'"reason":1', b'"reason":4', 1),
        "a line dropped": b"".join(lines[:2] + lines[3:]),
    }
    for name, content in cases.items():
        bad = workdir / name.replace(" ", "-")
        bad.write_bytes(content)
        result = authd("store", "restore", str(bad), "--force", data_dir=daemon.data_dir,
                       check=False)  # fmt: skip
        assert result.returncode == 4, (name, result.stderr)
        assert result.stderr.startswith(
            "authd: invalid argument: backup file refused, store untouched: "
        ), (name, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
    assert (state(daemon), cli_json(daemon, "audit", "verify")) == before


def test_a_backup_under_a_stream_of_revocations_is_consistent(
    daemon: Daemon, workdir: Path
) -> None:
    populate(daemon)
    stop = threading.Event()
    failures: list[str] = []

    def revoke() -> None:
        for n in range(200):
            if stop.is_set():
                return
            result = authd("revoke", "spiffe-id", f"{TD}/stream-{n}", data_dir=daemon.data_dir,
                           check=False)  # fmt: skip
            if result.returncode != 0:
                failures.append(result.stderr)

    writer = threading.Thread(target=revoke)
    writer.start()
    heads = set()
    try:
        for n in range(4):
            path = workdir / f"live-{n}"
            run(daemon, "store", "backup", str(path))  # the CLI verifies before renaming
            with path.open("rb") as source:
                snapshot = parse_backup(io.BytesIO(source.read())).snapshot
            audited = sum(1 for r in snapshot.audit if r.action == "revoke")
            assert len(snapshot.revocations) == audited
            heads.add(snapshot.position.audit_seq)
    finally:
        stop.set()
        writer.join(timeout=120)
    assert failures == []
    assert len(heads) > 1, "the revocations did not stream while the backups were taken"
    assert json.loads(run(daemon, "audit", "verify", "--json"))["intact"] is True

"""End to end: `authd revoke`, `unrevoke`, `revocations list` and `svid list` against a real
`authd run`."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import spiffe
from cryptography import x509

from authd.cli.errors import Exit
from tests.support.cli_exit import expected_exit
from tests.support.daemon import NOBODY, Daemon, as_uid, authd, cli_json

WEB = "spiffe://example.org/web"
API = "spiffe://example.org/api"
WORKLOAD = "spiffe://example.org/workload"


def failure(daemon: Daemon, *args: str) -> str:
    """The one line of stderr of a command that must fail, with the exit status it names."""
    result = authd(*args, data_dir=daemon.data_dir, check=False)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == expected_exit(lines[0]), (args, result.stdout, result.stderr)
    return lines[0]


def mint(daemon: Daemon, spiffe_id: str) -> x509.Certificate:
    out = Path(tempfile.mkdtemp(prefix="svid-", dir=daemon.data_dir.parent))
    authd("x509", "mint", "--spiffe-id", spiffe_id, "--out", str(out), data_dir=daemon.data_dir)
    return x509.load_pem_x509_certificates((out / "svid.pem").read_bytes())[0]


def fetch_workload_svid(daemon: Daemon) -> x509.Certificate:
    """The X.509-SVID this process (root) gets from the Workload API, as a workload would."""
    socket_url = f"unix://{daemon.data_dir / 'workload.sock'}"
    with spiffe.WorkloadApiClient(socket_path=socket_url) as client:
        (svid,) = client.fetch_x509_context(timeout=30).x509_svids
    leaf: x509.Certificate = svid.leaf
    return leaf


def serial(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def colon_serial(certificate: x509.Certificate) -> str:
    """The serial as openssl and most tools print it: upper-case bytes, colon-separated."""
    number = certificate.serial_number
    return ":".join(f"{b:02X}" for b in number.to_bytes((number.bit_length() + 8) // 8, "big"))


def revocations(daemon: Daemon, *filters: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = cli_json(daemon, "revocations", "list", *filters)["revocations"]
    return listed


def active_x509_authority(daemon: Daemon) -> str:
    shown = cli_json(daemon, "authority", "show")
    (active,) = [
        a["authority_id"]
        for a in shown["authorities"]
        if a["kind"] == "x509" and a["state"] == "active"
    ]
    return str(active)


def svids(daemon: Daemon, authority: str, *filters: str) -> dict[str, dict[str, Any]]:
    listed = cli_json(daemon, "svid", "list", "--authority", authority, *filters)["svids"]
    return {s["serial"]: s for s in listed}


def test_revoked_serial_is_listed_and_a_second_revocation_is_refused(daemon: Daemon) -> None:
    leaf = mint(daemon, WEB)
    done = authd(
        "revoke", "serial", colon_serial(leaf), "--reason", "key-compromise", "--note", "INC-42",
        data_dir=daemon.data_dir,
    )  # fmt: skip
    assert done.stdout.startswith(f"Revoked serial {serial(leaf)} (key-compromise) at ")
    (listed,) = revocations(daemon)
    revoked_at = listed.pop("revoked_at")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", revoked_at)
    assert listed == {
        "kind": "serial",
        "target": serial(leaf),
        "reason": "key-compromise",
        "reason_code": 1,
        "note": "INC-42",
        "revoked_by": "admin:uid=0",
    }
    human = authd("revocations", "list", data_dir=daemon.data_dir).stdout.splitlines()
    assert human[0] == "Found 1 revocation"
    assert human[1].split() == ["KIND", "TARGET", "REASON", "REVOKED", "AT", "BY", "NOTE"]
    assert human[2].split() == [
        "serial", serial(leaf), "key-compromise", revoked_at, "admin:uid=0", "INC-42",
    ]  # fmt: skip

    # The same serial in another spelling is the same serial.
    again = failure(daemon, "revoke", "serial", f"0x{serial(leaf).upper()}", "--note", "x")
    assert again == f"authd: already exists: serial {serial(leaf)} is already revoked"
    final = failure(daemon, "unrevoke", "serial", serial(leaf))
    assert final == (
        f"authd: failed precondition: serial {serial(leaf)} was revoked for key-compromise; "
        "only certificate-hold can be lifted"
    )
    assert revocations(daemon) == [{**listed, "revoked_at": revoked_at}]


def test_refused_revocations_store_nothing(daemon: Daemon) -> None:
    leaf = mint(daemon, WEB)
    invalid = "authd: invalid argument: "
    refusals = {
        ("revoke", "serial", "1f"): "authd: not found: unknown serial 1f: authd never issued it",
        ("revoke", "serial", "0x1F"): "authd: not found: unknown serial 1f: authd never issued it",
        ("revoke", "serial", "xyz"): f"{invalid}serial 'xyz' is not hexadecimal",
        ("revoke", "spiffe-id", "spiffe://Example.org/web"):
            f"{invalid}'spiffe://Example.org/web': trust domain character 'E' is not allowed",
        ("revoke", "spiffe-id", "web"): f"{invalid}'web': missing scheme",
        ("revoke", "serial", serial(leaf), "--reason", "sometimes"):
            f"{invalid}unknown revocation reason 'sometimes'; use one of ",
        ("revoke", "serial", serial(leaf), "--reason", "7"):
            f"{invalid}unknown revocation reason '7'",
        ("revoke", "serial", serial(leaf), "--reason", "remove-from-crl"):
            f"{invalid}removeFromCRL is not a revocation; use unrevoke",
        ("revoke", "entry", "no-such-entry"):
            "authd: not found: no registration entry 'no-such-entry'",
        ("unrevoke", "spiffe-id", WEB): f"authd: not found: spiffe_id {WEB} is not revoked",
        ("unrevoke", "serial", serial(leaf)):
            f"authd: not found: serial {serial(leaf)} is not revoked",
    }  # fmt: skip
    for args, message in refusals.items():
        assert failure(daemon, *args).startswith(message), args
    assert revocations(daemon) == []
    actions = {r["action"] for r in cli_json(daemon, "audit", "log")["records"]}
    assert not actions & {"revoke", "unrevoke"}
    listed = svids(daemon, active_x509_authority(daemon))
    assert listed[serial(leaf)]["revoked"] is False
    # An unknown kind never reaches the daemon: it is a usage error.
    assert authd("revoke", "token", "abc", data_dir=daemon.data_dir, check=False).returncode == 2


def test_a_transaction_or_token_id_is_revoked_audited_and_listed(daemon: Daemon) -> None:
    txn = "5f2c0d7e9a4b4c1d8e3f2a1b0c9d8e7f"
    done = authd("revoke", "txn", txn, "--note", "INC-7", data_dir=daemon.data_dir)
    assert done.stdout.startswith(f"Revoked txn {txn} (unspecified) at ")
    authd("revoke", "jti", "token-1", data_dir=daemon.data_dir)
    assert [(r["kind"], r["target"]) for r in revocations(daemon, "--kind", "txn")] == [
        ("txn", txn)
    ]
    assert {r["kind"] for r in revocations(daemon)} == {"txn", "jti"}
    subjects = {r["subject"] for r in cli_json(daemon, "audit", "log")["records"]}
    assert {f"txn:{txn}", "jti:token-1"} <= subjects
    assert failure(daemon, "revoke", "txn", "a b").startswith(
        "authd: invalid argument: txn 'a b' is not a token or transaction id"
    )


def test_certificate_hold_is_lifted_by_unrevoke(daemon: Daemon) -> None:
    leaf = mint(daemon, WEB)
    authority = active_x509_authority(daemon)
    authd(
        "revoke", "serial", serial(leaf), "--reason", "certificate-hold", data_dir=daemon.data_dir
    )
    held = svids(daemon, authority)[serial(leaf)]
    assert held["revoked"] is True
    assert held["revocation"]["reason"] == "certificate-hold"

    lifted = authd("unrevoke", "serial", colon_serial(leaf), data_dir=daemon.data_dir)
    assert lifted.stdout.strip() == (
        f"Lifted the revocation of serial {serial(leaf)} (certificate-hold)"
    )
    assert revocations(daemon) == []
    assert svids(daemon, authority)[serial(leaf)]["revoked"] is False
    assert failure(daemon, "unrevoke", "serial", serial(leaf)).startswith("authd: not found: ")
    # Lifted, it can be revoked again, for good this time (the reason given by number).
    authd("revoke", "serial", serial(leaf), "--reason", "1", data_dir=daemon.data_dir)
    assert [r["reason"] for r in revocations(daemon)] == ["key-compromise"]


def test_revoking_a_spiffe_id_or_an_entry_covers_the_svids_it_holds(daemon: Daemon) -> None:
    data = daemon.data_dir
    web, api = mint(daemon, WEB), mint(daemon, API)
    entry = cli_json(daemon, "entry", "create", "--spiffe-id", WORKLOAD, "--selector", "unix:uid:0")
    held = fetch_workload_svid(daemon)  # this process is root: the entry's workload

    authd("revoke", "spiffe-id", API, "--reason", "privilege-withdrawn", data_dir=data)
    authd(
        "revoke", "entry", entry["id"], "--reason", "superseded", "--note", "moved",
        data_dir=data,
    )  # fmt: skip
    assert [(r["kind"], r["target"]) for r in revocations(daemon)] == [
        ("spiffe-id", API),
        ("entry", entry["id"]),
    ]
    assert [r["target"] for r in revocations(daemon, "--kind", "spiffe-id")] == [API]
    assert [r["target"] for r in revocations(daemon, "--kind", "entry")] == [entry["id"]]
    assert revocations(daemon, "--kind", "serial") == []

    listed = svids(daemon, active_x509_authority(daemon))
    assert set(listed) == {serial(web), serial(api), serial(held)}
    assert listed[serial(web)]["revoked"] is False
    assert listed[serial(api)]["revocation"]["kind"] == "spiffe-id"
    assert listed[serial(api)]["revocation"]["reason"] == "privilege-withdrawn"
    workload = listed[serial(held)]
    assert (workload["spiffe_id"], workload["requester"], workload["entry_id"]) == (
        WORKLOAD,
        f"entry:{entry['id']}",
        entry["id"],
    )
    assert workload["revocation"]["kind"] == "entry"
    assert workload["revocation"]["note"] == "moved"

    assert failure(daemon, "revoke", "spiffe-id", API).startswith(
        f"authd: already exists: spiffe_id {API} is already revoked"
    )
    assert failure(daemon, "unrevoke", "entry", entry["id"]).startswith(
        "authd: failed precondition: "
    )


def test_revocations_survive_a_restart(daemon: Daemon) -> None:
    leaf = mint(daemon, WEB)
    authd("revoke", "serial", serial(leaf), "--reason", "key-compromise", data_dir=daemon.data_dir)
    authd("revoke", "spiffe-id", API, "--reason", "certificate-hold", data_dir=daemon.data_dir)
    before = revocations(daemon)
    assert len(before) == 2
    assert daemon.stop() == 0
    daemon.start()
    assert revocations(daemon) == before
    assert svids(daemon, active_x509_authority(daemon))[serial(leaf)]["revoked"] is True
    assert failure(daemon, "revoke", "serial", serial(leaf)).startswith("authd: already exists: ")
    # The hold is still a hold after the restart, and still the only kind that lifts.
    authd("unrevoke", "spiffe-id", API, data_dir=daemon.data_dir)
    assert [r["target"] for r in revocations(daemon)] == [serial(leaf)]


def test_svid_list_answers_which_svids_an_authority_signed(daemon: Daemon) -> None:
    data = daemon.data_dir
    old_authority = active_x509_authority(daemon)
    first, second, api = mint(daemon, WEB), mint(daemon, WEB), mint(daemon, API)
    authd("authority", "prepare", "--kind", "x509", data_dir=data)
    authd("authority", "activate", "--kind", "x509", data_dir=data)
    new_authority = active_x509_authority(daemon)
    later = mint(daemon, WEB)

    listed = cli_json(daemon, "svid", "list", "--authority", old_authority)["svids"]
    assert [s["serial"] for s in listed] == [serial(api), serial(second), serial(first)]
    assert {(s["authority_id"], s["requester"], s["revoked"]) for s in listed} == {
        (old_authority, "admin:uid=0", False)
    }
    assert listed[0]["spiffe_id"] == API
    assert listed[0]["not_after"] == api.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert set(svids(daemon, new_authority)) == {serial(later)}
    assert set(svids(daemon, old_authority, "--spiffe-id", WEB)) == {serial(first), serial(second)}

    human = authd("svid", "list", "--authority", old_authority, data_dir=data).stdout.splitlines()
    assert human[0] == f"Found 3 SVIDs signed by authority {old_authority}"
    assert human[1].split() == ["SERIAL", "SPIFFE", "ID", "NOT", "AFTER", "REQUESTER", "REVOKED"]
    assert human[2].split()[:2] == [serial(api), API]
    assert human[2].split()[-2:] == ["admin:uid=0", "no"]
    unknown = failure(daemon, "svid", "list", "--authority", "no-such-authority")
    assert unknown.startswith("authd: not found: no authority 'no-such-authority'"), unknown
    bad_filter = failure(
        daemon,
        "svid",
        "list",
        "--authority",
        old_authority,
        "--spiffe-id",
        "spiffe://Example.org/w",
    )
    assert bad_filter.startswith("authd: invalid argument: filter 'spiffe_id': ")


def test_revocation_commands_refuse_a_non_admin_uid(daemon: Daemon) -> None:
    leaf = mint(daemon, WEB)
    authority = active_x509_authority(daemon)
    for args in (
        ["revoke", "serial", serial(leaf)],
        ["revoke", "spiffe-id", WEB],
        ["unrevoke", "serial", serial(leaf)],
        ["revocations", "list"],
        ["svid", "list", "--authority", authority],
    ):
        result = as_uid(NOBODY, args, daemon.data_dir)
        assert result.returncode == Exit.PERMISSION, (args, result.stdout)
        assert f"permission denied: uid {NOBODY} is not an authd admin" in result.stderr, args
    assert revocations(daemon) == []

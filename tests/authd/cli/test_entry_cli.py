"""End to end: registration entries through `authd entry ...` against a real `authd run`."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from authd.cli.errors import Exit
from tests.support.cli_exit import expected_exit
from tests.support.daemon import NOBODY, Daemon, as_uid, authd

WEB = "spiffe://example.org/web"


def entry_json(daemon: Daemon, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(authd(*args, "--json", data_dir=daemon.data_dir).stdout)
    return result


def listed(daemon: Daemon, *filters: str) -> list[str]:
    return [e["id"] for e in entry_json(daemon, "entry", "list", *filters)["entries"]]


def failure(daemon: Daemon, *args: str) -> str:
    """The one line of stderr of a command that must fail, with the exit status it names."""
    result = authd(*args, data_dir=daemon.data_dir, check=False)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == expected_exit(lines[0]), (args, result.stdout, result.stderr)
    return lines[0]


def test_entry_create_show_list_update_delete(daemon: Daemon) -> None:
    web = entry_json(
        daemon, "entry", "create", "--spiffe-id", WEB, "--selector", "unix:uid:1000",
        "--selector", "unix:path:/usr/bin/web", "--dns", "web.local", "--x509-svid-ttl", "30m",
        "--hint", "web", "--expires-at", "2100-01-01T00:00:00Z",
    )  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{32}", web["id"])
    assert web["parent_id"] == "spiffe://example.org/authd"
    assert web["selectors"] == ["unix:uid:1000", "unix:path:/usr/bin/web"]
    assert (web["x509_svid_ttl"], web["jwt_svid_ttl"]) == (1800, 0)
    assert web["expires_at"] == 4102444800
    assert web["revision"] == 0
    api = entry_json(
        daemon, "entry", "create", "--entry-id", "api-1", "--spiffe-id",
        "spiffe://example.org/api", "--parent-id", "spiffe://example.org/node/a",
        "--selector", "unix:uid:2000", "--federates-with", "other.org", "--admin",
    )  # fmt: skip
    assert (api["id"], api["federates_with"], api["admin"]) == ("api-1", ["other.org"], True)

    shown = authd("entry", "show", web["id"], data_dir=daemon.data_dir).stdout
    assert re.search(rf"^Entry ID\s+: {web['id']}$", shown, re.MULTILINE)
    assert re.search(rf"^SPIFFE ID\s+: {WEB}$", shown, re.MULTILINE)
    assert re.search(r"^Parent ID\s+: spiffe://example.org/authd$", shown, re.MULTILINE)
    assert re.findall(r"^Selector\s+: (\S+)$", shown, re.MULTILINE) == [
        "unix:uid:1000",
        "unix:path:/usr/bin/web",
    ]
    assert re.search(r"^X509-SVID TTL\s+: 30m$", shown, re.MULTILINE)
    assert re.search(r"^JWT-SVID TTL\s+: default$", shown, re.MULTILINE)
    assert entry_json(daemon, "entry", "show", web["id"]) == web

    # Listed oldest first; entries created in the same second come in entry-id order.
    by_age = sorted([web, api], key=lambda e: (e["created_at"], e["id"]))
    assert listed(daemon) == [e["id"] for e in by_age]
    assert listed(daemon, "--spiffe-id", "spiffe://example.org/api") == ["api-1"]
    assert listed(daemon, "--parent-id", "spiffe://example.org/authd") == [web["id"]]
    assert listed(daemon, "--selector", "unix:path:/usr/bin/web") == [web["id"]]
    assert listed(daemon, "--selector", "unix:uid:3000") == []
    human = authd("entry", "list", data_dir=daemon.data_dir).stdout
    assert human.startswith("Found 2 entries\n")

    # Flags not given keep their value; a list flag replaces the list.
    updated = entry_json(
        daemon, "entry", "update", web["id"], "--selector", "unix:uid:1001",
        "--jwt-svid-ttl", "1m", "--clear-dns",
    )  # fmt: skip
    assert updated["revision"] == 1
    assert updated["selectors"] == ["unix:uid:1001"]
    assert (updated["x509_svid_ttl"], updated["jwt_svid_ttl"]) == (1800, 60)
    assert updated["dns_names"] == []
    assert (updated["hint"], updated["spiffe_id"]) == ("web", WEB)
    assert updated["created_at"] == web["created_at"]
    assert listed(daemon, "--selector", "unix:uid:1000") == []

    stale = failure(daemon, "entry", "update", web["id"], "--revision", "0", "--hint", "x")
    assert stale.startswith("authd: failed precondition: ")
    assert "is at revision 1, not 0" in stale
    assert entry_json(daemon, "entry", "show", web["id"]) == updated
    assert (
        entry_json(daemon, "entry", "update", web["id"], "--revision", "1", "--hint", "x")["hint"]
        == "x"
    )

    deleted = authd("entry", "delete", web["id"], data_dir=daemon.data_dir)
    assert web["id"] in deleted.stdout
    assert listed(daemon) == ["api-1"]
    gone = failure(daemon, "entry", "show", web["id"])
    assert gone == f"authd: not found: registration entry {web['id']!r} not found"
    assert failure(daemon, "entry", "delete", web["id"]).startswith("authd: not found: ")


def test_duplicate_entry_is_refused_naming_the_existing_entry(daemon: Daemon) -> None:
    first = entry_json(
        daemon, "entry", "create", "--spiffe-id", WEB,
        "--selector", "unix:uid:1000", "--selector", "unix:gid:50",
    )  # fmt: skip
    # Same SPIFFE ID, parent and selector set, in another order.
    message = failure(
        daemon, "entry", "create", "--spiffe-id", WEB,
        "--selector", "unix:gid:50", "--selector", "unix:uid:1000",
    )  # fmt: skip
    assert message.startswith("authd: already exists: ")
    assert first["id"] in message
    taken = failure(
        daemon, "entry", "create", "--entry-id", first["id"], "--spiffe-id", WEB,
        "--selector", "unix:uid:7",
    )  # fmt: skip
    assert f"registration entry {first['id']!r} already exists" in taken
    assert listed(daemon) == [first["id"]]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--spiffe-id", "spiffe://Example.org/web", "--selector", "unix:uid:1000"],
            "invalid argument: entry field 'spiffe_id': 'spiffe://Example.org/web': "
            "trust domain character 'E' is not allowed",
        ),
        (
            ["--spiffe-id", "spiffe://other.org/web", "--selector", "unix:uid:1000"],
            "entry field 'spiffe_id': spiffe://other.org/web is not in this CA's trust domain",
        ),
        (
            ["--spiffe-id", WEB, "--selector", "unix:uid:1000", "--selector", "k8s:ns:default"],
            "invalid argument: entry field 'selectors[1]': unknown selector type 'k8s'; "
            "supported: unix",
        ),
        (
            ["--spiffe-id", WEB, "--selector", "unix:uid:1000", "--x509-svid-ttl", "2d"],
            "invalid argument: entry field 'x509_svid_ttl': 2d exceeds the CA's limit of 12h",
        ),
        (
            ["--spiffe-id", WEB, "--selector", "unix:uid:1000", "--dns", "bad_name"],
            "entry field 'dns_names[0]': invalid DNS name 'bad_name'",
        ),
        (
            ["--spiffe-id", WEB, "--selector", "unix:uid:1000", "--expires-at", "2100-01-01"],
            "--expires-at: '2100-01-01' has no time zone",
        ),
        (
            ["--spiffe-id", WEB, "--selector", "unix:uid:1000", "--jwt-svid-ttl", "soon"],
            "--jwt-svid-ttl: must be a duration",
        ),
    ],
)
def test_invalid_entry_is_refused_naming_the_field_and_nothing_is_stored(
    daemon: Daemon, flags: list[str], message: str
) -> None:
    assert message in failure(daemon, "entry", "create", *flags)
    assert listed(daemon) == []


def test_invalid_update_changes_nothing(daemon: Daemon) -> None:
    web = entry_json(daemon, "entry", "create", "--spiffe-id", WEB, "--selector", "unix:uid:1")
    message = failure(daemon, "entry", "update", web["id"], "--selector", "unix:sha256:ABC")
    assert "entry field 'selectors[0]': unix:sha256 value 'ABC' must be 64 lowercase hex" in message
    assert entry_json(daemon, "entry", "show", web["id"]) == web


def test_entries_survive_a_daemon_restart(daemon: Daemon) -> None:
    web = entry_json(
        daemon, "entry", "create", "--spiffe-id", WEB, "--selector", "unix:user:www",
        "--dns", "web.local", "--downstream",
    )  # fmt: skip
    entry_json(daemon, "entry", "update", web["id"], "--hint", "kept")
    before = entry_json(daemon, "entry", "list")
    assert daemon.stop() == 0
    daemon.start()
    assert entry_json(daemon, "entry", "list") == before
    assert before["entries"][0]["hint"] == "kept"
    assert before["entries"][0]["downstream"] is True


def test_entry_commands_refuse_a_non_admin_uid(daemon: Daemon) -> None:
    web = entry_json(daemon, "entry", "create", "--spiffe-id", WEB, "--selector", "unix:uid:1")
    for args in (
        ["entry", "create", "--spiffe-id", "spiffe://example.org/x", "--selector", "unix:uid:2"],
        ["entry", "list"],
        ["entry", "show", web["id"]],
        ["entry", "update", web["id"], "--hint", "x"],
        ["entry", "delete", web["id"]],
    ):
        result = as_uid(NOBODY, args, daemon.data_dir)
        assert result.returncode == Exit.PERMISSION, (args, result.stdout)
        assert f"permission denied: uid {NOBODY} is not an authd admin" in result.stderr, args
    assert entry_json(daemon, "entry", "list") == {"entries": [web]}

"""The CLI's conventions that need no daemon: usage errors name the subcommand, flag values
are refused by name, every flag is explained, output survives a closed pipe, and the exit
statuses are one table."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest

from authd.cli import completion
from authd.cli.completion import completion_table
from authd.cli.errors import Exit
from authd.cli.main import main
from authd.cli.parser import build_parser, command_parsers
from tests.support.daemon import AUTHD, authd

# Commands whose output is not data a script would parse (or is JSON already).
WITHOUT_JSON = {
    "authd run",
    "authd healthcheck",
    "authd bundle show",
    "authd apikey hash",
    "authd completion",
    "authd policy eval",  # prints the result as JSON always, like opa eval --format pretty
    # a narrative for a newcomer, not data
    "authd demo run",
    "authd demo up",
    "authd demo down",
    "authd agent run",
}


def run(
    *args: str, stdin: str = "", stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AUTHD, *args], input=stdin, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60
    )


def test_exit_statuses_are_distinct_per_kind_of_failure() -> None:
    codes = [e.value for e in Exit]
    assert len(codes) == len(set(codes))
    assert (Exit.USAGE, Exit.DENIED, Exit.INVALID, Exit.NOT_FOUND) == (2, 3, 4, 5)
    assert (Exit.PERMISSION, Exit.UNAVAILABLE) == (6, 7)


def test_unknown_flag_after_a_subcommand_prints_that_subcommands_usage(tmp_path: Path) -> None:
    result = authd("entry", "show", "x", "--bogus", data_dir=tmp_path, check=False)
    assert result.returncode == Exit.USAGE
    assert result.stderr.startswith("usage: authd entry show "), result.stderr
    assert "authd entry show: error: unrecognized arguments: --bogus" in result.stderr


def test_negative_duration_is_refused_by_its_flag_not_by_argparse(tmp_path: Path) -> None:
    result = authd(
        "entry", "create", "--spiffe-id", "spiffe://example.org/a", "--selector", "unix:uid:1",
        "--x509-svid-ttl", "-5m", data_dir=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == Exit.USAGE
    assert result.stderr.startswith("authd: --x509-svid-ttl: must be a duration"), result.stderr
    assert "expected one argument" not in result.stderr


def test_a_stale_admin_socket_asks_whether_authd_run_is_running(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(data / "admin.sock"))  # bound, never listening: a stopped daemon's leftover
    stale.close()
    result = authd("ca", "show", data_dir=data, check=False)
    assert result.returncode == Exit.UNAVAILABLE
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("authd: nothing listens on the admin socket "), line
    assert "is `authd run` running" in line


def test_apikey_hash_prints_valid_toml_for_any_name() -> None:
    for name in ('bad name"', "back\\slash", "tab\there", "ci-bot"):
        result = run("apikey", "hash", "--name", name, stdin="secret\n")
        assert result.returncode == 0, result.stderr
        assert tomllib.loads(result.stdout)["keys"][0]["name"] == name


def test_output_to_a_closed_pipe_ends_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as with `| head -0`
    try:
        result = run("completion", "bash", stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == Exit.PIPE_CLOSED
    assert result.stderr == ""


def test_every_flag_and_argument_has_help() -> None:
    missing = [
        f"{command.prog} {action.option_strings or action.dest}"
        for command in command_parsers(build_parser())
        for action in command._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert missing == []


def test_every_command_that_prints_data_has_json() -> None:
    without = {
        command.prog
        for command in command_parsers(build_parser())
        if "--json" not in command._option_string_actions
    }
    assert without == WITHOUT_JSON


def test_entry_create_help_says_admin_acts_on_remote_admin() -> None:
    text = " ".join(run("entry", "create", "--help").stdout.split())
    admin = text.split("--admin, --no-admin")[1].split("--downstream")[0]
    assert "not yet acted on" not in admin
    assert "admin API over mTLS" in admin


def test_bash_completion_completes_commands_and_flags(tmp_path: Path) -> None:
    script = tmp_path / "authd.bash"
    script.write_text(run("completion", "bash").stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in ("authd", *words))
        done = subprocess.run(
            ["bash", "-c", f'source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; '
             '_authd; printf "%s\\n" "${COMPREPLY[@]}"'],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return done.stdout.split()

    assert complete("en") == ["entry"]
    assert set(complete("entry", "")) - {"--help"} == {"create", "show", "list", "update", "delete"}
    assert "--spiffe-id" in complete("entry", "create", "--sp")
    assert complete("doctor", "--js") == ["--json"]


def test_every_shell_gets_a_script_from_the_same_table() -> None:
    table = completion_table(build_parser())
    assert "entry create" in table and "--selector" in table["entry create"]
    for shell, marker in (("zsh", "bashcompinit"), ("fish", "complete -c authd")):
        result = run("completion", shell)
        assert result.returncode == 0 and marker in result.stdout
        assert "--selector" in result.stdout
    assert run("completion", "tcsh").returncode == Exit.USAGE


def test_a_malformed_ca_subject_is_refused_with_a_reason(tmp_path: Path) -> None:
    config = tmp_path / "authd.toml"
    config.write_text('[ca]\nsubject = "garbage"\n')
    result = run("run", "--data-dir", str(tmp_path / "d"), "--config", str(config))
    assert result.returncode == Exit.INVALID
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("authd: config key 'ca.subject'"), line
    assert not line.rstrip().endswith(":"), line
    assert "'garbage'" in line, line


def test_an_interrupted_command_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(table: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(completion, "bash_script", interrupted)
    assert main(["completion", "bash"]) == Exit.INTERRUPTED
    assert capsys.readouterr().err == ""

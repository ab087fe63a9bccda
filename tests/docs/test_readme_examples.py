"""The README is a tested manual: its quickstart and its command examples run, in order,
against a real daemon, with the exit statuses and the output they promise."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from authd.cli.errors import Exit
from authd.cli.main import glue_negative_values
from authd.cli.parser import build_parser
from tests.support.daemon import AUTHD, Daemon

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def code_block_after(marker: str) -> list[str]:
    """The lines of the first ```sh block after ``marker`` in the README."""
    rest = README.split(marker, 1)[1]
    block = rest.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


QUICKSTART = code_block_after("In a second shell, with the daemon running:")
EXAMPLES = code_block_after("Examples (the tests run them")


def split_example(line: str) -> tuple[list[str], int]:
    """The command's words, and the exit status its comment promises (0 without one)."""
    command, _, comment = line.partition("#")
    promised = re.search(r"exit (\d+)", comment)
    return shlex.split(command), int(promised[1]) if promised else 0


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="authd-doc-"))  # short: socket paths are limited
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(workdir: Path) -> Iterator[Daemon]:
    running = Daemon(workdir / "data")
    running.start()
    yield running
    if running.process and running.process.poll() is None:
        running.stop()


def run_line(words: list[str], daemon: Daemon, cwd: Path) -> subprocess.CompletedProcess[str]:
    """One README line as the operator would type it; ``authd`` finds the test's daemon."""
    if words[0] == "authd":
        args, _ = build_parser().parse_known_args(glue_negative_values(words[1:]))
        command = getattr(args, "command_parser", None)
        where = (
            ["--data-dir", str(daemon.data_dir), "--config", str(daemon.config)]
            if command is not None and "--data-dir" in command._option_string_actions
            else []
        )
        words = [*AUTHD, *words[1:], *where]
    return subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_quickstart_runs_as_written(daemon: Daemon, workdir: Path) -> None:
    outputs: dict[str, str] = {}
    for line in QUICKSTART:
        words, promised = split_example(line)
        result = run_line(words, daemon, workdir)
        assert result.returncode == promised, (line, result.stdout, result.stderr)
        outputs[" ".join(words[:3])] = result.stdout
    assert outputs["authd healthcheck"] == "authd is serving\n"
    assert "FAIL" not in outputs["authd doctor"]
    assert "Trust domain:    example.org" in outputs["authd ca show"]
    assert outputs["authd x509 mint"].startswith("X.509-SVID spiffe://example.org/web serial ")
    assert outputs["openssl verify -CAfile"].strip() == "web/svid.pem: OK"
    assert "keys" in json.loads(outputs["authd bundle show"])
    token = outputs["authd jwt mint"].strip()
    assert token.count(".") == 2

    # The token the quickstart mints is one ext_authz accepts on its defaults.
    request = workdir / "request.json"
    headers = {"authorization": f"Bearer {token}"}
    request.write_text(json.dumps({"attributes": {"request": {"http": {
        "method": "GET", "path": "/orders", "host": "api", "headers": headers}}}}))  # fmt: skip
    decided = run_line(["authd", "policy", "check", "--input", str(request)], daemon, workdir)
    assert decided.returncode == 0, decided.stdout + decided.stderr
    assert decided.stdout.startswith("ALLOW"), decided.stdout


def test_the_command_examples_run_with_the_exit_statuses_they_promise(
    daemon: Daemon, workdir: Path
) -> None:
    for line in EXAMPLES:
        words, promised = split_example(line)
        result = run_line(words, daemon, workdir)
        assert result.returncode == promised, (line, result.stdout, result.stderr)
        if promised:
            (error,) = result.stderr.strip().splitlines()
            assert error.startswith("authd: "), (line, error)
        if "--json" in words:
            json.loads(result.stdout)


def test_the_exit_status_table_matches_the_cli() -> None:
    table = README.split("| exit | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)}
    assert documented == {int(e) for e in Exit}

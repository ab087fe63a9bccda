"""`authd log --txn`: one transaction's decisions from the local decision log file."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli_exit import expected_exit
from tests.support.daemon import authd


def one_line_failure(*args: str, data_dir: Path) -> tuple[int, str]:
    result = authd(*args, data_dir=data_dir, check=False)
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == expected_exit(line), (result.returncode, line)
    return result.returncode, line


def test_log_prints_the_records_of_one_transaction_in_order(tmp_path: Path) -> None:
    log = tmp_path / "decisions.log"
    records = [
        {"decision_id": "t1", "txn": "t1", "rule": "door", "decision": "allow", "status": 200},
        {"decision_id": "x-1", "txn": "t2", "rule": "door", "decision": "allow", "status": 200},
        {"decision_id": "x-2", "txn": None, "rule": "-", "decision": "deny", "status": 401},
        {"decision_id": "x-3", "txn": "t1", "rule": "hop", "decision": "deny", "status": 403},
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(2, '{"txn":"t1", cut by a crash')  # not a record: skipped
    log.write_text("\n".join(lines) + "\n")
    shown = authd("log", "--txn", "t1", "--file", str(log), "--json", data_dir=tmp_path).stdout
    assert [r["decision_id"] for r in json.loads(shown)["records"]] == ["t1", "x-3"]
    human = authd("log", "--txn", "t1", "--file", str(log), data_dir=tmp_path).stdout
    assert human.splitlines()[0] == "Found 2 decisions of transaction t1"
    assert "rule=hop" in human.splitlines()[2]


def test_log_without_a_readable_file_says_why(tmp_path: Path) -> None:
    code, line = one_line_failure(
        "log", "--txn", "t1", "--file", str(tmp_path / "nope.log"), data_dir=tmp_path
    )
    assert code == 5
    assert line.startswith("authd: not found: cannot read the decision log")
    config = tmp_path / "authd.toml"
    config.write_text('[authz]\ndecision_log = "-"\n')
    code, line = one_line_failure("log", "--txn", "t1", "--config", str(config), data_dir=tmp_path)
    assert code == 1
    assert "give the file it is written to with --file" in line
    assert authd("log", data_dir=tmp_path, check=False).returncode == 2

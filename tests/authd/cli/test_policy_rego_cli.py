"""`authd policy test` (like `opa test`) and `authd policy eval` (like `opa eval --format
pretty`), offline: no daemon runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from authd.cli.errors import Exit
from authd.policy.rego_tests import go_duration
from tests.support.envoy import REPO

POLICY = """\
package authz

import rego.v1

allow if {
	input.path == ["users"]
	input.method == "POST"
}

limit := data.limits.max
"""

TESTS = """\
package authz_test

import rego.v1

import data.authz

test_post_allowed if {
	authz.allow with input as {"path": ["users"], "method": "POST"}
}

# test_commented_out if { false }

test_limit_from_data if {
	authz.limit == 3
}
"""

FAILING = """\
package authz_more_test

import rego.v1

import data.authz

test_get_allowed if {
	authz.allow with input as {"path": ["users"], "method": "GET"}
}
"""


def authd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "authd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
        check=False,
    )


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policy"
    (directory / "limits").mkdir(parents=True)
    (directory / "authz.rego").write_text(POLICY)
    (directory / "authz_test.rego").write_text(TESTS)
    (directory / "limits" / "data.json").write_text('{"max": 3}')
    return directory


def lines_without_durations(text: str) -> list[str]:
    return [line.split(" (")[0] for line in text.splitlines()]


def test_passing_tests_print_the_summary_and_exit_0(policy_dir: Path) -> None:
    done = authd("policy", "test", str(policy_dir))
    assert (done.returncode, done.stdout, done.stderr) == (0, "PASS: 2/2\n", "")


def test_verbose_lists_every_test_by_file(policy_dir: Path) -> None:
    done = authd("policy", "test", "-v", str(policy_dir))
    assert done.returncode == 0
    assert lines_without_durations(done.stdout) == [
        "authz_test.rego:",
        "data.authz_test.test_post_allowed: PASS",
        "data.authz_test.test_limit_from_data: PASS",
        "-" * 80,
        "PASS: 2/2",
    ]


def test_a_failing_test_is_listed_and_exits_1(policy_dir: Path) -> None:
    (policy_dir / "more_test.rego").write_text(FAILING)
    done = authd("policy", "test", str(policy_dir))
    assert done.returncode == Exit.FAILED
    assert lines_without_durations(done.stdout) == [
        "FAILURES",
        "-" * 80,
        "data.authz_more_test.test_get_allowed: FAIL",
        "",
        "SUMMARY",
        "-" * 80,
        "authz_test.rego:",
        "data.authz_test.test_post_allowed: PASS",
        "data.authz_test.test_limit_from_data: PASS",
        "",
        "more_test.rego:",
        "data.authz_more_test.test_get_allowed: FAIL",
        "-" * 80,
        "PASS: 2/3",
        "FAIL: 1/3",
    ]
    as_json = json.loads(authd("policy", "test", "--json", str(policy_dir)).stdout)
    assert [(r["name"], r["outcome"]) for r in as_json][-1] == (
        "data.authz_more_test.test_get_allowed",
        "FAIL",
    )


def test_a_policy_that_does_not_compile_is_one_line_and_exit_4(policy_dir: Path) -> None:
    (policy_dir / "broken.rego").write_text("package broken\n\nallow if {\n")
    done = authd("policy", "test", str(policy_dir))
    assert done.returncode == Exit.INVALID
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("authd: invalid argument: ")


def test_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    done = authd("policy", "test", str(tmp_path / "nope"))
    assert done.returncode == Exit.USAGE


def test_a_directory_without_tests_exits_1(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(POLICY)
    done = authd("policy", "test", str(tmp_path))
    assert done.returncode == Exit.FAILED and "no test cases found" in done.stderr


def test_eval_prints_the_configured_entrypoint_like_opa_eval_pretty(tmp_path: Path) -> None:
    (tmp_path / "authz.rego").write_text(POLICY)
    (tmp_path / "authd.toml").write_text(
        '[authz]\npolicy_engine = "rego"\nrego_files = ["authz.rego"]\n'
        'rego_entrypoint = "authz/allow"\n'
    )
    (tmp_path / "input.json").write_text('{"path": ["users"], "method": "POST"}')
    common = ["--config", str(tmp_path / "authd.toml"), "--data-dir", str(tmp_path)]
    common += ["--input", str(tmp_path / "input.json")]
    assert authd("policy", "eval", *common).stdout == "true\n"
    assert authd("policy", "eval", *common, "data.authz").stdout == '{\n  "allow": true\n}\n'
    undefined = authd("policy", "eval", *common, "data.authz.nothing")
    assert (undefined.returncode, undefined.stdout) == (0, "undefined\n")


def test_eval_refuses_an_input_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "authz.rego").write_text(POLICY)
    (tmp_path / "authd.toml").write_text(
        '[authz]\npolicy_engine = "rego"\nrego_files = ["authz.rego"]\n'
    )
    (tmp_path / "input.json").write_text("{not json")
    done = authd(
        "policy",
        "eval",
        "--config",
        str(tmp_path / "authd.toml"),
        "--data-dir",
        str(tmp_path),
        "--input",
        str(tmp_path / "input.json"),
    )
    assert done.returncode == Exit.INVALID


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(426e-9, "426ns"), (1.417e-6, "1.417µs"), (0.0025, "2.5ms"), (1.5, "1.5s")],
)
def test_durations_print_as_go_prints_them(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text

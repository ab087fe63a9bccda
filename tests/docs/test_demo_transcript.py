"""`authd demo` as a newcomer runs it: every step behaves, everything it started is gone
afterwards, and the README's transcript still reads like what it prints."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from authd.cli.errors import Exit
from authd.demo.processes import Started, alive
from tests.support.daemon import AUTHD
from tests.support.envoy import short_tmpdir

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def transcript() -> list[str]:
    """The README's demo transcript: the ```text block of "Gateway and mesh in one policy"."""
    section = README.split("## Gateway and mesh in one policy", 1)[1]
    return section.split("```text\n", 1)[1].split("```", 1)[0].splitlines()


def stable(lines: list[str]) -> list[str]:
    """The lines that carry no port, path or id: step titles, verdicts, placeholders."""
    keep = re.compile(r"^(\d\. |ok: |FAILED|authd demo: )")
    return [line.strip() for line in lines if keep.match(line.strip())]


def test_authd_demo_runs_every_step_and_cleans_up() -> None:
    done = subprocess.run(
        [*AUTHD, "demo"], capture_output=True, text=True, timeout=300, cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "authd demo: every step behaved as expected" in out
    assert "FAILED" not in out
    assert "not yet available" not in out  # every step is real
    found = re.search(r"state directory: (\S+)", out)
    assert found is not None, out
    state = Path(found[1])
    assert not state.exists(), "the state directory outlived the demo"
    assert "authd demo: stopped every process it started" in out
    # The README shows the same steps with the same verdicts, in the same order.
    steps = out.splitlines()
    steps = steps[steps.index("1. An anonymous call at the front door is refused") :]
    assert stable(transcript()) == stable(steps)


def test_authd_demo_down_without_a_topology_is_one_line_and_exit_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [*AUTHD, "demo", "down", "--state-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == f"authd: demo: no topology in {tmp_path / 'none'}"


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_authd_demo_interrupted_mid_walk_stops_everything_it_started(sent: int) -> None:
    state = short_tmpdir() / "demo"
    demo = subprocess.Popen(
        [*AUTHD, "demo", "run", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:  # up, and walking: every process it starts is recorded
            seen.append(line)
            if line.startswith("1. "):
                break
        assert seen and seen[-1].startswith("1. "), "".join(seen)
        started = [Started(**p) for p in json.loads((state / "processes.json").read_text())]
        assert {p.name for p in started} >= {"authd", "idp", "gateway-envoy", "payments-envoy"}
        assert all(alive(p) for p in started)
        demo.send_signal(sent)
        rest = demo.stdout.read()
        assert demo.wait(timeout=120) == Exit.INTERRUPTED, rest
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert "authd demo: stopped every process it started" in rest
    assert [p.name for p in started if alive(p)] == []
    assert not state.exists(), "the state directory outlived the demo"

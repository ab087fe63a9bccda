"""`authd demo` as a newcomer runs it: every step behaves, everything it started is gone
afterwards, and the README's transcript still reads like what it prints."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.daemon import AUTHD

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def transcript() -> list[str]:
    """The README's demo transcript: the ```text block of "Gateway and mesh in one policy"."""
    section = README.split("## Gateway and mesh in one policy", 1)[1]
    return section.split("```text\n", 1)[1].split("```", 1)[0].splitlines()


def stable(lines: list[str]) -> list[str]:
    """The lines that carry no port, path or id: step titles, verdicts, placeholders."""
    keep = re.compile(r"^(\d\. |ok: |FAILED|not yet available|authd demo: )")
    return [line.strip() for line in lines if keep.match(line.strip())]


def test_authd_demo_runs_every_step_and_cleans_up() -> None:
    done = subprocess.run(
        [*AUTHD, "demo"], capture_output=True, text=True, timeout=300, cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "authd demo: every step behaved as expected" in out
    assert "FAILED" not in out
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

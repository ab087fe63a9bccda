"""A data directory belongs to the trust domain its authorities were made for."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.daemon import AUTHD, Daemon


def test_run_with_another_trust_domain_is_refused_with_how_to_migrate(workdir: Path) -> None:
    daemon = Daemon(workdir / "data")
    daemon.start()
    assert daemon.stop() == 0
    run = [*AUTHD, "run", "--data-dir", str(daemon.data_dir), "--config", str(daemon.config)]
    other = subprocess.run(
        [*run, "--trust-domain", "other.test"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 1
    (error,) = [line for line in other.stderr.splitlines() if line.startswith("authd: ")]
    assert "trust domain example.org, not other.test" in error
    assert 'keep trust_domain = "example.org"' in error
    assert "new data directory" in error


def test_run_with_the_same_trust_domain_starts(workdir: Path) -> None:
    daemon = Daemon(workdir / "data", 'trust_domain = "example.org"')
    daemon.start()
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.stop() == 0

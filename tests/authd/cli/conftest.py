"""A running daemon for the CLI tests (each test gets its own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon


@pytest.fixture
def daemon(workdir: Path) -> Iterator[Daemon]:
    running = Daemon(workdir / "data")
    running.start()
    yield running
    if running.process and running.process.poll() is None:
        running.stop()

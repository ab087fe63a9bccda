"""Fixtures shared by the workload endpoint tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths must stay under 108 bytes; pytest's tmp_path can be too long."""
    path = Path(tempfile.mkdtemp(prefix="authd-workload-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

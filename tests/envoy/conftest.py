"""Fixtures every real-Envoy test module shares; each module gets its own instances."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.envoy import EchoUpstream, short_tmpdir


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    """A short directory (Unix socket paths stay < 108 bytes), removed after the module."""
    path = short_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    """The upstream behind Envoy: it echoes what reached it."""
    server = EchoUpstream()
    yield server
    server.close()

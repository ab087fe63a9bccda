"""Fixtures for the agent tests: a server with the node API as a real process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agents import Agent, Server


@pytest.fixture
def server(workdir: Path) -> Iterator[Server]:
    data = workdir / "server" / "data"
    data.mkdir(parents=True)
    server = Server(data)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    try:
        yield started
    finally:
        for agent in started:
            agent.stop()

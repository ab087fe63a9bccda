"""Fixtures shared across test directories: private Redis servers, one of each per session.

They never touch a Redis the machine already runs; each test keeps its data apart with its
own key prefix, so nothing is ever flushed.
"""

from __future__ import annotations

import compileall
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisCluster, RedisServer

REPO = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Byte-compile authd's sources once before the many ``authd`` processes tests start.

    Where PYTHONDONTWRITEBYTECODE is set (it is on our CI machines) no process caches its
    bytecode, and every ``authd`` command would compile the whole package again (~0.2 s).
    """
    for package in ("authd", "ca", "protos"):
        compileall.compile_dir(REPO / package, quiet=2)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A standalone ``redis-server`` on a free port, stopped at the end of the session."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A three-node Redis Cluster on free ports, stopped at the end of the session."""
    with RedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory every uid can enter, removed afterwards.

    Unix socket paths are limited to 108 bytes, and pytest's own tmp dirs are long and 0700.
    """
    path = Path(tempfile.mkdtemp(prefix="authd-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

"""Fixtures shared across test directories: private Redis servers, one of each per session.

They never touch a Redis the machine already runs; each test keeps its data apart with its
own key prefix, so nothing is ever flushed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import RedisCluster, RedisServer


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

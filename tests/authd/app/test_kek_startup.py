"""`authd run` with ``ca.key_encryption_key``: refused at start, in one line, where it cannot
work (an embedded store; a KEK other than the one the shared store's keys are wrapped with;
a KEK file others can read)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.key_wrap import KeyEncryptionKey
from tests.support.daemon import Daemon
from tests.support.redis_server import RedisServer
from tests.support.store_replicas import ALLOW_WORKLOADS_POLICY, Replica


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="authd-kek-"))  # short: Unix socket paths
    os.chmod(path, 0o755)
    (path / "policy.yaml").write_text(ALLOW_WORKLOADS_POLICY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_kek(path: Path, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.write(fd, KeyEncryptionKey.generate())
    os.close(fd)
    os.chmod(path, mode)
    return path


def refusal(daemon: Daemon) -> str:
    with pytest.raises(AssertionError, match="authd run exited"):
        daemon.start()
    assert "Traceback" not in daemon.logs()
    return daemon.logs()


def test_a_kek_with_an_embedded_store_is_refused(workdir: Path) -> None:
    kek = write_kek(workdir / "kek")
    (workdir / "solo").mkdir()
    daemon = Daemon(workdir / "solo" / "data", f'[ca]\nkey_encryption_key = "{kek}"\n')
    assert "ca.key_encryption_key needs a shared store" in refusal(daemon)


def test_a_replica_with_another_kek_or_a_readable_kek_file_is_refused(workdir: Path) -> None:
    redis = RedisServer(workdir / "redis").start()
    try:
        first = Replica(
            workdir, "r1", redis.url, rotates=True, max_staleness=5,
            extra_ca_config=f'key_encryption_key = "{write_kek(workdir / "kek1")}"\n',
        )  # fmt: skip
        first.start()
        try:
            other = Replica(
                workdir, "r2", redis.url, rotates=True, max_staleness=5,
                extra_ca_config=f'key_encryption_key = "{write_kek(workdir / "kek2")}"\n',
            )  # fmt: skip
            assert "give every replica the same ca.key_encryption_key" in refusal(other)
            loose = Replica(
                workdir,
                "r3",
                redis.url,
                rotates=False,
                max_staleness=5,
                extra_ca_config=(f'key_encryption_key = "{write_kek(workdir / "kek3", 0o644)}"\n'),
            )
            assert "readable by others (mode 0644): chmod 600 it" in refusal(loose)
        finally:
            first.stop()
    finally:
        redis.stop()

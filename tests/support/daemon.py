"""`authd run` as a real process, and the `authd` CLI driven against it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

AUTHD = [sys.executable, "-m", "authd"]
NOBODY = 65534


def authd(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*AUTHD, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"authd {' '.join(args)} failed: {result.stderr}")
    return result


class Daemon:
    """``authd run`` on its defaults, but for the data directory and free ports."""

    def __init__(self, data_dir: Path, config_text: str = "") -> None:
        self.data_dir = data_dir
        self.config = data_dir.parent / "authd.toml"
        self.config.write_text(
            f"{config_text}\n[authz]\n"
            f'grpc_address = "127.0.0.1:{free_port()}"\n'
            f'http_address = "127.0.0.1:{free_port()}"\n'
            f'metrics_address = "127.0.0.1:{free_port()}"\n'
        )
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        extra = ["--config", str(self.config)]
        self.log = open(self.data_dir.parent / "daemon.log", "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*AUTHD, "run", "--data-dir", str(self.data_dir), *extra],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"authd run exited: {self.logs()}")
            if authd("healthcheck", "--quiet", data_dir=self.data_dir, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"authd did not become healthy: {self.logs()}")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.log.close()
        return code

    def logs(self) -> str:
        return (self.data_dir.parent / "daemon.log").read_text()


def as_uid(uid: int, args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a process that has dropped to ``uid`` before it connects.

    The interpreter lives under /root (0700), so the process starts as root, imports what
    it needs (grpc imports parts lazily: open and close a channel first), and then gives up
    root for good before it connects; the daemon sees only the new uid.
    """
    script = (
        "import os, sys\n"
        "from authd.cli.main import main\n"
        "import grpc\n"
        "grpc.insecure_channel('unix:/nonexistent').close()\n"
        f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
        f"sys.exit(main({[*args, '--data-dir', str(data_dir)]!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/"
    )


def cli_json(daemon: Daemon, *args: str) -> Any:
    """What ``authd ARGS --json`` prints, parsed."""
    return json.loads(authd(*args, "--json", data_dir=daemon.data_dir).stdout)

"""The processes of the local topology: started in their own session, recorded by pid and
start time, and stopped by exactly those (never by name), also from another `authd` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class DemoError(Exception):
    """A step of the demo that did not go as it should; one line for the user."""


@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    start_time: int  # /proc/<pid>/stat field 22: tells a reused pid from ours
    log: str


def start_time_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def alive(process: Started) -> bool:
    return start_time_of(process.pid) == process.start_time


def wait_for(what: str, probe: Callable[[], T | bool | None], timeout: float = 30.0) -> T:
    """Poll ``probe`` until it answers something true, or raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = probe()
        if result is not None and result is not False:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise DemoError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class ProcessTable:
    """What was started, in order, persisted in ``path`` so that ``authd demo down`` can stop
    what ``authd demo up`` left running."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started: list[Started] = []
        if path.exists():
            self.started = [Started(**p) for p in json.loads(path.read_text())]
        self._popen: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(
        self, name: str, command: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> Started:
        # Ctrl-C between the fork and the record would leave a process nobody stops: hold
        # SIGINT until it is recorded (it is delivered right after).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with log.open("ab") as out:
                process = subprocess.Popen(
                    list(command),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
                    env=env,
                )
            started = Started(name, process.pid, start_time_of(process.pid) or 0, str(log))
            self._popen[process.pid] = process
            self.started.append(started)
            self.save()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return started

    def check_running(self, started: Started) -> None:
        """Raise, with the end of its log, if ``started`` is no longer running."""
        process = self._popen.get(started.pid)
        if (process is not None and process.poll() is not None) or not alive(started):
            lines = Path(started.log).read_text(errors="replace").splitlines()[-15:]
            raise DemoError(f"{started.name} exited; the end of its log:\n" + "\n".join(lines))

    def save(self) -> None:
        self.path.write_text(json.dumps([asdict(p) for p in self.started], indent=1))

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM each, last started first; SIGKILL what is still there after ``timeout``."""
        for started in reversed(self.started):
            if alive(started):
                os.kill(started.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for started in reversed(self.started):
            while alive(started) and time.monotonic() < deadline:
                self._reap(started)
                time.sleep(0.02)
            if alive(started):
                os.kill(started.pid, signal.SIGKILL)
                while alive(started) and time.monotonic() < deadline + timeout:
                    self._reap(started)
                    time.sleep(0.02)
            self._reap(started)
        self.started = []
        self.save()

    def _reap(self, started: Started) -> None:
        process = self._popen.get(started.pid)
        if process is not None:
            process.poll()

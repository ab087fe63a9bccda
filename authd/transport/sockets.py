"""Listener addresses and socket files: the one place that parses ``host:port`` and clears
a stale Unix socket.

A Unix socket file outlives the process that bound it. Before binding again, a listener
probes the file: if nobody answers (``ECONNREFUSED``), a previous run died and the file is
removed; if somebody answers, or the path is not a socket at all, nothing is touched and the
caller gets an ``OSError`` that says why.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

__all__ = ["SocketInUseError", "parse_host_port", "remove_stale_socket"]

log = logging.getLogger(__name__)


class SocketInUseError(OSError):
    """The path is a socket somebody is serving on, or is not a socket at all."""


def parse_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` as ``(host, port)``; IPv6 in brackets, ``"[::1]:9191"`` -> ``("::1", 9191)``.

    Raises ValueError, naming the address, if it is not ``host:port`` with a port 0..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port, not {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def remove_stale_socket(path: str | os.PathLike[str]) -> None:
    """Unlink ``path`` if it is a socket nobody serves on; do nothing if it does not exist.

    Raises :class:`SocketInUseError` if the path is something other than a socket, or a
    process is serving on it (also when its backlog is full and it cannot answer now).
    """
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUseError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a full backlog answers EAGAIN instead of blocking us
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("removing stale socket %s", path)
        path.unlink(missing_ok=True)
        return
    except BlockingIOError:
        pass  # somebody listens, and has a full backlog
    except FileNotFoundError:
        return  # removed meanwhile
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            raise SocketInUseError(f"cannot check {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise SocketInUseError(f"{path} is in use: another process is serving on it")

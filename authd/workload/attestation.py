"""Unix workload attestation: a caller's selectors, from what the kernel says about it.

A caller on the Workload API or SDS socket is known by its connection's SO_PEERCRED (pid,
uid, gid and the pid's start time, recorded by :mod:`authd.transport.peercred`) and by what
``/proc/<pid>`` says about that process; never by anything it sends. :func:`attest` turns these into
``unix`` selectors with the keys of SPIRE's unix workload attestor: ``uid``, ``user``,
``gid``, ``group``, ``supplementary_gid``, ``supplementary_group``, ``path``, ``sha256``.

Why this is sound:

- uid and gid come from SO_PEERCRED only: the kernel fixed them at connect time. /proc
  supplies what SO_PEERCRED lacks (supplementary groups, the executable). Its uid and gid
  are only compared with SO_PEERCRED's, to refuse a process whose effective ids have changed
  since it connected (setuid(), or exec of a set-user-ID binary): that binary did not connect
  with those ids.
- pids are reused: by the time a call is attested, the process that connected may be gone
  and its pid given to another, maybe of another uid. So the start time recorded at accept
  time is checked before and after anything is read; everything is read through one open
  ``/proc/<pid>`` directory, which stays bound to one process even if its pid is reused. A
  different start time, a zombie or a missing process is refused ("caller process <pid> has
  exited or been replaced"), so nothing of another process is attributed to a connection.
- A connection fd handed to another process (fork, SCM_RIGHTS) keeps the credentials of the
  process that connected; that is the kernel's model, so that process is the one attested,
  and once it has exited, attestation refuses, even though the fd's holder can still talk.
- ``path`` is given only while the executable's path still names the running inode (same
  device and inode). A deleted or replaced binary gets no ``path``, so it cannot match an
  entry meant for whatever is at that path now. ``sha256`` is of the running inode itself
  (read through ``/proc/<pid>/exe``), so it stays right then.
- An entry matches only if all of its selectors are present, so a missing selector can only
  match fewer entries. Anything uncertain (a binary above the size bound or changing while
  hashed, a name with no passwd/group entry) is left out, never guessed.

Limits: a process can exec another binary after connecting and keep its pid and start time,
so ``path`` and ``sha256`` say what it runs *now*. They are as strong as the uid they are
paired with (any process of that uid could connect and then exec); the effective-id check
stops a set-user-ID binary from lending its name to its caller's connection. The hash of an
interpreter says nothing about the script it runs.
"""

from __future__ import annotations

import grp
import hashlib
import logging
import os
import pwd
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import NoReturn, TypeVar

from authd.transport.peercred import PeerCredentials, read_process_stat
from ca.store import Selector

__all__ = [
    "DEFAULT_MAX_BINARY_SIZE",
    "SELECTOR_TYPE",
    "AttestationError",
    "ExecutableHashes",
    "attest",
]

log = logging.getLogger(__name__)

SELECTOR_TYPE = "unix"
DEFAULT_MAX_BINARY_SIZE = 256 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024
_FileKey = tuple[int, int, int, int, int]
T = TypeVar("T")


class AttestationError(Exception):
    """The caller cannot be attested: its process has gone, been replaced, or is unreadable."""


class ExecutableHashes:
    """SHA-256 digests of executables, cached so attesting the same binary again is cheap.

    The cache key is ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` of the open
    file. Every write moves mtime and ctime; the file's owner can set mtime back
    (``utimensat``), but not ctime. A file that changes while it is hashed gets no digest.
    Thread-safe; at most ``max_entries`` digests are kept, least recently used dropped first.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self._max_entries = max_entries
        self._digests: OrderedDict[_FileKey, str] = OrderedDict()
        self._lock = threading.Lock()
        self.files_hashed = 0  # files actually read: cache misses that gave a digest

    def sha256(self, fd: int) -> str | None:
        """Hex SHA-256 of the regular file open as ``fd``; None if it changed while read."""
        before = os.fstat(fd)
        key = _file_key(before)
        with self._lock:
            digest = self._digests.get(key)
            if digest is not None:
                self._digests.move_to_end(key)
                return digest
        digest = _hash_file(fd, before.st_size)
        if digest is None or _file_key(os.fstat(fd)) != key:
            return None
        with self._lock:
            self.files_hashed += 1
            self._digests[key] = digest
            self._digests.move_to_end(key)
            while len(self._digests) > self._max_entries:
                self._digests.popitem(last=False)
        return digest


_DEFAULT_HASHES = ExecutableHashes()


def attest(
    creds: PeerCredentials,
    *,
    max_binary_size: int = DEFAULT_MAX_BINARY_SIZE,
    hashes: ExecutableHashes | None = None,
) -> frozenset[Selector]:
    """The ``unix`` selectors of the process that made the connection ``creds`` describe.

    Blocking: it reads /proc, looks up names and may hash a binary the first time it is
    seen; from async code call it in a thread. Raises :class:`AttestationError` when that
    process has exited or been replaced, or cannot be read.
    """
    pid = creds.pid
    if pid <= 0:
        raise AttestationError(f"caller pid {pid} is not visible in authd's pid namespace")
    if creds.start_time is None:
        raise AttestationError(
            f"caller process {pid} had exited before its connection was accepted"
        )
    try:
        # An open /proc/<pid> stays this process's: if the pid is reused, reads fail.
        proc_fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        _gone(pid)
    except OSError as exc:
        raise AttestationError(f"cannot open /proc/{pid}: {exc.strerror or exc}") from None
    try:
        _require_same_process(creds, proc_fd)
        status = _read_status(creds, proc_fd)
        _require_same_ids(creds, status)
        selectors = _id_selectors(creds, status)
        exe_fd = _from_proc(
            creds,
            proc_fd,
            "exe",
            lambda: os.open("exe", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd),
        )
        try:
            link = _from_proc(creds, proc_fd, "exe", lambda: os.readlink("exe", dir_fd=proc_fd))
            selectors |= _binary_selectors(pid, exe_fd, link, max_binary_size, hashes)
        finally:
            os.close(exe_fd)
        _require_same_process(creds, proc_fd)
    finally:
        os.close(proc_fd)
    return frozenset(Selector(SELECTOR_TYPE, value) for value in selectors)


# -- the process -------------------------------------------------------------------------


def _gone(pid: int) -> NoReturn:
    raise AttestationError(f"caller process {pid} has exited or been replaced")


def _require_same_process(creds: PeerCredentials, proc_fd: int) -> None:
    try:
        found = read_process_stat(creds.pid, dir_fd=proc_fd)
    except (OSError, ValueError) as exc:
        raise AttestationError(f"cannot read /proc/{creds.pid}/stat: {exc}") from None
    if found is None or found.exited or found.start_time != creds.start_time:
        _gone(creds.pid)


def _from_proc(creds: PeerCredentials, proc_fd: int, name: str, read: Callable[[], T]) -> T:
    """``read()`` of ``/proc/<pid>/<name>``, its failure explained as an AttestationError."""
    try:
        return read()
    except OSError as exc:
        _require_same_process(creds, proc_fd)  # a process that has gone says so
        raise AttestationError(
            f"cannot read /proc/{creds.pid}/{name}: {exc.strerror or exc}"
        ) from None


def _read_status(creds: PeerCredentials, proc_fd: int) -> dict[str, str]:
    def read() -> bytes:
        fd = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    raw = _from_proc(creds, proc_fd, "status", read)
    fields = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields[name] = value.strip()
    return fields


def _status_ids(pid: int, status: dict[str, str], name: str) -> list[int]:
    try:
        return [int(v) for v in status[name].split()]
    except (KeyError, ValueError):
        raise AttestationError(f"/proc/{pid}/status has no valid {name} line") from None


def _require_same_ids(creds: PeerCredentials, status: dict[str, str]) -> None:
    """The process still has the effective uid and gid it connected with (SO_PEERCRED)."""
    uids = _status_ids(creds.pid, status, "Uid")  # real, effective, saved, filesystem
    gids = _status_ids(creds.pid, status, "Gid")
    if len(uids) < 2 or len(gids) < 2:
        raise AttestationError(f"/proc/{creds.pid}/status has malformed Uid/Gid lines")
    if (uids[1], gids[1]) != (creds.uid, creds.gid):
        raise AttestationError(
            f"caller process {creds.pid} connected as uid {creds.uid} gid {creds.gid} but now "
            f"runs as uid {uids[1]} gid {gids[1]}; it must reconnect"
        )


# -- the selectors -----------------------------------------------------------------------


def _id_selectors(creds: PeerCredentials, status: dict[str, str]) -> set[str]:
    values = {f"uid:{creds.uid}", f"gid:{creds.gid}"}
    if (user := _user_name(creds.uid)) is not None:
        values.add(f"user:{user}")
    if (group := _group_name(creds.gid)) is not None:
        values.add(f"group:{group}")
    for gid in _status_ids(creds.pid, status, "Groups"):
        values.add(f"supplementary_gid:{gid}")
        if (group := _group_name(gid)) is not None:
            values.add(f"supplementary_group:{group}")
    return values


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _binary_selectors(
    pid: int, exe_fd: int, link: str, max_size: int, hashes: ExecutableHashes | None
) -> set[str]:
    running = os.fstat(exe_fd)
    values = set()
    if (path := _path_of(link, running)) is not None:
        values.add(f"path:{path}")
    if not stat.S_ISREG(running.st_mode):
        return values
    if running.st_size > max_size:
        log.warning(
            "executable of pid %d (%s) is %d bytes, above the %d-byte bound: no sha256 selector",
            pid,
            link,
            running.st_size,
            max_size,
        )
        return values
    digest = (hashes or _DEFAULT_HASHES).sha256(exe_fd)
    if digest is None:
        log.warning("executable of pid %d (%s) changed while hashed: no sha256 selector", pid, link)
    else:
        values.add(f"sha256:{digest}")
    return values


def _path_of(link: str, running: os.stat_result) -> str | None:
    """``link`` if that path names the running inode now; None if deleted or replaced.

    readlink appends " (deleted)" to an unlinked binary's path, but a file may really be
    named that, so the inode decides, not the suffix.
    """
    if not os.path.isabs(link):
        return None
    try:
        link.encode()  # undecodable bytes (surrogate escapes) cannot go in a selector
        on_disk = os.stat(link)
    except (OSError, UnicodeEncodeError):
        return None
    if (on_disk.st_dev, on_disk.st_ino) != (running.st_dev, running.st_ino):
        return None
    return link


# -- hashing -----------------------------------------------------------------------------


def _file_key(st: os.stat_result) -> _FileKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_file(fd: int, size: int) -> str | None:
    """SHA-256 of the first ``size`` bytes of ``fd``; None if the file is shorter."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(_HASH_CHUNK, size - offset), offset)
        if not chunk:
            return None
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()

"""Binding gRPC calls to the kernel credentials of their Unix-socket connection.

grpcio does not show a servicer the SO_PEERCRED of its connection: on a Unix socket
``context.peer()`` is just ``unix:`` for an unbound client. It does report the client's
*bound* address, ``unix:<path>``. So a :class:`PeerCredGateway` listens on the public socket
and, for each connection it accepts:

1. reads SO_PEERCRED (pid, uid, gid) of the accepted socket;
2. opens a socket bound to a fresh path ``<private_dir>/p<n>-<token>`` and connects it to the
   internal gRPC server socket, which lives in the same private directory;
3. records path -> credentials, then splices bytes both ways until both sides are done;
4. on close, forgets the mapping and unlinks the path.

A servicer asks ``gateway.peer_credentials(context)``; None means "not a connection the
gateway made", and the servicer must deny.

Why this is sound:

- The private directory is mode 0700 and owned by the daemon, so only the daemon can reach
  the internal socket: every connection the gRPC server sees came through the gateway.
- The mapping key is a filesystem path in that directory, so only the daemon can bind a
  socket to it; a caller cannot name a path it could make the server report.
- The kernel fills SO_PEERCRED when the caller connects, from the caller's own credentials;
  nothing the caller sends can change it, and a connection's credentials never change.
- There is one mapping per connection, made before any of its bytes reach the server and
  removed when it closes. Paths are never reused within a process (a counter) nor across
  restarts (a random token), so a late lookup finds nothing rather than someone else.

The pid is the one piece that can go stale: once the caller exits, the kernel may give its
pid to another process. So the gateway also records the process's *start time* (field 22 of
``/proc/<pid>/stat``); pid and start time together name one process, as the pids cannot wrap
round within one clock tick. It is read at accept time, checked with a pidfd of the
connecting process (SO_PEERPIDFD, Linux 6.5): first the stat, then a poll of the pidfd; if
that process is still alive, it held the pid all along, so the stat was its own. If it has
exited, the start time is None and nothing may be derived from the pid. (Kernels without
SO_PEERPIDFD get the stat unchecked, leaving a window between the caller's connect() and the
gateway's accept.) Whoever derives more from the pid (e.g. ``/proc/<pid>/exe``) must read it
during the call it authorises and check the start time around it: see
``authd.workload.attestation``.

The gateway decides nothing about *who* may connect: the public socket's mode (0o660 for
an admin socket with a group, 0o666 for a socket every local user may reach) only says who
can try, and the servicer decides from the credentials.

It does bound *how many*: with :class:`ListenerLimits`, a connection beyond
``max_connections`` is closed as soon as it is accepted, and a connection that moves no byte
either way for ``idle_timeout`` seconds is closed; each is reported to ``on_refusal`` as
``"max_connections"`` or ``"idle_timeout"``. (The gRPC server behind it pings open streams,
see ``authd.transport.grpc_options``, so a quiet watch stream is not idle.)
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import re
import secrets
import select
import socket
import stat
import struct
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from authd.transport.limits import ListenerLimits
from authd.transport.refusals import RefusalCallback, RefusalReporter
from authd.transport.sockets import remove_stale_socket

__all__ = [
    "GatewayError",
    "PeerCredGateway",
    "PeerCredentials",
    "ProcessStat",
    "parse_process_stat",
    "read_peer_credentials",
    "read_process_stat",
]

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5; Python 3.11 lacks the name
_STAT_START_TIME = 22 - 3  # field 22 of /proc/<pid>/stat, counted from field 3 (state)
_MAX_UNIX_SOCKET_PATH = 107  # sun_path is 108 bytes including the terminating NUL
_BOUND_NAME = re.compile(r"p[0-9a-f]+-[A-Za-z0-9_-]{16}")
_LONGEST_BOUND_NAME = 1 + 16 + 1 + 16  # "p" + counter in hex + "-" + token
_ACCEPT_RETRY_DELAY = 0.1


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """What the kernel recorded about the process that connected: pid, uid and gid, and the
    start time of that pid's process when the connection was accepted.

    ``start_time`` is in clock ticks since boot (``/proc/<pid>/stat`` field 22); None when the
    process had already exited, or its pid is not visible in this pid namespace.
    """

    pid: int
    uid: int
    gid: int
    start_time: int | None = None


@dataclass(frozen=True, slots=True)
class ProcessStat:
    """The fields of ``/proc/<pid>/stat`` that say whether a pid is still the same process."""

    state: str
    start_time: int

    @property
    def exited(self) -> bool:
        """A zombie or dead process: it runs nothing any more, and its pid is about to go."""
        return self.state in ("Z", "X", "x")


def parse_process_stat(raw: bytes) -> ProcessStat:
    """Parse ``/proc/<pid>/stat``; raises ValueError if it is not shaped like one.

    Field 2 is the command name in parentheses, and it may itself hold spaces and
    parentheses (any process can name itself ``a) R 1 (b``), so the fields after it are
    found after the *last* ``)``.
    """
    _, paren, rest = raw.rpartition(b")")
    fields = rest.split()
    if not paren or len(fields) <= _STAT_START_TIME:
        raise ValueError(f"not a /proc/<pid>/stat line: {raw[:80]!r}")
    try:
        return ProcessStat(fields[0].decode("ascii"), int(fields[_STAT_START_TIME]))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"not a /proc/<pid>/stat line: {raw[:80]!r}") from None


def read_process_stat(pid: int, *, dir_fd: int | None = None) -> ProcessStat | None:
    """The stat of process ``pid``, or None if there is no such process.

    With ``dir_fd`` (an open ``/proc/<pid>`` directory) the stat is that directory's
    process's, even if the pid has since been reused: None then means it has gone.
    """
    path = "stat" if dir_fd is not None else f"/proc/{pid}/stat"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        raw = os.read(fd, 4096)
    except ProcessLookupError:
        return None
    finally:
        os.close(fd)
    return parse_process_stat(raw)


class GatewayError(Exception):
    """The gateway cannot start: its socket is in use or its directory is not safe."""


class _HasPeer(Protocol):
    def peer(self) -> str: ...


def read_peer_credentials(sock: socket.socket) -> PeerCredentials:
    """SO_PEERCRED of a connected AF_UNIX socket, with its process's start time."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid, start_time=_peer_start_time(sock, pid))


def _peer_start_time(sock: socket.socket, pid: int) -> int | None:
    """The start time of the process that connected ``sock``; None if it has exited."""
    if pid <= 0:  # the peer lives in a pid namespace we cannot see into
        return None
    try:
        pidfd: int | None = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno == errno.ESRCH:  # some kernels refuse once the peer has exited
            return None
        if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
            raise
        pidfd = None  # an older kernel: the stat below is read unchecked
    try:
        found = read_process_stat(pid)
        # The stat first, then the pidfd: if the connecting process is alive *after* the
        # read, it held the pid throughout, so the stat was its and not a successor's.
        if found is None or found.exited or (pidfd is not None and _has_exited(pidfd)):
            return None
        return found.start_time
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _has_exited(pidfd: int) -> bool:
    poller = select.poll()  # not select(): a busy daemon's fds can exceed FD_SETSIZE
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


class PeerCredGateway:
    """Listens on ``public_path`` and hands connections to the gRPC server at
    :attr:`internal_address`, remembering each one's peer credentials.

    Start the gateway first (it creates ``private_dir``), then bind the gRPC server to
    :attr:`internal_address`; close the gateway after stopping the server.
    """

    INTERNAL_SOCKET_NAME = "grpc.sock"

    def __init__(
        self,
        public_path: str | os.PathLike[str],
        private_dir: str | os.PathLike[str],
        *,
        public_mode: int = 0o660,
        public_gid: int | None = None,
        chunk_size: int = 64 * 1024,
        limits: ListenerLimits | None = None,
        on_refusal: RefusalCallback | None = None,
    ) -> None:
        self.public_path = Path(public_path).absolute()
        self.private_dir = Path(private_dir).absolute()
        self.internal_path = self.private_dir / self.INTERNAL_SOCKET_NAME
        self._public_mode = public_mode
        self._public_gid = public_gid
        self._chunk_size = chunk_size
        self.limits = limits or ListenerLimits()
        self._refused = RefusalReporter(str(self.public_path), on_refusal)
        for path in (self.public_path, self.private_dir / ("x" * _LONGEST_BOUND_NAME)):
            if len(os.fsencode(path)) > _MAX_UNIX_SOCKET_PATH:
                raise ValueError(f"{path} is too long for a Unix socket path")

        self._peers: dict[str, PeerCredentials] = {}
        self._counter = itertools.count()
        self._listener: socket.socket | None = None
        self._listener_inode: tuple[int, int] | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def internal_address(self) -> str:
        """The gRPC target for the internal server: ``server.add_insecure_port(this)``."""
        return f"unix:{self.internal_path}"

    @property
    def connection_count(self) -> int:
        """Connections currently spliced (and so mappings currently held)."""
        return len(self._peers)

    def credentials_for(self, peer: str) -> PeerCredentials | None:
        """The credentials behind a gRPC ``context.peer()`` string, or None if unknown."""
        if not peer.startswith("unix:"):
            return None
        return self._peers.get(peer.removeprefix("unix:"))

    def peer_credentials(self, context: _HasPeer) -> PeerCredentials | None:
        """The credentials of the caller of a gRPC call (sync or aio context); None: deny."""
        return self.credentials_for(context.peer())

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._listener is not None:
            raise RuntimeError("gateway already started")
        self._prepare_private_dir()
        try:
            remove_stale_socket(self.public_path)
        except OSError as exc:
            raise GatewayError(str(exc)) from None
        self._remove_stale_bound_sockets()
        self._listener = self._listen()
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def close(self) -> None:
        """Stop accepting, drop every spliced connection, and remove the public socket."""
        if self._accept_task is not None:
            self._accept_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            self._unlink_public_socket()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _prepare_private_dir(self) -> None:
        try:
            self.private_dir.mkdir(mode=0o700, parents=True)
            os.chmod(self.private_dir, 0o700)  # mkdir's mode is filtered by the umask
        except FileExistsError:
            pass
        st = os.lstat(self.private_dir)
        if not stat.S_ISDIR(st.st_mode):
            raise GatewayError(f"{self.private_dir} is not a directory")
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise GatewayError(
                f"{self.private_dir} must be owned by uid {os.geteuid()} with mode 0700 "
                f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
            )

    def _remove_stale_bound_sockets(self) -> None:
        """Drop the bound paths a previous run left behind when it died."""
        for entry in os.scandir(self.private_dir):
            mode = entry.stat(follow_symlinks=False).st_mode
            if _BOUND_NAME.fullmatch(entry.name) and stat.S_ISSOCK(mode):
                with suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def _listen(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.public_path))
            # Nobody can connect before listen(), so fixing the mode here leaves no window.
            if self._public_gid is not None:
                os.chown(self.public_path, -1, self._public_gid)
            os.chmod(self.public_path, self._public_mode)
            st = os.stat(self.public_path)
            self._listener_inode = (st.st_dev, st.st_ino)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            self._unlink_public_socket()
            raise
        return sock

    def _unlink_public_socket(self) -> None:
        """Unlink the public socket, unless another process has since replaced it."""
        if self._listener_inode is None:
            return
        with suppress(FileNotFoundError):
            st = os.stat(self.public_path)
            if (st.st_dev, st.st_ino) == self._listener_inode:
                self.public_path.unlink()
        self._listener_inode = None

    # -- connections ---------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(self._listener)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept on %s: %s", self.public_path, exc.strerror)
                    await asyncio.sleep(_ACCEPT_RETRY_DELAY)
                    continue
                if exc.errno == errno.ECONNABORTED:
                    continue
                log.exception("accept on %s failed; no longer accepting", self.public_path)
                return
            if len(self._connections) >= self.limits.max_connections:
                conn.close()
                self._refused("max_connections")
                continue
            task = loop.create_task(self._serve(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    def _new_bound_path(self) -> str:
        name = f"p{next(self._counter):x}-{secrets.token_urlsafe(12)}"
        return str(self.private_dir / name)

    async def _serve(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        upstream: socket.socket | None = None
        bound: str | None = None
        writers: list[asyncio.StreamWriter] = []
        finished = False
        try:
            creds = read_peer_credentials(client)
            client.setblocking(False)
            bound = self._new_bound_path()
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.setblocking(False)
            upstream.bind(bound)
            try:
                await loop.sock_connect(upstream, str(self.internal_path))
            except OSError as exc:
                log.warning("cannot reach %s: %s", self.internal_path, exc.strerror)
                return
            self._peers[bound] = creds

            client_reader, client_writer = await asyncio.open_unix_connection(sock=client)
            writers.append(client_writer)
            server_reader, server_writer = await asyncio.open_unix_connection(sock=upstream)
            writers.append(server_writer)
            activity = _Activity(loop.time())
            try:
                async with asyncio.TaskGroup() as group:
                    pumps = (
                        group.create_task(self._pump(client_reader, server_writer, activity)),
                        group.create_task(self._pump(server_reader, client_writer, activity)),
                    )
                    group.create_task(self._close_when_idle(activity, pumps))
            except* OSError as errors:
                log.debug("connection from pid %d dropped: %s", creds.pid, errors.exceptions[0])
            except* _IdleTimeout:
                self._refused("idle_timeout")
            else:
                finished = True
        except Exception:
            log.exception("peer-credential gateway: connection failed")
        finally:
            if bound is not None:
                self._peers.pop(bound, None)
                with suppress(FileNotFoundError):
                    os.unlink(bound)
            for writer in writers:
                if finished:
                    writer.close()  # flushes what is still buffered
                else:
                    writer.transport.abort()
            # Sockets not yet handed to a transport are still ours to close.
            if len(writers) < 1:
                client.close()
            if len(writers) < 2 and upstream is not None:
                upstream.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: _Activity
    ) -> None:
        """Copy one direction until EOF, then pass the EOF on (half-close)."""
        loop = asyncio.get_running_loop()
        while data := await reader.read(self._chunk_size):
            activity.last = loop.time()
            writer.write(data)
            await writer.drain()
            activity.last = loop.time()
        if writer.can_write_eof():
            writer.write_eof()

    async def _close_when_idle(
        self, activity: _Activity, pumps: tuple[asyncio.Task[None], asyncio.Task[None]]
    ) -> None:
        """Raise _IdleTimeout once no byte moved for ``idle_timeout``; return when both
        directions are done."""
        loop = asyncio.get_running_loop()
        pending = set(pumps)
        while pending:
            remaining = activity.last + self.limits.idle_timeout - loop.time()
            if remaining <= 0:
                raise _IdleTimeout
            _, pending = await asyncio.wait(pending, timeout=remaining)


class _IdleTimeout(Exception):
    """A spliced connection moved no byte for the idle timeout."""


class _Activity:
    """When a spliced connection last moved a byte (loop time)."""

    __slots__ = ("last",)

    def __init__(self, last: float) -> None:
        self.last = last

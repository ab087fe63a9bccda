"""Unix workload attestation of real processes behind a real peer-credential gateway.

Callers run as separate processes. Those of other uids start as root and drop their ids
before connecting (the interpreter lives under a 0700 home, so they could not exec it as
another uid); to SO_PEERCRED such a process is exactly a process of that uid. Pid reuse is
made to happen for real: writing ``pid - 1`` to ``/proc/sys/kernel/ns_last_pid`` (what CRIU
does) makes the next process get ``pid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import hashlib
import itertools
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authd.transport.peercred import PeerCredentials, PeerCredGateway, read_peer_credentials
from authd.workload.attestation import AttestationError, ExecutableHashes, attest
from ca.store import Selector

T = TypeVar("T")
NOBODY = 65534
PYTHON = os.path.realpath(sys.executable)  # what /proc/<pid>/exe of a client names
NO_SUCH_ID = 54321  # a uid and gid with no passwd or group entry
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def interpreter_env() -> dict[str, str]:
    """The environment for a copy of this interpreter to import what this one imports.

    In a virtualenv the interpreter's binary is the base one, and a copy of it in another
    directory finds no ``pyvenv.cfg``, so it would not see the venv's site-packages: hand it
    this interpreter's import path instead (the binary, which the tests attest, stays the same).
    """
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def unix(*values: str) -> frozenset[Selector]:
    return frozenset(Selector("unix", value) for value in values)


def start_time_of(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat, found after the parenthesised command name."""
    line = Path(f"/proc/{pid}/stat").read_bytes().decode()
    match = re.fullmatch(r"\d+ \(.*\) (.*)\n?", line, re.DOTALL)
    assert match is not None, line
    return int(match.group(1).split()[22 - 3])


def own_credentials() -> PeerCredentials:
    """This process's credentials, as the kernel reports them for a socket it made."""
    a, b = socket.socketpair()
    with a, b:
        return read_peer_credentials(a)


def spawn_with_pid(pid: int, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` as process ``pid`` (which must be free), by setting ns_last_pid."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(argv)
        if proc.pid == pid:
            return proc
        proc.kill()  # another task took the pid first: free it and try again
        proc.wait()
    raise AssertionError(f"could not start a process as pid {pid}")


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.DEBUG, logger="authd"):
        yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


# -- a gRPC server that attests every caller ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    label: str
    peer: str
    creds: PeerCredentials
    selectors: frozenset[Selector] | None  # None: refused
    error: str = ""


class AttestingHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Attests the caller of every Check (in a thread, as attest blocks) and records it."""

    def __init__(self, gateway: PeerCredGateway, **options: Any) -> None:
        self.gateway = gateway
        self.options = options
        self.outcomes: list[Outcome] = []

    async def Check(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> health_pb2.HealthCheckResponse:
        creds = self.gateway.peer_credentials(context)
        if creds is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "unknown caller")
        try:
            selectors = await asyncio.to_thread(attest, creds, **self.options)
        except AttestationError as exc:
            self.outcomes.append(Outcome(request.service, context.peer(), creds, None, str(exc)))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        self.outcomes.append(Outcome(request.service, context.peer(), creds, selectors))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    def of(self, label: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.label == label]

    def last(self, label: str) -> Outcome:
        return self.of(label)[-1]


@contextlib.asynccontextmanager
async def serving(directory: Path, **options: Any) -> AsyncIterator[AttestingHealth]:
    gateway = PeerCredGateway(directory / "public.sock", directory / "private", public_mode=0o666)
    await gateway.start()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = AttestingHealth(gateway, **options)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(gateway.internal_address)
    await server.start()
    try:
        yield servicer
    finally:
        await server.stop(None)
        await gateway.close()


# -- callers in their own processes ---------------------------------------------------------

# Drops to <uid>/<gid> with supplementary <groups> (if not root), prints "ready <pid>", then
# obeys stdin: "call <n>" makes n calls on its one channel and prints "ok" or "error <code>";
# "drop <uid>" switches ids on the already connected channel. The channel is created before
# the drop (grpc imports lazily, from a directory <uid> cannot read), connects at the first call.
CLIENT = textwrap.dedent(
    """
    import os, sys
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target, label, uid, gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    groups = [int(g) for g in sys.argv[5].split(",") if g]
    request = health_pb2.HealthCheckRequest(service=label)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        print("ready", os.getpid(), flush=True)
        for line in sys.stdin:
            command, argument = line.split()
            if command == "call":
                try:
                    for _ in range(int(argument)):
                        stub.Check(request)
                except grpc.RpcError as exc:
                    print("error", exc.code().name, flush=True)
                else:
                    print("ok", flush=True)
            elif command == "drop":
                os.setgroups([])
                os.setgid(int(argument))
                os.setuid(int(argument))
                print("ok", flush=True)
    """
)


class Client:
    def __init__(self, proc: asyncio.subprocess.Process, pid: int) -> None:
        self.proc = proc
        self.pid = pid

    async def command(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()
        return (await asyncio.wait_for(self.proc.stdout.readline(), 60)).decode().strip()

    async def call(self, n: int = 1) -> str:
        return await self.command(f"call {n}")


@contextlib.asynccontextmanager
async def client(
    directory: Path,
    label: str,
    *,
    uid: int = 0,
    gid: int = 0,
    groups: Sequence[int] = (),
    executable: str = sys.executable,
) -> AsyncIterator[Client]:
    proc = await asyncio.create_subprocess_exec(
        executable,
        "-c",
        CLIENT,
        f"unix:{directory / 'public.sock'}",
        label,
        str(uid),
        str(gid),
        ",".join(map(str, groups)),
        cwd=directory,
        env=interpreter_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        assert line[:1] == ["ready"], line
        yield Client(proc, int(line[1]))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


# -- what a caller is attested as -----------------------------------------------------------


def test_root_caller_is_attested_as_root_running_its_binary(workdir: Path) -> None:
    async def scenario() -> None:
        async with serving(workdir) as servicer, client(workdir, "root") as root:
            assert await root.call() == "ok"
            outcome = servicer.last("root")
        assert outcome.creds.pid == root.pid
        assert outcome.selectors == unix(
            "uid:0",
            "user:root",
            "gid:0",
            "group:root",
            f"path:{PYTHON}",
            f"sha256:{sha256_of(PYTHON)}",
        )

    run(scenario())


def test_caller_of_another_uid_gets_its_ids_and_supplementary_groups_never_roots(
    workdir: Path,
) -> None:
    daemon_gid, bin_gid = grp.getgrnam("daemon").gr_gid, grp.getgrnam("bin").gr_gid
    nobody_group = grp.getgrgid(NOBODY).gr_name

    async def scenario() -> None:
        async with (
            serving(workdir) as servicer,
            client(
                workdir,
                "nobody",
                uid=NOBODY,
                gid=NOBODY,
                groups=[daemon_gid, bin_gid, NO_SUCH_ID],
            ) as nobody,
        ):
            assert await nobody.call() == "ok"
        selectors = servicer.last("nobody").selectors
        assert selectors == unix(
            f"uid:{NOBODY}",
            "user:nobody",
            f"gid:{NOBODY}",
            f"group:{nobody_group}",
            f"supplementary_gid:{daemon_gid}",
            "supplementary_group:daemon",
            f"supplementary_gid:{bin_gid}",
            "supplementary_group:bin",
            f"supplementary_gid:{NO_SUCH_ID}",  # a group with no name still counts by number
            f"path:{PYTHON}",
            f"sha256:{sha256_of(PYTHON)}",
        )
        assert not selectors & unix("uid:0", "user:root", "gid:0", "group:root")

    run(scenario())


def test_ids_without_passwd_or_group_entries_get_no_name_selectors(workdir: Path) -> None:
    with pytest.raises(KeyError):
        pwd.getpwuid(NO_SUCH_ID)
    with pytest.raises(KeyError):
        grp.getgrgid(NO_SUCH_ID)

    async def scenario() -> None:
        async with (
            serving(workdir) as servicer,
            client(workdir, "anon", uid=NO_SUCH_ID, gid=NO_SUCH_ID, groups=[NO_SUCH_ID]) as anon,
        ):
            assert await anon.call() == "ok"
        assert servicer.last("anon").selectors == unix(
            f"uid:{NO_SUCH_ID}",
            f"gid:{NO_SUCH_ID}",
            f"supplementary_gid:{NO_SUCH_ID}",
            f"path:{PYTHON}",
            f"sha256:{sha256_of(PYTHON)}",
        )

    run(scenario())


def test_concurrent_callers_of_different_uids_always_get_their_own_selectors(
    workdir: Path,
) -> None:
    calls = 150
    daemon_gid = grp.getgrnam("daemon").gr_gid
    binary = f"sha256:{sha256_of(PYTHON)}"
    expected = {
        "root": unix("uid:0", "user:root", "gid:0", "group:root", f"path:{PYTHON}", binary),
        "nobody": unix(
            f"uid:{NOBODY}",
            "user:nobody",
            f"gid:{NOBODY}",
            f"group:{grp.getgrgid(NOBODY).gr_name}",
            f"supplementary_gid:{daemon_gid}",
            "supplementary_group:daemon",
            f"path:{PYTHON}",
            binary,
        ),
    }

    async def scenario() -> None:
        async with (
            serving(workdir) as servicer,
            client(workdir, "root") as root,
            client(workdir, "nobody", uid=NOBODY, gid=NOBODY, groups=[daemon_gid]) as nobody,
        ):
            assert await asyncio.gather(root.call(calls), nobody.call(calls)) == ["ok", "ok"]
            pids = {"root": root.pid, "nobody": nobody.pid}
        for label, selectors in expected.items():
            outcomes = servicer.of(label)
            assert len(outcomes) == calls, label
            assert {o.selectors for o in outcomes} == {selectors}, label
            assert {o.creds.pid for o in outcomes} == {pids[label]}, label
            assert len({o.peer for o in outcomes}) == 1, label  # one reused connection
        # and the two streams of calls really interleaved on the server
        labels = [o.label for o in servicer.outcomes]
        assert sum(a != b for a, b in itertools.pairwise(labels)) > 1

    run(scenario())


# -- the process behind a connection must still be the one that connected -------------------

# Connects to the gateway as <uid>, hands the connected socket to the test over the socket
# pair on fd <channel> (SCM_RIGHTS), prints "ready <pid>", and exits at the first stdin line.
CONNECTOR = textwrap.dedent(
    """
    import os, socket, sys
    public, channel, uid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(public)
    socket.send_fds(socket.socket(fileno=channel), [b"fd"], [conn.fileno()])
    conn.close()
    print("ready", os.getpid(), flush=True)
    sys.stdin.readline()
    """
)


@contextlib.asynccontextmanager
async def passed_on_connection(
    directory: Path, uid: int
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """A connection made by a connector process of ``uid`` and now held by this process.

    Yields the connector (not reaped automatically: the test decides when) and a gRPC target
    whose single connection is relayed onto the passed socket.
    """
    ours, theirs = socket.socketpair()
    public = str(directory / "public.sock")
    connector = subprocess.Popen(
        [sys.executable, "-c", CONNECTOR, public, str(theirs.fileno()), str(uid)],
        pass_fds=[theirs.fileno()],
        cwd=directory,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    theirs.close()
    held: socket.socket | None = None
    relay: asyncio.Server | None = None
    try:
        _, fds, _, _ = await asyncio.to_thread(socket.recv_fds, ours, 16, 1)
        held = socket.socket(fileno=fds[0])
        assert connector.stdout is not None
        line = (await asyncio.to_thread(connector.stdout.readline)).decode().split()
        assert line == ["ready", str(connector.pid)], line
        relay = await asyncio.start_unix_server(
            splice_onto(held), path=str(directory / "relay.sock")
        )
        yield connector, f"unix:{directory / 'relay.sock'}"
    finally:
        if relay is not None:
            relay.close()
        if held is not None:
            held.close()
        ours.close()
        if connector.poll() is None:
            connector.kill()
        connector.wait()


def splice_onto(
    held: socket.socket,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held_reader, held_writer = await asyncio.open_unix_connection(sock=held)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(pump(reader, held_writer), pump(held_reader, writer))

    return handle


async def health_check(channel: grpc.aio.Channel, label: str) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=label)
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def exit_connector(connector: subprocess.Popen[bytes]) -> None:
    assert connector.stdin is not None
    connector.stdin.close()


def test_connection_held_by_another_process_is_refused_once_its_maker_exits(
    workdir: Path,
) -> None:
    async def scenario() -> None:
        async with (
            serving(workdir) as servicer,
            passed_on_connection(workdir, NOBODY) as (connector, target),
            grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel,
        ):
            # While its maker lives, the connection is the maker's, whoever holds it.
            assert await health_check(channel, "alive") == grpc.StatusCode.OK
            alive = servicer.last("alive")
            assert alive.creds.pid == connector.pid
            assert alive.selectors is not None
            assert Selector("unix", f"uid:{NOBODY}") in alive.selectors
            assert Selector("unix", "uid:0") not in alive.selectors

            exit_connector(connector)
            await asyncio.to_thread(connector.wait)
            assert await health_check(channel, "gone") == grpc.StatusCode.PERMISSION_DENIED
            gone = servicer.last("gone")
            assert gone.peer == alive.peer  # the same connection, still open
            assert gone.selectors is None
            assert gone.error == f"caller process {connector.pid} has exited or been replaced"

    run(scenario())


def test_connection_of_an_exited_but_unreaped_caller_is_refused(workdir: Path) -> None:
    def is_zombie(pid: int) -> bool:
        return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0] == b"Z"

    async def scenario() -> None:
        async with (
            serving(workdir) as servicer,
            passed_on_connection(workdir, NOBODY) as (connector, target),
            grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel,
        ):
            assert await health_check(channel, "alive") == grpc.StatusCode.OK
            exit_connector(connector)
            await eventually(lambda: is_zombie(connector.pid))
            assert start_time_of(connector.pid) == servicer.last("alive").creds.start_time
            assert await health_check(channel, "zombie") == grpc.StatusCode.PERMISSION_DENIED
            zombie = servicer.last("zombie")
            assert zombie.error == f"caller process {connector.pid} has exited or been replaced"

    run(scenario())


def test_pid_reused_by_a_root_process_is_not_attested_as_the_caller(workdir: Path) -> None:
    async def scenario() -> None:
        async with (
            serving(workdir) as servicer,
            passed_on_connection(workdir, NOBODY) as (connector, target),
            grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel,
        ):
            assert await health_check(channel, "alive") == grpc.StatusCode.OK
            exit_connector(connector)
            await asyncio.to_thread(connector.wait)
            impostor = spawn_with_pid(connector.pid, ["sleep", "60"])
            try:
                # The pid now names a live root process running another binary.
                assert os.stat(f"/proc/{connector.pid}").st_uid == 0
                assert await health_check(channel, "reused") == grpc.StatusCode.PERMISSION_DENIED
            finally:
                impostor.kill()
                impostor.wait()
            reused = servicer.last("reused")
            assert reused.creds == servicer.last("alive").creds
            assert reused.error == f"caller process {connector.pid} has exited or been replaced"

    run(scenario())


def test_caller_that_exits_while_being_attested_is_refused() -> None:
    caller = subprocess.Popen(["sleep", "60"])
    try:
        creds = PeerCredentials(caller.pid, 0, 0, start_time_of(caller.pid))
        assert Selector("unix", f"path:{os.path.realpath('/bin/sleep')}") in attest(creds)

        class ExitDuringHashing(ExecutableHashes):
            def sha256(self, fd: int) -> str | None:
                caller.kill()
                caller.wait()
                return super().sha256(fd)

        with pytest.raises(AttestationError) as info:
            attest(creds, hashes=ExitDuringHashing())
        assert str(info.value) == f"caller process {caller.pid} has exited or been replaced"
    finally:
        caller.kill()
        caller.wait()


def test_wrong_start_time_for_a_live_pid_is_refused() -> None:
    creds = own_credentials()
    assert creds.start_time is not None
    assert Selector("unix", f"uid:{os.getuid()}") in attest(creds)
    for start_time in (creds.start_time - 1, creds.start_time + 1, 0):
        with pytest.raises(AttestationError) as info:
            attest(dataclasses.replace(creds, start_time=start_time))
        assert str(info.value) == f"caller process {os.getpid()} has exited or been replaced"


def test_unknown_start_time_or_invisible_pid_is_refused() -> None:
    creds = own_credentials()
    with pytest.raises(AttestationError, match="had exited before its connection was accepted"):
        attest(dataclasses.replace(creds, start_time=None))
    with pytest.raises(AttestationError, match="not visible in authd's pid namespace"):
        attest(dataclasses.replace(creds, pid=0))


def test_caller_that_changed_its_ids_after_connecting_is_refused(workdir: Path) -> None:
    async def scenario() -> None:
        async with serving(workdir) as servicer, client(workdir, "switch") as switch:
            assert await switch.call() == "ok"
            assert await switch.command(f"drop {NOBODY}") == "ok"
            assert await switch.call() == "error PERMISSION_DENIED"
        before, after = servicer.of("switch")
        assert before.peer == after.peer  # same connection, so SO_PEERCRED still says root
        assert after.creds.uid == 0
        assert after.selectors is None
        assert after.error == (
            f"caller process {switch.pid} connected as uid 0 gid 0 but now runs as "
            f"uid {NOBODY} gid {NOBODY}; it must reconnect"
        )

    run(scenario())


# -- the binary ---------------------------------------------------------------------------


@pytest.mark.parametrize(("slack", "hashed"), [(-1, False), (0, True)])
def test_executable_above_the_size_bound_gets_no_sha256(
    slack: int, hashed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    size = os.stat(PYTHON).st_size
    selectors = attest(own_credentials(), max_binary_size=size + slack)
    assert Selector("unix", f"path:{PYTHON}") in selectors
    digests = {s for s in selectors if s.value.startswith("sha256:")}
    assert digests == (unix(f"sha256:{sha256_of(PYTHON)}") if hashed else set())
    above_bound = [r for r in caplog.records if "above the" in r.getMessage()]
    assert len(above_bound) == (0 if hashed else 1)


@pytest.fixture
def python_copy(workdir: Path) -> Path:
    """This interpreter's binary copied to a file the test may delete or replace."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir(mode=0o755)
    copy = bin_dir / "python-copy"
    shutil.copy2(PYTHON, copy)
    return copy


def test_deleted_binary_gets_no_path_but_the_hash_of_the_running_inode(
    workdir: Path, python_copy: Path
) -> None:
    async def scenario() -> None:
        async with (
            serving(workdir) as servicer,
            client(workdir, "copy", executable=str(python_copy)) as copy,
        ):
            assert await copy.call() == "ok"
            python_copy.unlink()
            assert os.readlink(f"/proc/{copy.pid}/exe") == f"{python_copy} (deleted)"
            assert await copy.call() == "ok"
        before, after = servicer.of("copy")
        binary = unix(f"sha256:{sha256_of(PYTHON)}")
        assert before.selectors == unix("uid:0", "user:root", "gid:0", "group:root") | binary | (
            unix(f"path:{python_copy}")
        )
        assert after.selectors == unix("uid:0", "user:root", "gid:0", "group:root") | binary

    run(scenario())


def test_binary_replaced_on_disk_gets_no_path_and_keeps_its_running_hash(
    workdir: Path, python_copy: Path
) -> None:
    replacement = python_copy.with_name("replacement")
    shutil.copy2("/bin/sleep", replacement)
    assert sha256_of(replacement) != sha256_of(PYTHON)

    async def scenario() -> None:
        async with (
            serving(workdir) as servicer,
            client(workdir, "copy", executable=str(python_copy)) as copy,
        ):
            assert await copy.call() == "ok"
            os.replace(replacement, python_copy)  # how packages upgrade a binary
            assert await copy.call() == "ok"
        after = servicer.last("copy").selectors
        assert after is not None
        assert Selector("unix", f"sha256:{sha256_of(PYTHON)}") in after
        assert {s.value.partition(":")[0] for s in after} == {
            "uid",
            "user",
            "gid",
            "group",
            "sha256",
        }

    run(scenario())


def test_binary_whose_path_now_names_another_file_gets_no_path(
    workdir: Path, python_copy: Path
) -> None:
    async def scenario() -> None:
        async with (
            serving(workdir) as servicer,
            client(workdir, "copy", executable=str(python_copy)) as copy,
        ):
            assert await copy.call() == "ok"
            # Mount over the binary's directory and put another file at its path: the running
            # inode is not deleted, so readlink shows the path as it was, with no suffix.
            subprocess.run(["mount", "-t", "tmpfs", "none", str(python_copy.parent)], check=True)
            try:
                shutil.copy2("/bin/sleep", python_copy)
                assert os.readlink(f"/proc/{copy.pid}/exe") == str(python_copy)
                assert await copy.call() == "ok"
            finally:
                subprocess.run(["umount", "--lazy", str(python_copy.parent)], check=True)
        before, after = (o.selectors for o in servicer.of("copy"))
        assert before is not None and after is not None
        assert before - after == unix(f"path:{python_copy}")
        assert Selector("unix", f"sha256:{sha256_of(PYTHON)}") in after

    run(scenario())


def test_binary_really_named_deleted_keeps_its_path(workdir: Path, python_copy: Path) -> None:
    odd = python_copy.with_name("python (deleted)")
    python_copy.rename(odd)

    async def scenario() -> None:
        async with (
            serving(workdir) as servicer,
            client(workdir, "odd", executable=str(odd)) as odd_client,
        ):
            assert await odd_client.call() == "ok"
        selectors = servicer.last("odd").selectors
        assert selectors is not None
        assert Selector("unix", f"path:{odd}") in selectors

    run(scenario())


def test_repeated_attestations_of_one_binary_hash_it_once() -> None:
    hashes = ExecutableHashes()
    creds = own_credentials()
    results = {attest(creds, hashes=hashes) for _ in range(5)}
    assert len(results) == 1
    assert Selector("unix", f"sha256:{sha256_of(PYTHON)}") in results.pop()
    assert hashes.files_hashed == 1


def test_hash_cache_sees_a_same_size_rewrite_with_its_mtime_set_back(tmp_path: Path) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"A" * 4096)
    original = os.stat(path)
    hashes = ExecutableHashes()

    def digest() -> str | None:
        fd = os.open(path, os.O_RDONLY)
        try:
            return hashes.sha256(fd)
        finally:
            os.close(fd)

    assert digest() == hashlib.sha256(b"A" * 4096).hexdigest()
    # Rewrite in place with the same size, then restore the times (as the owner may); ctime
    # moves on anyway (bounded retry: on coarse clocks a rewrite may land in the same tick).
    deadline = time.monotonic() + 5
    while os.stat(path).st_ctime_ns == original.st_ctime_ns:
        assert time.monotonic() < deadline, "ctime never moved"
        with open(path, "r+b") as f:
            f.write(b"B" * 4096)
        os.utime(path, ns=(original.st_atime_ns, original.st_mtime_ns))
    rewritten = os.stat(path)
    assert (rewritten.st_ino, rewritten.st_size, rewritten.st_mtime_ns) == (
        original.st_ino,
        original.st_size,
        original.st_mtime_ns,
    )
    assert digest() == hashlib.sha256(b"B" * 4096).hexdigest()
    assert hashes.files_hashed == 2

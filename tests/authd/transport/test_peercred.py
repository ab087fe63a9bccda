"""The peer-credential gateway, with a real grpc.aio server and callers of other uids.

The cross-uid callers start as root and drop to their uid before connecting: this project's
interpreter lives under a 0700 home, so ``subprocess(user=...)`` could not even exec it.
The kernel records credentials at connect time, so a process that dropped privileges
before connecting is, to SO_PEERCRED, exactly a process of that uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authd.transport.limits import ListenerLimits
from authd.transport.peercred import (
    GatewayError,
    PeerCredentials,
    PeerCredGateway,
    ProcessStat,
    parse_process_stat,
    read_peer_credentials,
)

NOBODY = 65534
T = TypeVar("T")

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switches to another uid")


def start_time_of(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat, found after the parenthesised command name."""
    line = Path(f"/proc/{pid}/stat").read_bytes().decode()
    match = re.fullmatch(r"\d+ \(.*\) (.*)\n?", line, re.DOTALL)
    assert match is not None, line
    return int(match.group(1).split()[22 - 3])


def spawn_with_pid(pid: int, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` as process ``pid`` (which must be free): set ns_last_pid to pid - 1,
    as CRIU does, so the next process gets ``pid``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(argv)
        if proc.pid == pid:
            return proc
        proc.kill()  # another task took the pid first: free it and try again
        proc.wait()
    raise AssertionError(f"could not start a process as pid {pid}")


def run(
    coro: Coroutine[Any, Any, T],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> T:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.DEBUG, logger="authd.transport.peercred"):
        yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


class RecordingHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Answers SERVING to callers the gateway vouches for; records who each call came from."""

    def __init__(self, gateway: PeerCredGateway) -> None:
        self.gateway = gateway
        self.calls: list[tuple[str, str, PeerCredentials | None]] = []

    async def Check(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> health_pb2.HealthCheckResponse:
        creds = self.gateway.peer_credentials(context)
        self.calls.append((request.service, context.peer(), creds))
        if creds is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "unknown caller")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    def by_label(self, label: str) -> list[PeerCredentials | None]:
        return [creds for service, _, creds in self.calls if service == label]


@contextlib.asynccontextmanager
async def serving(
    directory: Path,
    public_mode: int = 0o660,
    limits: ListenerLimits | None = None,
    on_refusal: Callable[[str], None] | None = None,
) -> AsyncIterator[tuple[PeerCredGateway, RecordingHealth]]:
    gateway = PeerCredGateway(
        directory / "public.sock",
        directory / "private",
        public_mode=public_mode,
        limits=limits,
        on_refusal=on_refusal,
    )
    await gateway.start()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = RecordingHealth(gateway)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(gateway.internal_address)
    await server.start()
    try:
        yield gateway, servicer
    finally:
        await server.stop(None)
        await gateway.close()


# grpc shares connections between channels to the same target unless told not to.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


async def check(target: str, label: str) -> None:
    async with grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=label)
        )


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# A gRPC caller in its own process: drops to <uid>, connects, says "ready <pid>", waits for a
# line on stdin, makes <n> calls on the same channel, says "done". The channel is created
# before the drop (grpc imports modules lazily, from a directory <uid> cannot read) but
# connects only at the first call, after it.
CLIENT = textwrap.dedent(
    """
    import os, sys
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target, label, n, uid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        if uid != os.getuid():
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        assert os.getresuid() == (uid, uid, uid)
        stub.Check(health_pb2.HealthCheckRequest(service=label))
        print("ready", os.getpid(), flush=True)
        sys.stdin.readline()
        for _ in range(n):
            stub.Check(health_pb2.HealthCheckRequest(service=label))
    print("done", flush=True)
    """
)


async def start_client(
    directory: Path, label: str, n: int, uid: int
) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        f"unix:{directory / 'public.sock'}",
        label,
        str(n),
        str(uid),
        cwd=directory,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        assert line[:1] == ["ready"], line
    except BaseException:
        await stop(proc)
        raise
    return proc, int(line[1])


async def finish_client(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"done"
        assert await proc.wait() == 0
    finally:
        await stop(proc)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


# -- credentials -------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_in_process_caller_is_reported_with_its_pid_uid_gid(workdir: Path, loop: str) -> None:
    async def scenario() -> None:
        async with serving(workdir) as (gateway, servicer):
            await check(f"unix:{gateway.public_path}", "me")
        ((_, peer, creds),) = servicer.calls
        assert creds == PeerCredentials(
            pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), start_time=start_time_of(os.getpid())
        )
        assert peer.startswith(f"unix:{gateway.private_dir}/")

    run(scenario(), LOOPS[loop])


@needs_root
def test_caller_of_another_uid_is_reported_as_that_uid(workdir: Path) -> None:
    async def scenario() -> None:
        async with serving(workdir, public_mode=0o666) as (_, servicer):
            proc, pid = await start_client(workdir, "nobody", 3, NOBODY)
            started = start_time_of(pid)
            await finish_client(proc)
        creds = servicer.by_label("nobody")
        assert creds == [PeerCredentials(pid=pid, uid=NOBODY, gid=NOBODY, start_time=started)] * 4

    run(scenario())


@needs_root
def test_concurrent_connections_of_different_uids_each_see_their_own(workdir: Path) -> None:
    calls = 60

    async def scenario() -> None:
        async with serving(workdir, public_mode=0o666) as (gateway, servicer):
            nobody, nobody_pid = await start_client(workdir, "nobody", calls, NOBODY)
            try:
                root, root_pid = await start_client(workdir, "root", calls, 0)
                started = {pid: start_time_of(pid) for pid in (nobody_pid, root_pid)}
            except BaseException:
                await stop(nobody)
                raise
            async with grpc.aio.insecure_channel(
                f"unix:{gateway.public_path}", options=OWN_CONNECTION
            ) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                await stub.Check(health_pb2.HealthCheckRequest(service="here"))
                try:
                    assert gateway.connection_count == 3  # all three held open at once
                except BaseException:
                    await asyncio.gather(stop(nobody), stop(root))
                    raise

                async def here() -> None:
                    for _ in range(calls):
                        await stub.Check(health_pb2.HealthCheckRequest(service="here"))

                await asyncio.gather(finish_client(nobody), finish_client(root), here())

        expected = {
            "nobody": PeerCredentials(nobody_pid, NOBODY, NOBODY, started[nobody_pid]),
            "root": PeerCredentials(root_pid, 0, 0, started[root_pid]),
            "here": PeerCredentials(os.getpid(), 0, 0, start_time_of(os.getpid())),
        }
        for label, creds in expected.items():
            assert servicer.by_label(label) == [creds] * (calls + 1), label
        # each caller used one connection, and no two callers shared one
        peers = {label: {peer for s, peer, _ in servicer.calls if s == label} for label in expected}
        assert all(len(p) == 1 for p in peers.values())
        assert len(set.union(*peers.values())) == 3

    run(scenario())


@needs_root
def test_other_uid_cannot_reach_the_internal_socket(workdir: Path) -> None:
    probe = textwrap.dedent(
        """
        import os, socket, sys
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sys.argv[1])
        except PermissionError:
            print("denied")
        else:
            print("connected")
        """
    )

    async def scenario() -> None:
        async with serving(workdir, public_mode=0o666) as (gateway, _):
            assert stat.S_IMODE(os.stat(gateway.private_dir).st_mode) == 0o700
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                probe,
                str(gateway.internal_path),
                cwd=workdir,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            assert out.strip() == b"denied"

    run(scenario())


def test_mapping_is_removed_when_the_connection_closes(workdir: Path) -> None:
    async def scenario() -> None:
        async with serving(workdir) as (gateway, servicer):
            async with grpc.aio.insecure_channel(
                f"unix:{gateway.public_path}", options=OWN_CONNECTION
            ) as channel:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert gateway.connection_count == 1
            ((_, peer, creds),) = servicer.calls
            assert creds is not None
            await eventually(lambda: gateway.connection_count == 0)
            assert gateway.credentials_for(peer) is None
            assert sorted(os.listdir(gateway.private_dir)) == ["grpc.sock"]

    run(scenario())


def test_each_connection_gets_a_new_peer_path(workdir: Path) -> None:
    async def scenario() -> None:
        async with serving(workdir) as (gateway, servicer):
            for _ in range(3):
                await check(f"unix:{gateway.public_path}", "again")
        assert len({peer for _, peer, _ in servicer.calls}) == 3

    run(scenario())


def test_calls_not_made_through_the_gateway_are_unknown(workdir: Path) -> None:
    async def scenario() -> None:
        async with serving(workdir) as (gateway, servicer):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await check(gateway.internal_address, "direct")
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert servicer.by_label("direct") == [None]
            for peer in ("unix:", "ipv4:127.0.0.1:5000", f"unix:{gateway.private_dir}/p0-x"):
                assert gateway.credentials_for(peer) is None

    run(scenario())


# -- the start time that ties the pid to one process ---------------------------------------


STAT_TAIL = b"S 1 2 3 0 -1 4194560 5 0 0 0 6 7 0 0 20 0 1 0 987654 1000 200"


@pytest.mark.parametrize(
    "comm", [b"python", b"a b", b"a) R 1 (b", b"))", b"(", b"x) S 2 3 4 5 6 7 8 9 10 11"]
)
def test_stat_fields_are_found_after_the_last_parenthesis(comm: bytes) -> None:
    parsed = parse_process_stat(b"4242 (" + comm + b") " + STAT_TAIL + b"\n")
    assert parsed == ProcessStat(state="S", start_time=987654)


@pytest.mark.parametrize("raw", [b"", b"4242 python S 1", b"4242 (x) S 1 2 3", b"1 (x) S a b"])
def test_a_malformed_stat_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not a /proc/<pid>/stat line"):
        parse_process_stat(raw)


def test_start_time_is_recorded_for_a_caller_whose_name_has_spaces_and_parentheses(
    workdir: Path,
) -> None:
    odd_name = "x) R 1 (y z"
    renamed = textwrap.dedent(
        """
        import sys
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with open("/proc/self/comm", "w") as comm:
            comm.write(sys.argv[2])
        with grpc.insecure_channel(sys.argv[1]) as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="odd"))
            print("called", flush=True)
            sys.stdin.readline()
        """
    )

    async def scenario() -> None:
        async with serving(workdir) as (gateway, servicer):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                renamed,
                f"unix:{gateway.public_path}",
                odd_name,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert proc.stdout is not None
                assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"called\n"
                assert Path(f"/proc/{proc.pid}/comm").read_text() == odd_name + "\n"
                expected = PeerCredentials(proc.pid, 0, 0, start_time_of(proc.pid))
            finally:
                proc.kill()
                await proc.wait()
        assert servicer.by_label("odd") == [expected]

    run(scenario())


# A caller that connects and exits at once; whoever accepts later finds it gone.
CONNECT_AND_EXIT = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"


@pytest.fixture
def listener(workdir: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(workdir / "listen.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)
        sock.listen()
        yield sock, path


def test_caller_that_exited_before_accept_has_no_start_time(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    caller = subprocess.run([sys.executable, "-c", CONNECT_AND_EXIT, path], check=True)
    assert caller.returncode == 0
    conn, _ = sock.accept()
    with conn:
        creds = read_peer_credentials(conn)
    assert creds.uid == os.getuid()
    assert creds.start_time is None


def test_pid_reused_before_accept_is_not_taken_for_the_caller(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    caller = subprocess.Popen([sys.executable, "-c", CONNECT_AND_EXIT, path])
    assert caller.wait() == 0
    successor = spawn_with_pid(caller.pid, ["sleep", "60"])
    try:
        conn, _ = sock.accept()
        with conn:
            creds = read_peer_credentials(conn)
        assert creds.pid == caller.pid
        assert start_time_of(caller.pid) > 0  # the pid is alive again, but not as the caller
        assert creds.start_time is None
    finally:
        successor.kill()
        successor.wait()


# -- the public socket -------------------------------------------------------------------


def test_public_socket_mode_is_applied_and_removed_on_close(workdir: Path) -> None:
    async def scenario() -> None:
        async with serving(workdir, public_mode=0o666) as (gateway, _):
            st = os.stat(gateway.public_path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o666
        assert not gateway.public_path.exists()

    run(scenario())


def test_stale_public_socket_is_replaced(workdir: Path) -> None:
    path = workdir / "public.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # left behind by a process that died

    async def scenario() -> None:
        async with serving(workdir) as (gateway, servicer):
            await check(f"unix:{gateway.public_path}", "after-stale")
        assert servicer.by_label("after-stale")[0] is not None

    run(scenario())


def test_live_public_socket_is_not_taken_over(workdir: Path) -> None:
    async def scenario() -> None:
        async with serving(workdir) as (gateway, servicer):
            second = PeerCredGateway(gateway.public_path, workdir / "private2")
            with pytest.raises(GatewayError) as info:
                await second.start()
            assert (
                str(info.value)
                == f"{gateway.public_path} is in use: another process is serving on it"
            )
            await check(f"unix:{gateway.public_path}", "still-mine")
            assert servicer.by_label("still-mine")[0] is not None

    run(scenario())


def test_public_path_that_is_not_a_socket_is_left_alone(workdir: Path) -> None:
    path = workdir / "public.sock"
    path.write_text("precious")
    gateway = PeerCredGateway(path, workdir / "private")
    with pytest.raises(GatewayError, match="exists and is not a socket"):
        run(gateway.start())
    assert path.read_text() == "precious"


def test_private_dir_open_to_others_is_refused(workdir: Path) -> None:
    private = workdir / "private"
    private.mkdir(mode=0o755)
    private.chmod(0o755)
    gateway = PeerCredGateway(workdir / "public.sock", private)
    with pytest.raises(GatewayError, match="mode 0700"):
        run(gateway.start())
    assert not (workdir / "public.sock").exists()


def test_too_long_paths_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="too long"):
        PeerCredGateway("/tmp/" + "x" * 120, "/tmp/private")
    with pytest.raises(ValueError, match="too long"):
        PeerCredGateway("/tmp/p.sock", "/tmp/" + "x" * 80)


# -- splicing, with a plain byte server behind the gateway ---------------------------------


@contextlib.asynccontextmanager
async def gateway_to(
    directory: Path,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]],
) -> AsyncIterator[PeerCredGateway]:
    gateway = PeerCredGateway(directory / "public.sock", directory / "private")
    await gateway.start()
    server = await asyncio.start_unix_server(handler, path=str(gateway.internal_path))
    try:
        yield gateway
    finally:
        server.close()
        await gateway.close()
        await server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def only_this_task_left() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.parametrize("loop", LOOPS)
def test_large_transfer_with_half_close_round_trips(workdir: Path, loop: str) -> None:
    payload = os.urandom(8 * 1024 * 1024)

    async def scenario() -> None:
        async with gateway_to(workdir, echo) as gateway:
            reader, writer = await asyncio.open_unix_connection(str(gateway.public_path))

            async def send() -> None:
                for i in range(0, len(payload), 100_000):
                    writer.write(payload[i : i + 100_000])
                    await writer.drain()
                writer.write_eof()  # half-close: we still read the echo to the end

            _, received = await asyncio.gather(send(), reader.read())
            assert received == payload
            writer.close()
            await eventually(lambda: gateway.connection_count == 0)
        await eventually(only_this_task_left)

    run(scenario(), LOOPS[loop])


@pytest.mark.parametrize("loop", LOOPS)
def test_a_slow_reader_pushes_back_instead_of_filling_memory(workdir: Path, loop: str) -> None:
    total = 32 * 1024 * 1024
    release = asyncio.Event()
    received = 0

    async def slow_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await release.wait()
        while data := await reader.read(65536):
            received += len(data)
        writer.close()

    async def scenario() -> None:
        nonlocal release
        release = asyncio.Event()
        async with gateway_to(workdir, slow_sink) as gateway:
            _, writer = await asyncio.open_unix_connection(str(gateway.public_path))
            chunk = b"x" * 65536
            sent = 0

            async def send(limit: int) -> None:
                nonlocal sent
                while sent < limit:
                    writer.write(chunk)
                    sent += len(chunk)
                    await writer.drain()

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(send(total), 1.0)
            # Kernel buffers and the gateway's stream buffers hold a bounded amount.
            assert sent < 8 * 1024 * 1024
            release.set()
            await send(total)
            writer.write_eof()
            await eventually(lambda: received == total, timeout=30)
            writer.close()
            await eventually(lambda: gateway.connection_count == 0)

    run(scenario(), LOOPS[loop])


@pytest.mark.parametrize("loop", LOOPS)
def test_abrupt_client_close_ends_the_connection(workdir: Path, loop: str) -> None:
    async def scenario() -> None:
        async with gateway_to(workdir, echo) as gateway:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(gateway.public_path))
            client.sendall(b"unread echo will be pending" * 1000)
            await eventually(lambda: gateway.connection_count == 1)
            client.close()  # with unread data: the gateway sees a reset
            await eventually(lambda: gateway.connection_count == 0)
            assert sorted(os.listdir(gateway.private_dir)) == ["grpc.sock"]
        await eventually(only_this_task_left)

    run(scenario(), LOOPS[loop])


@pytest.mark.parametrize("loop", LOOPS)
def test_close_drops_open_connections_without_leaking_tasks(workdir: Path, loop: str) -> None:
    async def scenario() -> None:
        async with gateway_to(workdir, echo) as gateway:
            reader, writer = await asyncio.open_unix_connection(str(gateway.public_path))
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            await gateway.close()
            assert gateway.connection_count == 0
            assert await reader.read() == b""
            assert not gateway.public_path.exists()
            writer.close()
        await eventually(only_this_task_left)

    run(scenario(), LOOPS[loop])


def test_connection_is_closed_when_the_internal_server_is_down(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        gateway = PeerCredGateway(workdir / "public.sock", workdir / "private")
        async with gateway:
            reader, writer = await asyncio.open_unix_connection(str(gateway.public_path))
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert gateway.connection_count == 0
            assert os.listdir(gateway.private_dir) == []

    run(scenario())
    assert any("cannot reach" in r.getMessage() for r in caplog.records)


# -- limits ------------------------------------------------------------------------------


async def read_until_closed(path: Path, sock: socket.socket) -> bytes:
    """Everything the gateway sends on ``sock`` until it closes the connection."""
    loop = asyncio.get_running_loop()
    received = b""
    async with asyncio.timeout(10):
        while chunk := await loop.sock_recv(sock, 65536):
            received += chunk
    return received


async def raw_connection(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, str(path))
    return sock


def test_connections_beyond_max_connections_are_closed_and_counted(workdir: Path) -> None:
    refusals: list[str] = []

    async def scenario() -> None:
        limits = ListenerLimits(max_connections=2)
        async with serving(workdir, limits=limits, on_refusal=refusals.append) as (
            gateway,
            servicer,
        ):
            held = await raw_connection(gateway.public_path)
            try:
                await eventually(lambda: gateway.connection_count == 1)
                # One more is within the cap and is served; the third is closed at once.
                async with grpc.aio.insecure_channel(
                    f"unix:{gateway.public_path}", options=OWN_CONNECTION
                ) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    await stub.Check(health_pb2.HealthCheckRequest(service="within"))
                    extra = await raw_connection(gateway.public_path)
                    with contextlib.closing(extra):
                        assert await read_until_closed(gateway.public_path, extra) == b""
                    assert refusals == ["max_connections"]
                    await stub.Check(health_pb2.HealthCheckRequest(service="still-served"))
            finally:
                held.close()
            # Below the cap again: a new connection is served.
            await eventually(lambda: gateway.connection_count == 0)
            await check(f"unix:{gateway.public_path}", "after")
            assert [label for label, _, _ in servicer.calls] == ["within", "still-served", "after"]

    run(scenario())


def test_connection_that_moves_no_byte_for_idle_timeout_is_closed_and_counted(
    workdir: Path,
) -> None:
    refusals: list[str] = []

    async def scenario() -> None:
        limits = ListenerLimits(idle_timeout=0.5)
        async with serving(workdir, limits=limits, on_refusal=refusals.append) as (
            gateway,
            _,
        ):
            idle = await raw_connection(gateway.public_path)
            with contextlib.closing(idle):
                await read_until_closed(gateway.public_path, idle)
            await eventually(lambda: gateway.connection_count == 0)
            assert refusals == ["idle_timeout"]

    run(scenario())

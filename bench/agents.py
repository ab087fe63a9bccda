"""SVID issuance and rotation on a single node against through two agents, in one run:
SVIDs per second and server CPU per SVID, then the time for every workload's SVID to rotate.

Run on purpose, never as a timed test:

    python bench/agents.py [--svids 1000] [--rounds 3]

Single node: ``authd run`` with the Workload API on; ``--svids`` entries match this
process's uid, and one FetchX509SVID makes the daemon sign them all (keys made by the server).
Through agents: ``authd run`` with the node API; half the entries are parented to each of
two node aliases, then two ``authd agent run`` processes (``sync_interval = 1``) attest by
join token, and in their first round make the keys and have the server sign the CSRs.
Issuance: the time is the longer of the two agents' rounds (each logs ``N SVIDs signed in
T s``; they run side by side); single node, from the request to the response. The CPU is the
server process's (utime + stime from /proc): single node over the request, through agents
from before the agents start to both done (so it includes the two attestations).

Rotation: with one FetchX509SVID stream open on each workload socket (the server's, or each
agent's: it carries every SVID that socket serves), a new X.509 authority is prepared (through
agents: until it is in the bundle both agents serve, as README says), activated, and the old
one tainted, which makes every SVID due at once. The time runs from the taint call until every
stream has delivered a message whose SVIDs are all signed by the new authority; through agents
it includes the wait for their next sync (up to one ``sync_interval``), and the agents' own
signing round is shown apart. The server's CPU is over the same span.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.api.spiffe.workload import workload_pb2, workload_pb2_grpc

TD = "spiffe://example.org"
ME = os.getuid()
AUTHD = [sys.executable, "-m", "authd"]
HEADER = (("workload.spiffe.io", "true"),)


@dataclass(frozen=True, slots=True)
class Figures:
    issue_s: float  # the time to issue every SVID
    issue_cpu: float  # the server's CPU seconds meanwhile
    rotate_s: float  # from the taint to every SVID re-issued and delivered
    rotate_cpu: float
    signing_s: float  # of rotate_s, the agents' signing round (single node: all of it)


def leaf_der(chain: bytes) -> bytes:
    """The leaf of a concatenated-DER chain (the Workload API's x509_svid), unparsed."""
    length = chain[1]
    if length < 0x80:
        return chain[: 2 + length]
    count = length & 0x7F
    return chain[: 2 + count + int.from_bytes(chain[2 : 2 + count], "big")]


class Watch:
    """One FetchX509SVID stream, read in a thread: when each message came, and the message.

    A leaf signed by authority K carries K's key ID (its authority key identifier), and a
    bundle holding K carries it as K's subject key identifier: a 20-byte search suffices."""

    def __init__(self, socket: Path) -> None:
        self.started = time.monotonic()
        self._channel = grpc.insecure_channel(f"unix://{socket}")
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(self._channel)
        self._call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
        self.messages: list[tuple[float, workload_pb2.X509SVIDResponse]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._call:
                self.messages.append((time.monotonic(), message))
        except grpc.RpcError:
            return  # cancelled at close, or the daemon went away

    def first(self, since: float, good) -> float | None:  # type: ignore[no-untyped-def]
        for arrived, message in list(self.messages):
            if arrived >= since and good(message):
                return arrived
        return None

    def all_signed_by(self, key_id: bytes, count: int, since: float) -> float | None:
        return self.first(
            since,
            lambda m: (
                len(m.svids) == count and all(key_id in leaf_der(s.x509_svid) for s in m.svids)
            ),
        )

    def bundle_has(self, key_id: bytes) -> bool:
        return self.first(0.0, lambda m: bool(m.svids) and key_id in m.svids[0].bundle) is not None

    def close(self) -> None:
        self._call.cancel()
        self._channel.close()
        self._thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait(what: str, probe, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"gave up waiting for {what}")


def start_server(workdir: Path, *, agents: bool) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    ports = {"attest": f"127.0.0.1:{free_port()}", "node": f"127.0.0.1:{free_port()}"}
    text = '[authz]\ngrpc_address = ""\nhttp_address = ""\nmetrics_address = ""\n'
    text += '[ca]\nrotation_check_interval = "1h"\n'
    if agents:
        text += "[workload]\nenabled = false\n"
        text += f'[agent]\nattestation_address = "{ports["attest"]}"\n'
        text += f'node_api_address = "{ports["node"]}"\n'
    (workdir / "authd.toml").write_text(text)
    data = workdir / "d"
    process = subprocess.Popen(
        [*AUTHD, "run", "--data-dir", str(data), "--config", str(workdir / "authd.toml")],
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "server.log", "wb"),  # noqa: SIM115
    )
    wait(
        "authd run",
        lambda: (
            subprocess.run(
                [*AUTHD, "healthcheck", "--quiet", "--data-dir", str(data)], capture_output=True
            ).returncode
            == 0
        ),
    )
    return process, ports


def admin(workdir: Path) -> admin_pb2_grpc.AdminStub:
    channel = grpc.insecure_channel(f"unix://{workdir / 'd' / 'admin.sock'}")
    return admin_pb2_grpc.AdminStub(channel)


def create_entries(stub: admin_pb2_grpc.AdminStub, count: int, parents: list[str]) -> None:
    for n in range(count):
        entry = admin_pb2.Entry(
            spiffe_id=f"{TD}/svc/{n}",
            selectors=[admin_pb2.Selector(type="unix", value=f"uid:{ME}")],
        )
        if parents:
            entry.parent_id = parents[n % len(parents)]
        stub.CreateEntry(admin_pb2.CreateEntryRequest(entry=entry))


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def rotate(
    stub: admin_pb2_grpc.AdminStub, server: int, watches: list[tuple[Watch, int]], *, agents: bool
) -> tuple[float, float]:
    """Prepare, activate, taint the old X.509 authority; seconds from the taint until every
    watched stream has all its SVIDs from the new one, and the server's CPU meanwhile."""
    authorities = stub.ShowCA(admin_pb2.ShowCARequest()).authorities
    old = next(a.authority_id for a in authorities if a.kind == "x509" and a.state == "active")
    prepared = stub.PrepareAuthority(admin_pb2.PrepareAuthorityRequest(kind="x509"))
    new = bytes.fromhex(prepared.authority.authority_id)
    if agents:  # activate only once every agent trusts it (README, "Agents")
        wait("the new authority at the agents", lambda: all(w.bundle_has(new) for w, _ in watches))
    stub.ActivateAuthority(admin_pb2.ActivateAuthorityRequest(kind="x509"))
    cpu, started = cpu_seconds(server), time.monotonic()
    stub.TaintAuthority(admin_pb2.TaintAuthorityRequest(kind="x509", authority_id=old))

    def arrivals() -> list[float] | None:
        times = [w.all_signed_by(new, count, started) for w, count in watches]
        return None if None in times else [t for t in times if t is not None]

    done = wait("every SVID from the new authority", arrivals)
    cpu = cpu_seconds(server) - cpu
    return max(done) - started, cpu


def single_node(workdir: Path, count: int) -> Figures:
    server, _ = start_server(workdir, agents=False)
    watch = None
    try:
        stub = admin(workdir)
        create_entries(stub, count, [])
        cpu = cpu_seconds(server.pid)
        watch = Watch(workdir / "d" / "workload.sock")
        first = wait("the first SVIDs", lambda: watch.first(0.0, lambda m: len(m.svids) == count))
        issue_s, issue_cpu = first - watch.started, cpu_seconds(server.pid) - cpu
        rotate_s, rotate_cpu = rotate(stub, server.pid, [(watch, count)], agents=False)
        return Figures(issue_s, issue_cpu, rotate_s, rotate_cpu, rotate_s)
    finally:
        if watch is not None:
            watch.close()
        stop(server)


def agent_metric(address: str, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return -1.0
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1.0


def signing_times(log: Path) -> list[float]:
    """The seconds of each of the agent's signing rounds, from its log lines."""
    times = [
        float(line.rsplit(" in ", 1)[1].split()[0])
        for line in log.read_text().splitlines()
        if " SVIDs signed in " in line
    ]
    if not times:
        raise SystemExit(f"no signing round in {log}")
    return times


def through_agents(workdir: Path, count: int) -> Figures:
    server, ports = start_server(workdir, agents=True)
    stub = admin(workdir)
    agents: list[tuple[subprocess.Popen[bytes], str]] = []
    watches: list[tuple[Watch, int]] = []
    try:
        create_entries(stub, count, [f"{TD}/node/a", f"{TD}/node/b"])
        cpu = cpu_seconds(server.pid)
        for node in ("a", "b"):
            token = stub.CreateJoinToken(
                admin_pb2.CreateJoinTokenRequest(spiffe_id=f"{TD}/node/{node}")
            ).token
            directory = workdir / node
            directory.mkdir()
            metrics = f"127.0.0.1:{free_port()}"
            (directory / "agent.toml").write_text(
                f'[workload]\nsocket_path = "{directory / "w.sock"}"\n'
                f'[agent]\nattestation_address = "{ports["attest"]}"\n'
                f'node_api_address = "{ports["node"]}"\ninsecure_bootstrap = true\n'
                f'join_token = "{token}"\nsync_interval = 1\nmetrics_address = "{metrics}"\n'
            )
            process = subprocess.Popen(
                [*AUTHD, "agent", "run", "--config", str(directory / "agent.toml"),
                 "--data-dir", str(directory / "d")],
                stdout=subprocess.DEVNULL, stderr=open(directory / "agent.log", "wb"),  # noqa: SIM115
            )  # fmt: skip
            agents.append((process, metrics))
        shares = [(count + 1) // 2, count // 2]  # entry n goes to node n % 2
        for (_, metrics), share in zip(agents, shares, strict=True):
            wait(
                "every SVID at the agents",
                lambda m=metrics, s=share: agent_metric(m, "authd_agent_cached_svids") >= s,
            )
        issue_cpu = cpu_seconds(server.pid) - cpu
        logs = [workdir / node / "agent.log" for node in ("a", "b")]
        issue_s = max(signing_times(log)[0] for log in logs)
        for node, share in zip(("a", "b"), shares, strict=True):
            watch = Watch(workdir / node / "w.sock")
            watches.append((watch, share))
            wait(
                "an agent's SVIDs",
                lambda w=watch, s=share: w.first(0.0, lambda m: len(m.svids) == s),
            )
        rotate_s, rotate_cpu = rotate(stub, server.pid, watches, agents=True)
        wait(
            "the agents' second signing rounds",
            lambda: all(len(signing_times(g)) > 1 for g in logs),
        )
        signing_s = max(sum(signing_times(log)[1:]) for log in logs)
        return Figures(issue_s, issue_cpu, rotate_s, rotate_cpu, signing_s)
    finally:
        for watch, _ in watches:
            watch.close()
        for process, _ in agents:
            stop(process)
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--svids", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[Figures]] = {"single node": [], "2 agents": []}
    for _ in range(args.rounds):
        for name, run in (("single node", single_node), ("2 agents", through_agents)):
            workdir = Path(tempfile.mkdtemp(prefix="authd-bag-"))
            try:
                results[name].append(run(workdir, args.svids))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    n = args.svids
    print(f"issuance: {n} X.509-SVIDs, best of {args.rounds} rounds")
    print(f"{'path':<12} {'SVIDs/s':>9} {'ratio':>7} {'server CPU ms/SVID':>19}")
    base = 0.0
    for name, runs in results.items():
        rate = n / min(f.issue_s for f in runs)
        base = base or rate
        cpu = min(f.issue_cpu for f in runs)
        print(f"{name:<12} {rate:>9.0f} {rate / base:>7.2f} {1000 * cpu / n:>19.2f}")
    print()
    print(f"rotation: {n} workloads' SVIDs, old authority tainted -> all re-issued and delivered,")
    print(f"best of {args.rounds} rounds (agents: sync_interval = 1 s)")
    print(
        f"{'path':<12} {'all rotated s':>14} {'ratio':>7} {'worst s':>8} {'signing s':>10} "
        f"{'server CPU ms':>14} {'ms/SVID':>8} {'ratio':>7}"
    )
    base_s = base_cpu = 0.0
    for name, runs in results.items():
        took, worst = min(f.rotate_s for f in runs), max(f.rotate_s for f in runs)
        signing = min(f.signing_s for f in runs)
        cpu = min(f.rotate_cpu for f in runs)
        base_s, base_cpu = base_s or took, base_cpu or cpu
        print(
            f"{name:<12} {took:>14.2f} {took / base_s:>7.2f} {worst:>8.2f} {signing:>10.2f} "
            f"{1000 * cpu:>14.0f} {1000 * cpu / n:>8.2f} {cpu / base_cpu:>7.2f}"
        )


if __name__ == "__main__":
    main()

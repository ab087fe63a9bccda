"""SVID issuance on a single node against through two agents: SVIDs per second, server CPU
per SVID, in one run.

Run on purpose, never as a timed test:

    python bench/agents.py [--svids 400] [--rounds 3]

Single node: ``authd run`` with the Workload API on; ``--svids`` entries match this
process's uid, and one FetchX509SVID makes the daemon sign them all (keys made by the server).
Through agents: ``authd run`` with the node API; half the entries are parented to each of
two node aliases, then two ``authd agent run`` processes attest by join token, and in their
first round make the keys and have the server sign the CSRs. The time is the longer of the
two agents' rounds (each logs ``N SVIDs signed in T s``; they run side by side); single node,
from the request to the response. The CPU is the server process's (utime + stime from /proc):
single node over the request, through agents from before the agents start to both done (so
it includes the two attestations).
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
import time
import urllib.request
from pathlib import Path

import grpc

from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.api.spiffe.workload import workload_pb2, workload_pb2_grpc

TD = "spiffe://example.org"
ME = os.getuid()
AUTHD = [sys.executable, "-m", "authd"]


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


def single_node(workdir: Path, count: int) -> tuple[float, float]:
    server, _ = start_server(workdir, agents=False)
    try:
        create_entries(admin(workdir), count, [])
        channel = grpc.insecure_channel(f"unix://{workdir / 'd' / 'workload.sock'}")
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        cpu, start = cpu_seconds(server.pid), time.monotonic()
        stream = stub.FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=(("workload.spiffe.io", "true"),)
        )
        first = next(iter(stream))
        elapsed = time.monotonic() - start
        assert len(first.svids) == count, len(first.svids)
        stream.cancel()
        channel.close()
        return elapsed, cpu_seconds(server.pid) - cpu
    finally:
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


def signing_time(log: Path) -> float:
    """The seconds of the agent's first signing round, from its log line."""
    for line in log.read_text().splitlines():
        if " SVIDs signed in " in line:
            return float(line.rsplit(" in ", 1)[1].split()[0])
    raise SystemExit(f"no signing round in {log}")


def through_agents(workdir: Path, count: int) -> tuple[float, float]:
    server, ports = start_server(workdir, agents=True)
    stub = admin(workdir)
    agents: list[tuple[subprocess.Popen[bytes], str]] = []
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
        for _, metrics in agents:
            wait(
                "every SVID at the agents",
                lambda m=metrics: agent_metric(m, "authd_agent_cached_svids") >= count // 2,
            )
        cpu = cpu_seconds(server.pid) - cpu
        rounds = [signing_time(workdir / node / "agent.log") for node in ("a", "b")]
        return max(rounds), cpu
    finally:
        for process, _ in agents:
            stop(process)
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--svids", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"single node": [], "2 agents": []}
    for _ in range(args.rounds):
        for name, run in (("single node", single_node), ("2 agents", through_agents)):
            workdir = Path(tempfile.mkdtemp(prefix="authd-bag-"))
            try:
                results[name].append(run(workdir, args.svids))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    base_rate = None
    print(f"{args.svids} X.509-SVIDs, best of {args.rounds} rounds")
    print(f"{'path':<12} {'SVIDs/s':>9} {'ratio':>7} {'server CPU ms/SVID':>19}")
    for name, runs in results.items():
        elapsed = min(e for e, _ in runs)
        cpu = min(c for _, c in runs)
        rate = args.svids / elapsed
        base_rate = base_rate or rate
        print(f"{name:<12} {rate:>9.0f} {rate / base_rate:>7.2f} {1000 * cpu / args.svids:>19.2f}")


if __name__ == "__main__":
    main()

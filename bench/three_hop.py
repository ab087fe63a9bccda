"""gateway → orders → payments with authd's ext_authz at every hop, against the same chain
with no authz, in one run (the topology `authd demo` runs, from deploy/local).

Run on purpose, never as a timed test (it installs h2load with apt-get if it is missing):

    python bench/three_hop.py                      # http, grpc and none; 3 rounds of 4 s
    python bench/three_hop.py --mode http --rounds 5 --seconds 6

Three topologies run side by side, each its own authd, local IdP, orders and payments
services (Python, stdlib) and three Envoys (--concurrency 1) with SVIDs over SDS: ext_authz
in HTTP service mode at every Envoy (`http`), gRPC (`grpc`), or no authz filter (`none`,
the baseline: same Envoys, same mTLS, same services). h2load (8 connections, h2c) calls the
front door with a user's JWT from the local IdP; each request is checked three times: at the
gateway (verifying the JWT and minting a Txn-Token), at orders (verifying the Txn-Token and
the mTLS peer, re-minting it narrowed to `pay`) and at payments (verifying it again). Runs
alternate with the baseline (none, X, none, X, ..., none) and each X run is divided by the
mean of the two none runs around it, since the machine's speed drifts. Columns: req/s
(median of the runs), ratio to none (median), p50/p99 over all requests of the runs, authd's
CPU per request (three checks) and per check, and the non-200 answers (must be 0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from extauthz import Load, cpu_seconds, ensure_h2load, h2load  # noqa: E402

from authd.demo.calls import call, user_token  # noqa: E402
from authd.demo.processes import alive  # noqa: E402
from authd.demo.topology import Layout, Ports, Topology, free_port  # noqa: E402

MODES = ("http", "grpc")
CONNECTIONS = 8
PATH = "/orders/42"
SCOPE = "orders:read pay"  # what deploy/local/policy.yaml's payments hop wants


@contextmanager
def topology(tmp: Path, mode: str) -> Iterator[Topology]:
    ports = Ports(*(free_port() for _ in fields(Ports)))
    layout = Layout(state_dir=tmp / mode, ports=ports, authz=mode)
    chain = Topology(layout, say=lambda _: None)
    try:
        chain.up()
        yield chain
    finally:
        chain.down()


def authd_pid(chain: Topology) -> int:
    return next(p.pid for p in chain.table.started if p.name == "authd" and alive(p))


@dataclass
class Row:
    mode: str
    loads: list[Load]
    ratios: list[float]
    authd_cpu_s: float

    @property
    def rps(self) -> float:
        return statistics.median(load.rps for load in self.loads)

    @property
    def requests(self) -> int:
        return sum(load.requests for load in self.loads)

    @property
    def failed(self) -> int:
        return sum(load.requests - load.ok for load in self.loads)

    def latency(self) -> tuple[float, float]:
        cuts = statistics.quantiles(
            [m for load in self.loads for m in load.micros], n=100, method="inclusive"
        )
        return cuts[49] / 1000, cuts[98] / 1000


def measure(
    h2load_bin: str, chains: dict[str, Topology], token: dict[str, str], args: argparse.Namespace
) -> list[Row]:
    logs = Path(tempfile.mkdtemp(prefix="three-hop-"))
    counter = iter(range(1 << 20))

    def run(mode: str) -> Load:
        chain = chains[mode]
        url = f"http://127.0.0.1:{chain.layout.ports.front_door}{PATH}"
        return h2load(
            h2load_bin,
            url,
            connections=CONNECTIONS,
            seconds=args.seconds,
            headers={"authorization": f"Bearer {token[mode]}"},
            log_file=logs / f"{mode}-{next(counter)}.log",
        )

    rows: dict[str, Row] = {m: Row(m, [], [], 0.0) for m in ("none", *args.mode)}
    try:
        for _ in range(args.rounds):
            for mode in args.mode:
                before = run("none")
                cpu = cpu_seconds(authd_pid(chains[mode]))
                load = run(mode)
                rows[mode].authd_cpu_s += cpu_seconds(authd_pid(chains[mode])) - cpu
                after = run("none")
                rows["none"].loads += [before, after]
                rows[mode].loads.append(load)
                rows[mode].ratios.append(load.rps / ((before.rps + after.rps) / 2))
                print(
                    f"  {mode}: {load.rps:8.0f} req/s; none around it: "
                    f"{before.rps:.0f}, {after.rps:.0f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    return list(rows.values())


def table(rows: list[Row], cores: int) -> str:
    lines = [
        "| ext_authz at each hop | req/s | ratio to none | p50 ms | p99 ms "
        "| authd CPU µs/request | µs/check | non-200 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p50, p99 = row.latency()
        if row.mode == "none":
            ratio, per_request, per_check = "1", "-", "-"
        else:
            ratio = f"{statistics.median(row.ratios):.2f}"
            # CPU is counted over whole runs, warm-up included; requests only after it.
            micros = row.authd_cpu_s * 1e6 / max(row.requests, 1)
            per_request, per_check = f"{micros:.0f}", f"{micros / 3:.0f}"
        lines.append(
            f"| {row.mode} | {row.rps:.0f} | {ratio} | {p50:.2f} | {p99:.2f} "
            f"| {per_request} | {per_check} | {row.failed} |"
        )
    lines.append(f"\n{cores} cores; h2load -c {CONNECTIONS} -m 1; Envoys --concurrency 1")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", action="append", choices=MODES, help="default: both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    args.mode = args.mode or list(MODES)
    h2load_bin = ensure_h2load()
    tmp = Path(tempfile.mkdtemp(prefix="authd-3hop-"))
    try:
        with ExitStack() as stack:
            chains = {m: stack.enter_context(topology(tmp, m)) for m in ("none", *args.mode)}
            token = {
                m: user_token(c.layout.ports.idp, "alice", scope=SCOPE) for m, c in chains.items()
            }
            for mode, chain in chains.items():
                reply = call(
                    chain.layout.ports.front_door, PATH, {"authorization": f"Bearer {token[mode]}"}
                )
                if reply.status != 200:
                    sys.exit(f"{mode}: the chain answers {reply.status}: {reply.body[:200]!r}")
            print(f"three topologies up; {args.rounds} rounds of {args.seconds:g} s runs")
            rows = measure(h2load_bin, chains, token, args)
        print()
        print(table(rows, os.cpu_count() or 0))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""A cheap-policy caller's Check latency while another caller's Rego policy burns ~50 ms.

Run on purpose, never as a timed test:

    python bench/slow_policy.py [--seconds N] [--slow-ms 50]

One authd per row (``policy_engine = "rego"``, native gRPC engine), asked directly over
ext_authz gRPC by this process: a *cheap* caller sends Checks one after the other on one
channel (``GET /cheap``, a rule decided in microseconds), and, in the loaded rows, a *slow*
caller on another channel sends Checks whose rule takes rego-cpp about ``--slow-ms`` (each
with a new query value, so the decision cache never answers it). Rows:

    inline       both callers, rego_workers = 0: every evaluation on the event loop (once)
    alone        the cheap caller alone (rego_workers = 4)
    beside       the cheap caller and a *paced* caller making as many checks as the slow
                 one does (one per --slow-ms), each a new input decided in microseconds,
                 also on the worker threads: the baseline (another caller, no slow policy)
    off-loop     both callers, rego_workers = 4: the slow policy's evaluations on the
                 worker threads, kept on their own CPUs (rego_worker_cpus = "auto")
    unpinned     the same, with the worker threads free to run on any CPU
                 (rego_worker_cpus = "all"): how authd ran before the workers were pinned

``--rounds`` rounds of alone, beside, off-loop and unpinned rows (and a last alone and
beside row close), and each off-loop and unpinned row's p99 is divided by the mean of the
two beside (and alone) rows around it: the machine's load moves between rows, and a ratio
of neighbours is what can be compared.

For the cheap caller: Checks done, p50, p99 and max latency (ms); for the slow caller:
Checks done. One slow Check is sent before measuring, so the off-loop row measures the
steady state (the first slow evaluation is the one that takes the policy off the loop).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc  # noqa: E402

from authd.policy.rego import RegoPolicy  # noqa: E402
from tests.support.envoy import HOST, authd_config, start_authd  # noqa: E402

POLICY = """\
package envoy.authz

import rego.v1

default allow := false

allow if input.parsed_path[0] == "cheap"

allow if input.parsed_path[0] == "paced"

allow if {{
	input.parsed_path[0] == "slow"
	n := to_number(input.parsed_query.n[0])
	count([x | some x in numbers.range(1, {size}); (x + n) % 7 == 0]) > 0
}}
"""


def calibrate(slow_ms: float) -> int:
    """The range size that makes the slow rule take about ``slow_ms`` here."""
    size = 2000
    while True:
        policy = RegoPolicy.from_sources({"p.rego": POLICY.format(size=size)})
        started = time.perf_counter()
        for n in range(3):
            policy.evaluate_document({"parsed_path": ["slow"], "parsed_query": {"n": [str(n)]}})
        took = (time.perf_counter() - started) / 3 * 1000
        if took >= slow_ms * 0.8 or size > 10_000_000:
            return int(size * slow_ms / took)
        size *= 2


def check_request(path: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "GET", path, "bench"
    return request


async def caller(
    port: int,
    path: str,
    stop: float,
    latencies: list[float],
    vary: bool = False,
    pace: float = 0.0,
) -> None:
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
        n = 0
        while time.perf_counter() < stop:
            n += 1
            target = f"{path}?n={n}" if vary else path
            started = time.perf_counter()
            answer = await check(check_request(target), timeout=30)
            latencies.append(time.perf_counter() - started)
            assert answer.status.code == 0, answer
            if pace:
                await asyncio.sleep(pace)


async def measure(port: int, seconds: float, second: str, pace: float) -> tuple[list[float], int]:
    # One slow check first: it takes an off-loop policy off the loop.
    await caller(port, "/slow", time.perf_counter() + 0.001, [], vary=True)
    cheap: list[float] = []
    slow: list[float] = []
    stop = time.perf_counter() + seconds
    tasks = [caller(port, "/cheap", stop, cheap)]
    if second == "slow":
        tasks.append(caller(port, "/slow", stop, slow, vary=True))
    elif second == "paced":
        # As many checks as the slow caller makes, each a new input, each cheap.
        tasks.append(caller(port, "/paced", stop, slow, vary=True, pace=pace))
    await asyncio.gather(*tasks)
    return cheap, len(slow)


def run_row(
    tmp: Path, name: str, workers: int, size: int, seconds: float, second: str, pace: float
) -> tuple[str, float]:
    cpus = "all" if name == "unpinned" else "auto"
    extra = f'rego_files = ["authz.rego"]\nrego_workers = {workers}\nrego_worker_cpus = "{cpus}"'
    config = authd_config(decision_log="", extra=extra)
    config = config.replace('policy_engine = "rules"', 'policy_engine = "rego"')
    config = config.replace('policy_file = "policy.yaml"\n', "").replace('decision_log = ""\n', "")
    authd = start_authd(tmp / name, config, files={"authz.rego": POLICY.format(size=size)})
    try:
        cheap, slow_done = asyncio.run(measure(authd.grpc_port, seconds, second, pace))
    finally:
        authd.stop()
    cuts = statistics.quantiles(cheap, n=100, method="inclusive")
    ms = [cuts[49] * 1000, cuts[98] * 1000, max(cheap) * 1000]
    line = (
        f"{name:<10} {workers:>7} {len(cheap):>11} {ms[0]:>8.2f} {ms[1]:>8.2f} {ms[2]:>8.2f}"
        f" {slow_done if second else '-':>10} {os.getloadavg()[0]:>5.2f}"
    )
    return line, ms[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="per row")
    parser.add_argument("--slow-ms", type=float, default=50, help="the slow rule's cost")
    parser.add_argument("--rounds", type=int, default=3, help="alone and off-loop rows, alternated")
    args = parser.parse_args()
    size = calibrate(args.slow_ms)
    print(f"slow rule: numbers.range(1, {size}) (about {args.slow_ms:g} ms here)")
    tmp = Path(tempfile.mkdtemp(prefix="authd-slow-"))
    pace = args.slow_ms / 1000
    plan = [("inline", 0, "slow")]
    for _ in range(args.rounds):
        plan += [("alone", 4, ""), ("beside", 4, "paced")]
        plan += [("off-loop", 4, "slow"), ("unpinned", 4, "slow")]
    plan += [("alone", 4, ""), ("beside", 4, "paced")]
    rows: list[str] = []
    p99: dict[str, list[float]] = {}
    try:
        for name, workers, second in plan:
            line, row_p99 = run_row(tmp, name, workers, size, args.seconds, second, pace)
            rows.append(line)
            p99.setdefault(name, []).append(row_p99)
            print(line, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("row        workers cheap done  p50 ms   p99 ms   max ms    2nd done  load")
    print("\n".join(rows))
    # Each loaded row against the mean of the rows of the same kind around it (this
    # machine is shared: its load moves between rows).
    for loaded in ("off-loop", "unpinned"):
        off = p99[loaded]
        for baseline in ("beside", "alone"):
            around = p99[baseline]
            ratios = [off[i] / ((around[i] + around[i + 1]) / 2) for i in range(len(off))]
            print(
                f"cheap caller's p99, {loaded} / {baseline} around it: "
                f"{' '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})"
            )


if __name__ == "__main__":
    main()

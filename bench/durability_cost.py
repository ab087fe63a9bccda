"""What each ``store.durability`` level costs a revocation, through the admin API.

For every backend and level, one ``authd run`` (workload API off) on a fresh store:
``--durability-revocations`` ``Revoke`` RPCs one after another (acknowledgement latency: the
RPC round trip ``authd revoke`` waits for), then as many again from 8 threads at once
(revocations/s). Ratios are against ``none`` on the same backend, which is what authd did
before ``store.durability`` existed (SQLite ``synchronous=NORMAL``; Redis without AOF or WAIT).

Run through ``bench/revocation.py`` (``--durability-only`` for this table alone).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.support.envoy import authd_config, start_authd
from tests.support.redis_server import RedisServer

TD = "spiffe://example.org"
THREADS = 8
POLICY = "version: 1\nrule_sets:\n  default:\n    rules: []\n"
# (backend, level, what it means on that backend)
LEVELS = (
    ("sqlite", "none", "synchronous=NORMAL (before store.durability)"),
    ("sqlite", "local", "synchronous=FULL"),
    ("redis", "none", "no AOF, no WAIT (before store.durability)"),
    ("redis", "local", "AOF, appendfsync always"),
    ("redis", "replicas", "AOF always + WAIT 1 (one replica)"),
)


@dataclass
class Cost:
    backend: str
    level: str
    meaning: str
    p50_ms: float
    p99_ms: float
    per_second: float


@contextmanager
def store_for(tmp: Path, backend: str, level: str) -> Iterator[str]:
    """The ``[store]`` table for ``backend`` at ``level``, with its servers running."""
    with ExitStack() as stack:
        if backend == "sqlite":
            yield f'[store]\ndurability = "{level}"\n'
            return
        master = stack.enter_context(
            RedisServer(tmp / f"redis-{level}", appendonly=level != "none")
        )
        if level == "replicas":
            assert master.port is not None
            stack.enter_context(RedisServer(tmp / "replica", replica_of=master.port))
            master.wait_for_replicas(1)
        yield f'[store]\nurl = "{master.url}"\ndurability = "{level}"\n'


def measure(tmp: Path, backend: str, level: str, meaning: str, count: int) -> Cost:
    with store_for(tmp, backend, level) as store:
        config = authd_config(http_path_prefix="", decision_log="")
        config = config.replace('decision_log = ""\n', "")
        config += f"\n{store}\n[workload]\nenabled = false\n"
        data_dir = tmp / f"authd-{backend}-{level}"
        authd = start_authd(data_dir, config, files={"policy.yaml": POLICY})
        channel = grpc.insecure_channel(f"unix:{data_dir / 'admin.sock'}")
        try:
            admin = admin_pb2_grpc.AdminStub(channel)

            def revoke(n: int) -> float:
                request = admin_pb2.RevokeRequest(
                    kind="spiffe_id", target=f"{TD}/bench/{n}", reason="key-compromise"
                )
                began = time.perf_counter()
                admin.Revoke(request, timeout=30)
                return time.perf_counter() - began

            latencies = [revoke(n) for n in range(count)]
            began = time.perf_counter()
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(revoke, range(count, 2 * count)))
            per_second = count / (time.perf_counter() - began)
        finally:
            channel.close()
            authd.stop()
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Cost(backend, level, meaning, cuts[49] * 1000, cuts[98] * 1000, per_second)


def measure_all(tmp: Path, count: int) -> list[Cost]:
    costs = []
    for backend, level, meaning in LEVELS:
        print(f"durability cost: {backend} {level} ({count} + {count} revocations) ...", flush=True)
        costs.append(measure(tmp, backend, level, meaning, count))
    return costs


def print_costs(costs: list[Cost]) -> None:
    """One row per level: its figures, and its ratios to ``none`` on the same backend."""
    base = {c.backend: c for c in costs if c.level == "none"}
    header = (
        "backend",
        "store.durability",
        "what it means",
        "revocations/s",
        "ack p50 / p99 ms",
        "rev/s ratio",
        "p99 ratio",
    )
    rows = [header]
    for c in costs:
        b = base[c.backend]
        rows.append(
            (
                c.backend,
                c.level,
                c.meaning,
                f"{c.per_second:.0f}",
                f"{c.p50_ms:.1f} / {c.p99_ms:.1f}",
                f"{c.per_second / b.per_second:.2f}",
                f"{c.p99_ms / b.p99_ms:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print()
    print(f"revocation cost per store.durability ({THREADS} threads for revocations/s)")
    for n, row in enumerate(rows):
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))

"""Revocation across three replicas on one Redis: propagation, view memory, check throughput.

Run on purpose, never as a timed test (it installs h2load with apt-get if it is missing):

    python bench/revocation.py [--revocations 50] [--serials 100000] [--requests 20000]

Starts a private ``redis-server`` on a free port and three ``authd run`` replicas on it
(replica 1 rotates and signs; all three serve ext_authz in HTTP mode), then:

1. throughput with an empty view: h2load (HTTP/1.1, 8 connections, ``-n``) straight at
   replica 3's ext_authz HTTP port with an allowed JWT-SVID: the first run after start, then
   the best of three;
2. propagation: ``--revocations`` times, a fresh SPIFFE ID whose JWT-SVID every replica
   allows is revoked through the admin API (``Revoke``, the RPC ``authd revoke`` makes) of
   the replicas in turn; from the moment the RPC returns, one thread polls all three
   replicas' ext_authz ports round robin on kept-alive connections until each answers
   401 ``revoked``. The revoking replica answers from its own view; the other two from the
   change feed;
3. bulk follow: ``--follow`` revoked serials written while the replicas run (one change-feed
   event each); the time until every replica's ``authd_revocations`` gauge counts them all;
4. memory: the replicas are stopped, ``--serials`` revoked serials are written with
   ``RedisStore.add_revocation`` directly (a bench shortcut: no issuance records, no audit),
   and the replicas start again, resynchronising the whole view from Redis; RSS is read
   from ``/proc/PID/status``;
5. throughput, propagation and bulk follow again, with that view loaded; RSS at the end;
6. the cost of each ``store.durability`` level (``bench/durability_cost.py``): revocations/s
   and p99 acknowledgement latency per level, as ratios to ``none`` (what authd did before).
   ``--durability-only`` runs this table alone.

Targets: propagation p99 ≤ 1 s; the whole daemon ≤ 150 MB RSS with 100,000 revoked serials.
Everything shares the machine (redis, three daemons, h2load, this script).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402
from bench.durability_cost import measure_all, print_costs  # noqa: E402
from bench.extauthz import ensure_h2load  # noqa: E402
from ca.store import RedisStore, Revocation  # noqa: E402
from tests.support.envoy import Authd, authd_config, start_authd, wait_for  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

TD = "spiffe://example.org"
AUDIENCE = "authd"
PATH = "/orders/1"
PROPAGATION_P99_TARGET_S = 1.0
RSS_TARGET_MB = 150.0
POLICY = f"""\
version: 1
rule_sets:
  default:
    rules:
      - name: orders-for-workloads
        effect: allow
        paths: ["/orders/{{id}}"]
        callers: ["{TD}/*"]
"""


# --- the replicas -------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    data_dir: Path
    config: str
    authd: Authd | None = None
    started_in: float = 0.0
    _channel: grpc.Channel | None = None

    def start(self) -> None:
        began = time.monotonic()
        self.authd = start_authd(self.data_dir, self.config, files={"policy.yaml": POLICY})
        self.started_in = time.monotonic() - began

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.authd is not None:
            self.authd.stop()
            self.authd = None

    @property
    def running(self) -> Authd:
        assert self.authd is not None, f"{self.name} is not running"
        return self.authd

    def admin(self) -> admin_pb2_grpc.AdminStub:
        """The admin API, as ``authd revoke`` and ``authd jwt mint`` call it."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix:{self.data_dir / 'admin.sock'}")
        return admin_pb2_grpc.AdminStub(self._channel)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.running.process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None
        return int(match.group(1)) / 1024

    def gauge(self, name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", self.running.metrics(), re.MULTILINE)
        assert match is not None, f"{self.name} publishes no {name}"
        return float(match.group(1))


def replica_config(redis_url: str, *, rotates: bool) -> str:
    config = authd_config(
        http_path_prefix="", decision_log="", extra=f'jwt_svid_audiences = ["{AUDIENCE}"]'
    )
    config = config.replace('decision_log = ""\n', "")
    return config + (
        f"\n[ca]\nrotates = {str(rotates).lower()}\n"
        f'\n[store]\nurl = "{redis_url}"\n'
        "\n[workload]\nenabled = false\n"
    )


@contextmanager
def replicas_on(tmp: Path, redis_url: str) -> Iterator[list[Replica]]:
    group = [
        Replica(f"r{n}", tmp / f"r{n}", replica_config(redis_url, rotates=n == 1))
        for n in (1, 2, 3)
    ]
    try:
        start_all(group)
        yield group
    finally:
        for replica in group:
            replica.stop()


def start_all(group: list[Replica]) -> None:
    group[0].start()  # the rotating replica makes the authorities the others load
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(Replica.start, group[1:]))


# --- checking -------------------------------------------------------------------------------


class Checker:
    """Kept-alive HTTP/1.1 connections to each replica's ext_authz port."""

    def __init__(self, group: list[Replica]) -> None:
        self._ports = [r.running.http_port for r in group]
        self._connections = [self._connect(p) for p in self._ports]

    @staticmethod
    def _connect(port: int) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def status(self, index: int, token: str) -> int:
        headers = {"host": "api.example.com", "authorization": f"Bearer {token}"}
        for attempt in (1, 2):
            connection = self._connections[index]
            try:
                connection.request("GET", PATH, headers=headers)
                response = connection.getresponse()
                body = response.read()
                break
            except (OSError, http.client.HTTPException):
                connection.close()
                self._connections[index] = self._connect(self._ports[index])
                if attempt == 2:
                    raise
        if response.status == 401 and json.loads(body)["error"] != "revoked":
            raise RuntimeError(f"denied for another reason: {body!r}")
        return response.status

    def close(self) -> None:
        for connection in self._connections:
            connection.close()


# --- measurements -------------------------------------------------------------------------


@dataclass
class Propagation:
    rpc: list[float] = field(default_factory=list)  # Revoke RPC round trips
    revoker: list[float] = field(default_factory=list)  # RPC returned → revoker denies
    followers: list[float] = field(default_factory=list)  # ... → the other two deny

    @property
    def all(self) -> list[float]:
        return self.revoker + self.followers


def measure_propagation(group: list[Replica], count: int, label: str) -> Propagation:
    signer = group[0].admin()
    admins = [r.admin() for r in group]
    ids = [f"{TD}/bench/{label}/{n}-{secrets.token_hex(3)}" for n in range(count)]
    tokens = [
        signer.MintJWTSVID(
            admin_pb2.MintJWTSVIDRequest(spiffe_id=i, audience=[AUDIENCE]), timeout=10
        ).token
        for i in ids
    ]
    checker = Checker(group)
    result = Propagation()
    try:
        for n, (spiffe_id, token) in enumerate(zip(ids, tokens, strict=True)):
            for index in range(len(group)):  # allowed everywhere (and the token cached)
                if checker.status(index, token) != 200:
                    raise RuntimeError(f"{group[index].name} does not allow {spiffe_id}")
            revoker = n % len(group)
            request = admin_pb2.RevokeRequest(
                kind="spiffe_id", target=spiffe_id, reason="key-compromise"
            )
            began = time.perf_counter()
            admins[revoker].Revoke(request, timeout=10)
            acknowledged = time.perf_counter()
            result.rpc.append(acknowledged - began)
            pending = set(range(len(group)))
            while pending:
                for index in sorted(pending):
                    if checker.status(index, token) == 401:
                        elapsed = time.perf_counter() - acknowledged
                        (result.revoker if index == revoker else result.followers).append(elapsed)
                        pending.discard(index)
                if time.perf_counter() - acknowledged > 30:
                    raise RuntimeError(f"{spiffe_id} not denied everywhere after 30 s")
    finally:
        checker.close()
    return result


@dataclass
class Throughput:
    rps: float
    ok: int
    requests: int
    p50_ms: float
    p99_ms: float


def h2load(h2load_bin: str, port: int, token: str, requests: int, log_file: Path) -> Throughput:
    command = [h2load_bin, "--h1", "-c", "8", "-t", "1", "-n", str(requests)]
    command += ["-H", f"authorization: Bearer {token}", "--log-file", str(log_file)]
    command.append(f"http://127.0.0.1:{port}{PATH}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed: {done.stdout}\n{done.stderr}")
    latencies, ok = [], 0
    for line in log_file.read_text().splitlines():
        _, status, micros = line.split("\t")[:3]
        latencies.append(int(micros))
        ok += status == "200"
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", done.stdout)
    if match is None or not latencies:
        raise RuntimeError(f"unexpected h2load output:\n{done.stdout}")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Throughput(float(match.group(1)), ok, len(latencies), cuts[49] / 1000, cuts[98] / 1000)


def add_serials(store: RedisStore, count: int, note: str) -> float:
    """Write ``count`` revoked serials straight into the store; the seconds it took."""
    now = int(time.time())

    def add(n: int) -> None:
        store.add_revocation(
            Revocation(
                target_kind="serial",
                target=secrets.token_hex(16).lstrip("0") or "1",
                reason=1,
                note=note,
                revoked_at=now,
                revoked_by="bench",
            )
        )

    began = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        for _ in pool.map(add, range(count), chunksize=256):
            pass
    return time.monotonic() - began


def wait_for_count(replica: Replica, count: float, timeout: float) -> float:
    began = time.monotonic()

    def caught_up() -> bool:
        return replica.gauge("authd_revocations") >= count

    wait_for(f"{replica.name} to count {count:.0f} revocations", caught_up, timeout)
    return time.monotonic() - began


# --- the table ------------------------------------------------------------------------------


def ms(values: list[float], q: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0] * 1000:.1f}"
    return f"{statistics.quantiles(values, n=100, method='inclusive')[q - 1] * 1000:.1f}"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        self.misses: list[str] = []

    def add(self, what: str, value: str, target: str = "", ok: bool | None = None) -> None:
        if ok is False:
            self.misses.append(f"{what}: {value} (target {target})")
        mark = "" if ok is None else ("ok" if ok else "MISSED")
        self.rows.append((what, value, target, mark))

    def propagation(self, label: str, p: Propagation) -> None:
        p99 = statistics.quantiles(p.all, n=100, method="inclusive")[98]
        self.add(f"{label}: Revoke RPC p50 / p99 ms", f"{ms(p.rpc, 50)} / {ms(p.rpc, 99)}")
        self.add(
            f"{label}: revoker denies p50 / p99 ms", f"{ms(p.revoker, 50)} / {ms(p.revoker, 99)}"
        )
        self.add(
            f"{label}: followers deny p50 / p99 ms",
            f"{ms(p.followers, 50)} / {ms(p.followers, 99)}",
        )
        self.add(
            f"{label}: all replicas p50 / p99 / max ms",
            f"{ms(p.all, 50)} / {ms(p.all, 99)} / {max(p.all) * 1000:.1f}",
            f"p99 ≤ {PROPAGATION_P99_TARGET_S * 1000:.0f}",
            p99 <= PROPAGATION_P99_TARGET_S,
        )

    def throughput(self, label: str, t: Throughput) -> None:
        self.add(
            f"{label}: req/s (p50 / p99 ms)",
            f"{t.rps:.0f} ({t.p50_ms:.2f} / {t.p99_ms:.2f}); {t.ok}/{t.requests} allowed",
        )

    def print(self) -> None:
        widths = [max(len(row[i]) for row in self.rows) for i in range(4)]
        header = ("measure", "value", "target", "")
        widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
        line = "  ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True))
        print()
        print(line)
        print("-" * len(line))
        for row in self.rows:
            print("  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)))
        print("\nmissed: " + ("; ".join(self.misses) if self.misses else "none"))


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, h2load_bin: str, tmp: Path, table: Table) -> None:
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp / "redis"))
        store = RedisStore(redis.url)
        stack.callback(store.close)
        group = stack.enter_context(replicas_on(tmp, redis.url))
        target = group[2]  # a follower: what a decision point behind Envoy is
        request = admin_pb2.MintJWTSVIDRequest(spiffe_id=f"{TD}/load", audience=[AUDIENCE])
        token = group[0].admin().MintJWTSVID(request, timeout=10).token

        def load_once() -> Throughput:
            log_file = tmp / "h2load.log"
            log_file.unlink(missing_ok=True)
            return h2load(h2load_bin, target.running.http_port, token, args.requests, log_file)

        def throughput(label: str) -> Throughput:
            """The first run right after start, then the best of three (others share the
            machine: the best run is the one least disturbed)."""
            print(f"throughput, {label} ...", flush=True)
            table.throughput(f"ext_authz HTTP, {label}, first run after start", load_once())
            best = max((load_once() for _ in range(3)), key=lambda t: t.rps)
            table.throughput(f"ext_authz HTTP, {label}, best of 3", best)
            return best

        def bulk_follow(label: str) -> None:
            print(f"bulk follow, {label}: {args.follow} serials written live ...", flush=True)
            expected = max(r.gauge("authd_revocations") for r in group) + args.follow
            written = add_serials(store, args.follow, "follow")
            with ThreadPoolExecutor(len(group)) as pool:
                behind = list(pool.map(lambda r: wait_for_count(r, expected, 900), group))
            total = written + max(behind)
            table.add(
                f"bulk follow, {label}: {args.follow} changes written / applied everywhere (s)",
                f"{written:.1f} / {total:.1f} ({args.follow / total:.0f} changes/s)",
            )

        table.add("start to healthy, empty store (s, r1/r2/r3)", started_in(group))
        table.add("RSS, empty view (MB, r1/r2/r3)", rss(group))
        empty = throughput("empty view")
        print(f"propagation of {args.revocations} revocations, small view ...", flush=True)
        table.propagation("small view", measure_propagation(group, args.revocations, "small"))
        bulk_follow("small view")

        print(f"writing {args.serials} revoked serials, replicas stopped ...", flush=True)
        for replica in group:
            replica.stop()
        seconds = add_serials(store, args.serials, "bench")
        table.add(
            f"RedisStore.add_revocation x {args.serials} (16 threads)",
            f"{seconds:.1f} s ({args.serials / seconds:.0f}/s)",
        )
        print("restarting the replicas: each resynchronises the whole view ...", flush=True)
        start_all(group)
        table.add(f"start to healthy, {args.serials} revoked (s, r1/r2/r3)", started_in(group))
        table.add(
            "view size after resync (r1/r2/r3)",
            " / ".join(f"{r.gauge('authd_revocations'):.0f}" for r in group),
        )
        table.add(f"RSS at healthy, {args.serials} revoked (MB, r1/r2/r3)", rss(group))
        steady = throughput(f"{args.serials} revoked")
        table.add("throughput loaded / empty (best of 3 each)", f"{steady.rps / empty.rps:.2f}")
        print(f"propagation of {args.revocations} revocations, loaded view ...", flush=True)
        table.propagation(
            f"{args.serials} view", measure_propagation(group, args.revocations, "loaded")
        )
        bulk_follow(f"{args.serials} view")
        peak = [r.rss_mb() for r in group]
        table.add(
            f"RSS at the end, {args.serials}+ revoked (MB, r1/r2/r3)",
            " / ".join(f"{v:.0f}" for v in peak),
            f"≤ {RSS_TARGET_MB:.0f}",
            max(peak) <= RSS_TARGET_MB,
        )


def started_in(group: list[Replica]) -> str:
    return " / ".join(f"{r.started_in:.1f}" for r in group)


def rss(group: list[Replica]) -> str:
    return " / ".join(f"{r.rss_mb():.0f}" for r in group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--revocations", type=int, default=50, help="per propagation run")
    parser.add_argument("--serials", type=int, default=100_000, help="revoked serials loaded")
    parser.add_argument("--requests", type=int, default=20_000, help="h2load -n")
    parser.add_argument("--follow", type=int, default=2_000, help="changes followed live")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    parser.add_argument("--durability-revocations", type=int, default=300, help="per level")
    parser.add_argument("--durability-only", action="store_true", help="only the cost table")
    args = parser.parse_args()
    h2load_bin = "" if args.durability_only else ensure_h2load()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.2f} before starting; other work skews the numbers")
    tmp = Path(tempfile.mkdtemp(prefix="authd-rb-"))
    table = Table()
    costs = []
    try:
        costs = measure_all(tmp / "durability", args.durability_revocations)
        if not args.durability_only:
            run(args, h2load_bin, tmp, table)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        if table.rows:
            table.print()
        if costs:
            print_costs(costs)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

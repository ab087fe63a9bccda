"""What one ext_authz Check costs authd, in instructions (or µs), independent of the machine's load.

Run on purpose, never as a timed test:

    python bench/check_cost.py                                  # this tree, µs per check
    python bench/check_cost.py --tree /tmp/base --tree .        # ratio to the first tree
    python bench/check_cost.py --tree /tmp/base --tree . --measure callgrind --checks 2000
    python bench/check_cost.py --measure cprofile --transport grpc --scenario jwt

Each tree is run in its own process with ``PYTHONPATH=TREE`` (so a checkout of an older
commit, ``git worktree add /tmp/base COMMIT``, is measured with its own code). In that process
the real daemon starts (``authd.app.daemon.Daemon``, a temporary data directory, the rules of
``bench/extauthz.py``), mints the caller's X.509-SVID and a JWT-SVID, and then feeds N
identical Checks, as Envoy would send them, to one connection of its ext_authz listeners
in-process: the bytes of the HTTP/2 frames (HPACK with a dynamic table, as Envoy encodes
them) to the native gRPC server's protocol, or the bytes of an HTTP/1.1 request to the HTTP
service mode's protocol. Nothing goes through a socket: the transport is a stub that keeps
what is written, so what is measured is authd's own work per Check, transport core and
pipeline, and nothing of the kernel or of other processes.

Scenarios: ``mtls`` (the caller's leaf in ``source.certificate`` / ``x-authd-peer-cert``, as
``deploy/envoy/sidecar-*.yaml`` send it), ``jwt`` (a JWT-SVID bearer token) and ``rego`` (the
``jwt`` request, decided by ``deploy/policy/authz.rego`` with ``policy_engine = "rego"``, as
``bench/extauthz.py --scenario rego`` does; not part of the default rows). Stages:
``full`` (bytes in, bytes out) and ``pipeline`` (``Authorizer.check`` alone, on the
CheckContext the full path built); ``transport`` is their difference.

Measures:

- ``time`` (default): process CPU time over N checks, the best of ``--repeat`` runs.
  Noisy on a shared machine; compare trees only within one run.
- ``callgrind``: ``valgrind --tool=callgrind`` counts the instructions executed while the N
  checks run (collection is toggled on by the one C function that runs them,
  ``functools.reduce``); the same whatever else the machine does. Slow (~1 min per row).
- ``cprofile``: the functions the N checks spend their time in, per check (one tree at a
  time is the useful way to read it; ``--profile-out`` keeps the pstats file).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

CALLER = "spiffe://example.org/ns/prod/web"
PATH = "/orders/42"
AUDIENCE = "gateway"
CHECK = b"/envoy.service.auth.v3.Authorization/Check"
RULES = """\
version: 1
default_rule_set: bench
rule_sets:
  bench:
    rules:
      - name: prod-reads-orders
        effect: allow
        paths: ["/orders/*"]
        callers: ["spiffe://example.org/ns/prod/*"]
"""
CONFIG = """\
trust_domain = "example.org"

[authz]
grpc_address = "127.0.0.1:0"
http_address = "127.0.0.1:{http_port}"
http_path_prefix = "/check"
metrics_address = "127.0.0.1:{metrics_port}"
policy_engine = "rules"
policy_file = "policy.yaml"
jwt_svid_audiences = ["{audience}"]
"""
WARM_UP = 200
T = TypeVar("T")


# --- the worker: runs in the measured tree ----------------------------------------------------


class StubTransport:
    """What a protocol writes to, kept in memory; reading is never really paused."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("127.0.0.1", 40000)
        if name == "sockname":
            return ("127.0.0.1", 9191)
        return default

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IBI", (len(payload) << 8) | kind, flags, stream_id) + payload


class EnvoyGrpcClient:
    """The frames Envoy's ext_authz gRPC client sends: one stream per Check, HPACK indexed."""

    def __init__(self) -> None:
        import hpack

        self.encoder = hpack.Encoder()
        self.stream_id = 1

    def preface(self) -> bytes:
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, 268435456)
        settings += struct.pack(">HI", 0x3, 2147483647)
        return (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(0x4, 0, 0, settings)
            + _frame(0x8, 0, 0, (268369920).to_bytes(4, "big"))
        )

    def settings_ack(self) -> bytes:
        return _frame(0x4, 0x1, 0)

    def check(self, message: bytes) -> bytes:
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", CHECK.decode()),
            (":authority", "authd_ext_authz"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "500m"),
            ("x-envoy-internal", "true"),
            ("x-forwarded-for", "127.0.0.1"),
        ]
        block = self.encoder.encode(headers)
        stream_id, self.stream_id = self.stream_id, self.stream_id + 2
        body = struct.pack(">BI", 0, len(message)) + message
        return _frame(0x1, 0x4, stream_id, block) + _frame(0x0, 0x1, stream_id, body)


def check_request(scenario: str, leaf_pem: str, token: str) -> bytes:
    from envoy.service.auth.v3 import external_auth_pb2

    request = external_auth_pb2.CheckRequest()
    attributes = request.attributes
    source = attributes.source
    source.address.socket_address.address = "127.0.0.1"
    source.address.socket_address.port_value = 51234
    destination = attributes.destination
    destination.address.socket_address.address = "127.0.0.1"
    destination.address.socket_address.port_value = 10000
    if scenario == "mtls":
        source.principal = CALLER
        source.certificate = quote(leaf_pem, safe="")
        destination.principal = "spiffe://example.org/ns/prod/orders"
    # The per-route context extensions of deploy/envoy/sidecar-grpc.yaml, as bench/extauthz.py
    # sets them.
    attributes.context_extensions["policy"] = "bench"
    attributes.context_extensions["audience"] = AUDIENCE
    attributes.request.time.GetCurrentTime()
    http = attributes.request.http
    http.id = "14250823462145532721"
    http.method = "GET"
    http.path = PATH
    http.host = "127.0.0.1:10000"
    http.scheme = "https" if scenario == "mtls" else "http"
    http.protocol = "HTTP/2"
    headers = {
        ":authority": "127.0.0.1:10000",
        ":method": "GET",
        ":path": PATH,
        ":scheme": http.scheme,
        "user-agent": "h2load nghttp2/1.52.0",
        "x-forwarded-proto": http.scheme,
        "x-request-id": "0b7f4a3e-2c55-4d0c-9d0e-6a3b1f0f5e21",
    }
    if token:
        headers["authorization"] = f"Bearer {token}"
    for name, value in headers.items():
        http.headers[name] = value
    return request.SerializeToString()


def http_request(scenario: str, leaf_pem: str, token: str, port: int) -> bytes:
    lines = [
        f"GET /check{PATH} HTTP/1.1",
        f"host: 127.0.0.1:{port}",
        "x-request-id: 0b7f4a3e-2c55-4d0c-9d0e-6a3b1f0f5e21",
        "x-forwarded-proto: https",
        "x-envoy-expected-rq-timeout-ms: 500",
    ]
    if token:
        lines.append(f"authorization: Bearer {token}")
    if scenario == "mtls":
        lines.append(f"x-authd-peer-uri-san: {CALLER}")
        lines.append(f"x-authd-peer-cert: {quote(leaf_pem, safe='')}")
    lines.append("content-length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _listeners(daemon: Any) -> tuple[Any, Any]:
    """The native gRPC server and the HTTP service mode server, wherever the tree keeps them."""
    holder = getattr(daemon, "_authz", daemon)
    return holder._authz_server, holder._http_server


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        from authd.config import load_config
    except ImportError:  # older trees
        from authd.config.settings import load_config  # type: ignore[no-redef]
    from authd.app.daemon import Daemon
    from ca.spiffe_id import SpiffeId

    tmp = Path(tempfile.mkdtemp(prefix="check-cost-"))
    (tmp / "policy.yaml").write_text(RULES)
    http_port = _free_port()
    config_text = CONFIG.format(http_port=http_port, metrics_port=_free_port(), audience=AUDIENCE)
    if args.scenario == "rego":
        rego = Path(__file__).resolve().parents[1] / "deploy" / "policy" / "authz.rego"
        (tmp / "authz.rego").write_text(rego.read_text())
        config_text = config_text.replace(
            'policy_engine = "rules"\npolicy_file = "policy.yaml"',
            'policy_engine = "rego"\nrego_files = ["authz.rego"]',
        )
    (tmp / "authd.toml").write_text(config_text)
    config = load_config(tmp / "authd.toml", env={}, overrides={"data_dir": str(tmp)})
    daemon = Daemon(config)
    await daemon.start()
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        svid = daemon.ca.sign_x509_svid(
            key.public_key(), spiffe_id=SpiffeId.parse(CALLER), requester="bench"
        )
        leaf_pem = svid.leaf.public_bytes(serialization.Encoding.PEM).decode()
        token = ""
        if args.scenario in ("jwt", "rego"):
            token = daemon.ca.mint_jwt_svid(
                spiffe_id=SpiffeId.parse(CALLER), audience=[AUDIENCE]
            ).token
        grpc_server, http_server = _listeners(daemon)
        repeat = args.repeat if args.measure == "time" else 1
        total = 2 * WARM_UP + args.checks * repeat
        transport = StubTransport()
        if args.transport == "grpc":
            client = EnvoyGrpcClient()
            protocol = grpc_server.protocol()
            protocol.connection_made(transport)
            protocol.data_received(client.preface() + client.settings_ack())
            message = check_request(args.scenario, leaf_pem, token)
            # Envoy's HPACK encoder indexes the headers of the first request; the second on
            # are what every later request looks like.
            requests = [client.check(message) for _ in range(total)]
        else:
            from authd.extauthz.http_service import HttpCheckProtocol

            protocol = HttpCheckProtocol(http_server)
            protocol.connection_made(transport)
            one = http_request(args.scenario, leaf_pem, token, http_port)
            requests = [one] * total
        authorizer = http_server.authorizer
        seen: list[Any] = []
        original = authorizer.check

        def recording(ctx: Any) -> Any:
            seen.append(ctx)
            return original(ctx)

        authorizer.check = recording
        feed = protocol.data_received
        await _as_the_loop_calls(lambda: [feed(data) for data in requests[:WARM_UP]])
        await asyncio.sleep(0)
        del authorizer.check
        answers = _answers(args.transport, transport.written)
        if answers[1] != WARM_UP:
            raise SystemExit(f"warm-up: {answers[1]} of {WARM_UP} checks allowed: {answers}")
        ctx = seen[-1]
        check = authorizer.check

        def one_full(_: Any, data: bytes) -> None:
            feed(data)

        def one_pipeline(_: Any, __: Any) -> None:
            coroutine = check(ctx)
            try:
                coroutine.send(None)
            except StopIteration:
                return
            raise SystemExit("the pipeline suspended: cannot measure it synchronously")

        step = one_full if args.stage == "full" else one_pipeline
        # A second warm-up, on the measured code path (not in reduce: callgrind counts that).
        await _as_the_loop_calls(
            lambda: [step(None, data) for data in requests[WARM_UP : 2 * WARM_UP]]
        )
        chunks = [
            requests[2 * WARM_UP + i * args.checks : 2 * WARM_UP + (i + 1) * args.checks]
            for i in range(repeat)
        ]
        measured = chunks[0]
        transport.written.clear()
        result: dict[str, Any] = {}
        if args.measure == "cprofile":
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
            await _as_the_loop_calls(lambda: functools.reduce(step, measured, None))
            profiler.disable()
            profiler.dump_stats(args.profile_out)
        elif args.measure == "callgrind":
            # Collection is on inside reduce only.
            await _as_the_loop_calls(lambda: functools.reduce(step, measured, None))
        else:
            best = float("inf")
            for chunk in chunks:

                def timed(chunk: list[bytes] = chunk) -> float:
                    started = time.process_time()
                    functools.reduce(step, chunk, None)
                    return time.process_time() - started

                best = min(best, await _as_the_loop_calls(timed))
                transport.written.clear()
                await asyncio.sleep(0)
            result["us_per_check"] = best / args.checks * 1e6
        await asyncio.sleep(0)
        if args.stage == "full" and args.measure != "time":
            answers = _answers(args.transport, transport.written)
            if answers[1] != args.checks:
                raise SystemExit(f"{answers[1]} of {args.checks} checks allowed: {answers}")
        return result
    finally:
        await daemon.close()


async def _as_the_loop_calls(function: Callable[[], T]) -> T:
    """``function()`` run from a loop callback, as the loop calls ``data_received``: with no
    task current (the driver itself runs in one)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            done.set_result(function())
        except BaseException as exc:
            done.set_exception(exc)

    loop.call_soon(run)
    return await done


def _answers(transport: str, written: list[bytes]) -> tuple[int, int]:
    """(answers seen, allowed) in what the protocol wrote."""
    data = b"".join(written)
    if transport == "http":
        return data.count(b"HTTP/1.1 "), data.count(b"HTTP/1.1 200")
    # gRPC: count the DATA frames carrying a CheckResponse whose status code is OK (0).
    from envoy.service.auth.v3 import external_auth_pb2

    answers = allowed = 0
    offset = 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        kind = data[offset + 3]
        payload = data[offset + 9 : offset + 9 + length]
        offset += 9 + length
        if kind == 0 and len(payload) > 5:
            answers += 1
            message = payload[5:]
            if external_auth_pb2.CheckResponse.FromString(message).status.code == 0:
                allowed += 1
    return answers, allowed


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the driver: one worker per tree, transport, scenario and stage ---------------------------


def run_worker(tree: Path, row: dict[str, str], args: argparse.Namespace) -> float:
    """Cost per check of ``row`` in ``tree``: instructions (callgrind) or µs."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    env.pop("AUTHD_CONFIG", None)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    command += ["--transport", row["transport"], "--scenario", row["scenario"]]
    command += ["--stage", row["stage"], "--checks", str(args.checks)]
    command += ["--measure", args.measure, "--repeat", str(args.repeat)]
    with tempfile.TemporaryDirectory(prefix="check-cost-") as tmp:
        out = Path(tmp) / "callgrind.out"
        profile = Path(tmp) / "profile.pstats"
        command += ["--profile-out", str(profile)]
        if args.measure == "callgrind":
            command = [
                "valgrind",
                "--tool=callgrind",
                "--collect-atstart=no",
                "--toggle-collect=functools_reduce",
                f"--callgrind-out-file={out}",
                *command,
            ]
        done = subprocess.run(
            command, cwd=tree, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"{tree} {row}: the worker failed\n{done.stderr[-4000:]}")
        if args.measure == "callgrind":
            if args.profile_out:
                keep = Path(args.profile_out).with_suffix(
                    f".{tree.name}.{row['transport']}.{row['scenario']}.{row['stage']}.callgrind"
                )
                keep.write_bytes(out.read_bytes())
            return _instructions(out) / args.checks
        if args.measure == "cprofile":
            _print_profile(profile, args.checks, args.top)
            if args.profile_out:
                keep = Path(args.profile_out).with_suffix(
                    f".{tree.name}.{row['transport']}.{row['scenario']}.{row['stage']}.pstats"
                )
                keep.write_bytes(profile.read_bytes())
            return 0.0
        return float(json.loads(done.stdout.strip().splitlines()[-1])["us_per_check"])


def _instructions(out: Path) -> int:
    total = 0
    for line in out.read_text().splitlines():
        match = re.match(r"(?:summary|totals):\s+(\d+)", line)
        if match:
            total = max(total, int(match.group(1)))
    return total


def _print_profile(path: Path, checks: int, top: int) -> None:
    import pstats

    stats = pstats.Stats(str(path))
    rows = []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tottime, cumtime, calls, f"{Path(filename).name}:{line}({name})"))
    rows.sort(reverse=True)
    print(f"{'tot µs/check':>12} {'cum µs/check':>12} {'calls/check':>11}  function")
    for tottime, cumtime, calls, where in rows[:top]:
        print(
            f"{tottime / checks * 1e6:>12.2f} {cumtime / checks * 1e6:>12.2f} "
            f"{calls / checks:>11.2f}  {where}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="source tree (repeat)")
    parser.add_argument("--transport", action="append", choices=("grpc", "http"))
    parser.add_argument("--scenario", action="append", choices=("mtls", "jwt", "rego"))
    parser.add_argument("--stage", action="append", choices=("full", "pipeline"))
    parser.add_argument("--checks", type=int, default=0, help="checks per row")
    parser.add_argument("--measure", choices=("time", "callgrind", "cprofile"), default="time")
    parser.add_argument("--repeat", type=int, default=5, help="time: best of this many runs")
    parser.add_argument("--top", type=int, default=40, help="cprofile: functions shown")
    parser.add_argument(
        "--profile-out",
        default="",
        help="cprofile, callgrind: keep each row's file as PROFILE_OUT.TREE.ROW.pstats/.callgrind",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.transport, args.scenario, args.stage = (
            args.transport[0],
            args.scenario[0],
            args.stage[0],
        )
        import uvloop  # what `authd run` runs on

        result = uvloop.run(_worker(args))
        print(json.dumps(result))
        return
    if not args.checks:
        args.checks = 1000 if args.measure == "callgrind" else 3000
    trees = [t.resolve() for t in (args.tree or [Path(__file__).resolve().parents[1]])]
    rows = [
        {"transport": transport, "scenario": scenario, "stage": stage}
        for transport in args.transport or ("grpc", "http")
        for scenario in args.scenario or ("mtls", "jwt")
        for stage in args.stage or ("full", "pipeline")
    ]
    unit = "instr/check" if args.measure == "callgrind" else "µs/check"
    names = [str(t) for t in trees]
    header = f"{'transport':<9} {'scenario':<8} {'stage':<9} " + " ".join(
        f"{Path(n).name[:14]:>14}" for n in names
    )
    if len(trees) > 1:
        header += "   " + " ".join(f"{'ratio ' + Path(n).name[:8]:>14}" for n in names[1:])
    if args.measure != "cprofile":
        print(f"{args.measure}: {unit}, {args.checks} checks per row")
        print(header, flush=True)
    results: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        costs = []
        for tree in trees:
            if args.measure == "cprofile":
                print(f"\n== {tree} {row}")
            costs.append(run_worker(tree, row, args))
        results[(row["transport"], row["scenario"])] = results.get(
            (row["transport"], row["scenario"]), {}
        )
        if args.measure == "cprofile":
            continue
        line = f"{row['transport']:<9} {row['scenario']:<8} {row['stage']:<9} "
        line += " ".join(
            f"{c:>14,.0f}" if unit.startswith("instr") else f"{c:>14.1f}" for c in costs
        )
        if len(costs) > 1:
            line += "   " + " ".join(f"{c / costs[0]:>14.3f}" for c in costs[1:])
        print(line, flush=True)


if __name__ == "__main__":
    main()

"""What OPA-format decision logs cost a check, and how fast the writer keeps up.

Run on purpose, never as a timed test:

    python bench/opa_decision_log.py [--n 20000] [--rounds 3]

Rows, each the best of ``--rounds`` runs of ``--n`` checks through the real ``Authorizer``
with a compiled Rego policy (OPA-Envoy mode), in µs per check on the check's own thread:

- ``no decision log``: the baseline;
- ``authd decision_log``: authd's own JSON lines (``authz.decision_log``), written inline;
- ``OPA decision logs``: ``[decision_logs]`` with a file, the policy's mask and drop rules and
  an upload buffer; the check only queues the event (the writer not yet started);
- ``OPA, writer running``: the same with the writer thread draining the events meanwhile,
  which shares the interpreter with the checks.

Then the writer thread's own rate (events built, dropped/masked in Rego, serialised, written
and gzip-batched per second), which bounds the sustained check rate that loses no event
(beyond it events are dropped and counted, never waited for).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
from pathlib import Path

from authd.authz.decision_log import DecisionLog, DecisionSink
from authd.authz.opa_log_sink import OpaDecisionLog, open_log_file, traced
from authd.authz.pipeline import Authorizer, AuthzSettings
from authd.check.model import CheckContext, Identities
from authd.config.decision_logs import DecisionLogSettings
from authd.policy.opa_envoy_result import opa_envoy_decision
from authd.policy.rego import RegoPolicy
from authd.policy.rego_log_rules import LogRules

POLICY = """\
package envoy.authz

import rego.v1

default allow := false

allow if input.parsed_path[0] == "public"
"""
LOG_RULES = """\
package system.log

import rego.v1

mask contains "/input/attributes/request/http/headers/authorization"

drop if input.input.parsed_path[0] == "healthz"
"""


class _Nobody:
    async def resolve(self, ctx: CheckContext) -> Identities:
        return Identities()


def contexts(n: int) -> list[CheckContext]:
    return [
        CheckContext(
            method="GET",
            host="api.example.com",
            path=f"/public/{i % 50}?page={i % 7}",
            headers={"authorization": "Bearer abc", "user-agent": "bench", "x-request-id": str(i)},
        )
        for i in range(n)
    ]


async def run_checks(authorizer: Authorizer, ctxs: list[CheckContext]) -> float:
    started = time.perf_counter()
    for ctx in ctxs:
        await authorizer.check(ctx)
    return (time.perf_counter() - started) / len(ctxs) * 1e6


def authorizer(policy: RegoPolicy, sink: DecisionSink | None) -> Authorizer:
    return Authorizer(
        resolver=_Nobody(),
        policy=lambda: policy,
        settings=AuthzSettings(compat="opa-envoy"),
        decision_log=sink,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # No decision cache: every check evaluates, as with a policy that reads the whole input.
    policy = RegoPolicy.from_sources(
        {"p.rego": POLICY},
        "envoy/authz/allow",
        decision_cache=0,
        results=traced(opa_envoy_decision),
    )
    rows: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    writer_rates: list[float] = []
    rules = LogRules({"p.rego": POLICY, "l.rego": LOG_RULES}, "system/log/mask", "system/log/drop")
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            ctxs = contexts(args.n)
            measured: dict[str, float] = {}
            measured["no decision log"] = asyncio.run(run_checks(authorizer(policy, None), ctxs))
            own = DecisionLog(io.StringIO())
            measured["authd decision_log"] = asyncio.run(run_checks(authorizer(policy, own), ctxs))
            path = Path(tmp) / "opa.log"
            settings = DecisionLogSettings(
                file=str(path), service_url="http://127.0.0.1:9", queue_size=2 * args.n + 1
            )
            sink = OpaDecisionLog(
                settings, path="envoy/authz/allow", rules=rules, file=open_log_file(path)
            )
            measured["OPA decision logs"] = asyncio.run(run_checks(authorizer(policy, sink), ctxs))
            started = time.perf_counter()
            sink.start()  # the queue holds all n events: time the writer draining it
            sink.wait_written(timeout=600)
            writer_rates.append(args.n / (time.perf_counter() - started))
            # Checks while the writer works beside them (it shares the interpreter).
            measured["OPA, writer running"] = asyncio.run(
                run_checks(authorizer(policy, sink), ctxs)
            )
            sink.wait_written(timeout=600)
            if sink.uploader is not None:
                sink.uploader.stop(flush_timeout=0)
            sink.close()
            base = measured["no decision log"]
            for name, value in measured.items():
                rows.setdefault(name, []).append(value)
                ratios.setdefault(name, []).append(value / base)
    print(f"{'check path (median of rounds)':<30} {'µs/check':>9} {'ratio':>6}")
    for name, values in rows.items():
        print(f"{name:<30} {statistics.median(values):9.1f} {statistics.median(ratios[name]):6.2f}")
    rate = statistics.median(writer_rates)
    print(f"\nOPA-format writer: {rate:,.0f} events/s (mask + drop in Rego, file, gzip)")


if __name__ == "__main__":
    main()

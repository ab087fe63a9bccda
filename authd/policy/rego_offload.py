"""Rego off the event loop: a policy that has once been slow evaluates on worker threads.

regopy evaluates inside rego-cpp, and authd calls it holding the GIL (``RegoPolicy``'s fast
path): a usual evaluation costs tens of µs, less than a hop to another thread. But a policy
that burns 50 ms (a large comprehension, a slow path for one caller) would hold the event
loop, and every other caller's check on every transport, for those 50 ms.

So ``OffLoopRego`` evaluates inline while evaluations stay cheap, timing each in thread CPU
time (a preemption is not the policy's cost). Once one has taken more than
``INLINE_BUDGET``, the policy goes off the loop for good (until it is reloaded): decision
cache hits are still answered on the loop, every miss is evaluated on one of ``workers``
threads through regopy's own calls, which release the GIL for the whole of rego-cpp's
evaluation, so the loop and the other workers run meanwhile. The workers run apart from
the loop (below): on a busy machine the loop's thread, which serves every transport and
every cheap check, gets the CPU first, and the slow policy's checks take longer instead.
The first slow evaluation is the one that still holds the loop. At most
``workers`` evaluations run at once; a cheap one waits behind slow ones only when all
workers are busy. ``workers = 0`` keeps every evaluation inline. The threads are shared by
every policy of the process with the same workers and CPUs (a reload starts none).

Apart (``worker_cpus``) means: on their own CPUs (by default the last quarter
of the CPUs authd may use, at least one, when it may use two or more), and there only when
those CPUs have nothing else to run (SCHED_IDLE); when they are not kept on their own CPUs,
at nice +10 (``WORKER_NICENESS``). Measured on a 2-core box
(``bench/slow_policy.py``): a worker free to move shares whichever CPU the loop thread and
its callers wake up on, and a cheap caller's p99 was 2-3 times the one beside a cheap second
caller, at nice +10 (SCHED_IDLE alone, 3-4 times; a shorter scheduler slice for the loop
thread, or a process instead of threads, no better). Kept on one CPU at SCHED_IDLE, the
loop and its callers find the other CPU free and take the worker's whenever they need it,
and the cheap caller's p99 stays within the machine's noise of the baseline; the slow
policy's checks take longer instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from authd.check.model import CheckContext, Decision, Identities
from authd.config.cpus import format_cpu_list, parse_cpu_list
from authd.config.model import AuthzConfig
from authd.policy.base import InputDocument, PolicyError
from authd.policy.rego import RegoPolicy

log = logging.getLogger(__name__)

# Thread CPU seconds an inline evaluation may take before the policy leaves the loop.
INLINE_BUDGET: Final = 0.002
DEFAULT_WORKERS: Final = 4
# Added to the worker threads' nice value, so that on a busy machine the loop's thread (all
# transports, every cheap check) gets the CPU before a slow evaluation does.
WORKER_NICENESS: Final = 10

_T = TypeVar("_T")
_pools: dict[tuple[int, frozenset[int] | None], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def available_cpus() -> frozenset[int]:
    """The CPUs this process may run on (its affinity, e.g. a cgroup's cpuset or taskset)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return frozenset(range(os.cpu_count() or 1))


def worker_cpus(setting: str, available: frozenset[int]) -> frozenset[int] | None:
    """The CPUs the worker threads are kept on (None: anywhere), for ``authz.rego_worker_cpus``.

    ``auto``: the highest-numbered quarter of ``available``, at least one CPU, when there
    are two or more (with one, there is nothing to keep apart); ``all``: anywhere; a CPU
    list: those of its CPUs authd may use, which must be at least one.
    """
    if setting == "all" or (setting == "auto" and len(available) < 2):
        return None
    if setting == "auto":
        ordered = sorted(available)
        return frozenset(ordered[-max(1, len(ordered) // 4) :])
    chosen = parse_cpu_list(setting) & available
    if not chosen:
        raise PolicyError(
            f"authz.rego_worker_cpus = {setting!r}: authd may not run on any of these CPUs"
            f" (it may run on {format_cpu_list(available)})"
        )
    return chosen


def _set_apart(cpus: frozenset[int] | None, said: threading.Lock) -> None:
    """A worker yields the CPU to the event loop's thread: on its own CPUs, it runs only when
    they have nothing else to do (SCHED_IDLE); elsewhere, at a lower priority (Linux sets
    both thread by thread; 0 is the calling thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:  # e.g. a seccomp filter without @resources' calls: EPERM
        if said.acquire(blocking=False):  # one line per pool (never released), not per thread
            log.warning(
                "the Rego worker threads cannot be set apart from the event loop (%s);"
                " a slow policy will slow other callers' checks (a systemd unit must allow"
                " setpriority, sched_setaffinity and sched_setscheduler)",
                exc.strerror or exc,
            )


def _pool(workers: int, cpus: frozenset[int] | None) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get((workers, cpus))
        if pool is None:
            # Named after their CPUs ("rego@3_0"), as ``top -H`` and ``ps -L`` show them.
            name = "rego" if cpus is None else f"rego@{format_cpu_list(cpus)}"
            pool = _pools[workers, cpus] = ThreadPoolExecutor(
                workers,
                thread_name_prefix=name,
                initializer=_set_apart,
                initargs=(cpus, threading.Lock()),
            )
        return pool


def configured_off_loop(policy: RegoPolicy, authz: AuthzConfig) -> OffLoopRego:
    """``policy`` with the workers and CPUs of ``authz.rego_workers`` and
    ``authz.rego_worker_cpus`` (PolicyError when none of those CPUs may be used)."""
    cpus = worker_cpus(authz.rego_worker_cpus, available_cpus())
    return OffLoopRego(policy, workers=authz.rego_workers, cpus=cpus)


class OffLoopRego:
    """A ``RegoPolicy`` that moves its evaluations to worker threads once one was slow."""

    def __init__(
        self,
        policy: RegoPolicy,
        workers: int = DEFAULT_WORKERS,
        budget: float = INLINE_BUDGET,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.policy = policy
        self.name = policy.name
        self.workers = workers
        self.cpus = cpus  # where the workers run (None: anywhere); see ``worker_cpus``
        self.budget = budget
        self.offloading = False
        self.offloaded = 0  # evaluations run on a worker thread, for tests and metrics

    def __getattr__(self, name: str) -> Any:  # cache counters, entrypoint, ...
        return getattr(self.policy, name)

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        policy = self.policy
        if not self.offloading:
            started = time.thread_time()
            decision = await policy.evaluate(ctx, identities, input_document)
            if self.workers and time.thread_time() - started > self.budget:
                self.offloading = True
                log.warning(
                    "%s: an evaluation took %.1f ms; evaluating off the event loop from now on"
                    " (%d threads, CPUs %s)",
                    self.name,
                    (time.thread_time() - started) * 1000,
                    self.workers,
                    "any" if self.cpus is None else format_cpu_list(self.cpus),
                )
            return decision
        paths = policy.input_paths
        pruned = getattr(input_document, "pruned", None) if paths is not None else None
        if pruned is None or paths is None:
            return await self._off_loop(policy.evaluate_document, input_document())
        part = pruned(paths)
        cached = policy.cached(part)
        if cached is not None:
            return cached
        return await self._off_loop(policy.evaluate_pruned, part)

    async def _off_loop(self, evaluate: Callable[[Any, bool], _T], document: Any) -> _T:
        self.offloaded += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_pool(self.workers, self.cpus), evaluate, document, True)

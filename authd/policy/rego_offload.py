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
evaluation, so the loop and the other workers run meanwhile. The workers run at a lower
CPU priority (``WORKER_NICENESS``): on a busy machine the loop's thread, which serves every
transport and every cheap check, gets the CPU first, and the slow policy's checks take
longer instead. The first slow evaluation is the one that still holds the loop. At most
``workers`` evaluations run at once; a cheap one waits behind slow ones only when all
workers are busy. ``workers = 0`` keeps every evaluation inline. The threads are shared by
every policy of the process with the same number of workers (a reload starts none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from authd.check.model import CheckContext, Decision, Identities
from authd.policy.base import InputDocument
from authd.policy.rego import RegoPolicy

log = logging.getLogger(__name__)

# Thread CPU seconds an inline evaluation may take before the policy leaves the loop.
INLINE_BUDGET: Final = 0.002
DEFAULT_WORKERS: Final = 4
# Added to the worker threads' nice value, so that on a busy machine the loop's thread (all
# transports, every cheap check) gets the CPU before a slow evaluation does.
WORKER_NICENESS: Final = 10

_T = TypeVar("_T")
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _lower_priority() -> None:
    """A worker yields the CPU to the event loop's thread: Linux nices threads one by one."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(
                workers, thread_name_prefix="rego", initializer=_lower_priority
            )
        return pool


class OffLoopRego:
    """A ``RegoPolicy`` that moves its evaluations to worker threads once one was slow."""

    def __init__(
        self, policy: RegoPolicy, workers: int = DEFAULT_WORKERS, budget: float = INLINE_BUDGET
    ) -> None:
        self.policy = policy
        self.name = policy.name
        self.workers = workers
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
                    "%s: an evaluation took %.1f ms; evaluating off the event loop from now on",
                    self.name,
                    (time.thread_time() - started) * 1000,
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
        return await loop.run_in_executor(_pool(self.workers), evaluate, document, True)

"""What running a check coroutine costs: EagerTask against a bare send and a scheduled Task.

Run on purpose, never as a timed test:

    python bench/eager_step.py [--n 200000] [--rounds 5]

Each row drives ``--n`` coroutines that finish without waiting (the common check: caches and
an in-memory policy), on asyncio's loop and on uvloop, and prints the best of ``--rounds``
in µs per coroutine:

- ``bare send``: ``coro.send(None)`` with no task at all (authd up to issue 15: cheapest, but
  ``asyncio.timeout``, ``TaskGroup`` and ``current_task()`` fail inside);
- ``run_eagerly``: ``authd.transport.eager.run_eagerly`` (an ``EagerTask`` current from the
  first step, in its own context copy);
- ``create_task``: a real asyncio Task per coroutine, awaited (what a transport would do
  without an eager path).

A fourth row, ``run_eagerly+wait``, has each coroutine wait once on a future set right
away (the path of an engine that waits, such as OPA), for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from authd.transport.eager import run_eagerly


async def decide(box: list[int]) -> int:
    box[0] += 1
    return box[0]


async def decide_after_wait(fut: asyncio.Future[int]) -> int:
    return await fut


def send_once(coro: Coroutine[Any, Any, int], done: Callable[[Any, Any], None]) -> None:
    """The fast path of authd's run_eagerly before issue 15: no task at all."""
    try:
        coro.send(None)
    except StopIteration as stop:
        done(stop.value, None)


def bare(n: int) -> float:
    box = [0]
    seen: list[Any] = []
    start = time.perf_counter()
    for _ in range(n):
        send_once(decide(box), lambda result, exc: seen.append(result))
    return time.perf_counter() - start


def eager(n: int) -> float:
    box = [0]
    seen: list[Any] = []
    start = time.perf_counter()
    for _ in range(n):
        run_eagerly(decide(box), lambda result, exc: seen.append(result))
    return time.perf_counter() - start


async def tasks(n: int) -> float:
    box = [0]
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for _ in range(n):
        await loop.create_task(decide(box))
    return time.perf_counter() - start


async def eager_wait(n: int) -> float:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for _ in range(n):
        finished: asyncio.Future[Any] = loop.create_future()
        fut: asyncio.Future[int] = loop.create_future()
        run_eagerly(decide_after_wait(fut), lambda result, exc, f=finished: f.set_result(result))
        fut.set_result(1)
        await finished
    return time.perf_counter() - start


def measure(
    run: Callable[[Coroutine[Any, Any, float]], float], n: int, rounds: int
) -> dict[str, float]:
    async def sync(fn: Callable[[int], float]) -> float:
        return fn(n)

    rows: dict[str, Callable[[], Coroutine[Any, Any, float]]] = {
        "bare send": lambda: sync(bare),
        "run_eagerly": lambda: sync(eager),
        "create_task": lambda: tasks(n),
        "run_eagerly+wait": lambda: eager_wait(n),
    }
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, make in rows.items():  # interleaved, so drift hits every row alike
            seconds = run(make())
            best[name] = min(best.get(name, float("inf")), seconds / n * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = {
        "asyncio": measure(asyncio.run, args.n, args.rounds),
        "uvloop": measure(uvloop.run, args.n, args.rounds),
    }
    print(
        f"{'µs per coroutine (best of ' + str(args.rounds) + ')':<34}{'asyncio':>10}{'uvloop':>10}"
    )
    for name in results["asyncio"]:
        print(f"{name:<34}{results['asyncio'][name]:>10.2f}{results['uvloop'][name]:>10.2f}")


if __name__ == "__main__":
    main()

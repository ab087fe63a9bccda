"""run_eagerly: a coroutine that never waits finishes at once; one that waits finishes later."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from authd.transport.eager import run_eagerly

LOOPS: dict[str, Callable[[Any], Any]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    return LOOPS[request.param]


def test_a_coroutine_that_never_waits_is_done_before_run_eagerly_returns(run: Any) -> None:
    async def decide() -> str:
        return "allow"

    async def main() -> list[tuple[object, object]]:
        seen: list[tuple[object, object]] = []
        run_eagerly(decide(), lambda result, exc: seen.append((result, exc)))
        return seen

    assert run(main()) == [("allow", None)]


def test_a_coroutine_that_waits_on_a_pending_future_resumes_with_its_result(run: Any) -> None:
    async def decide(ready: asyncio.Event, later: asyncio.Future[str]) -> str:
        await ready.wait()  # pending when run_eagerly hands over to a task
        return await later + "!"

    async def main() -> list[tuple[object, object]]:
        seen: list[tuple[object, object]] = []
        done = asyncio.Event()
        ready = asyncio.Event()
        later: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def finished(result: object, exc: object) -> None:
            seen.append((result, exc))
            done.set()

        run_eagerly(decide(ready, later), finished)
        assert seen == []
        await asyncio.sleep(0)
        ready.set()
        await asyncio.sleep(0.001)
        later.set_result("allow")
        await asyncio.wait_for(done.wait(), 5)
        return seen

    assert run(main()) == [("allow!", None)]


def test_an_exception_after_a_wait_reaches_done(run: Any) -> None:
    async def decide() -> str:
        await asyncio.sleep(0.001)
        raise ValueError("broken")

    async def main() -> BaseException | None:
        outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        run_eagerly(decide(), lambda result, exc: outcome.set_result(exc))
        return await asyncio.wait_for(outcome, 5)

    error = run(main())
    assert isinstance(error, ValueError) and str(error) == "broken"

"""run_eagerly: a coroutine that never waits finishes at once; one that waits finishes later."""

from __future__ import annotations

import asyncio
import contextvars
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


def outcome_of() -> tuple[Callable[[object, BaseException | None], None], Any]:
    """A ``done`` callback for run_eagerly and the future it resolves with (result, exc)."""
    future: asyncio.Future[tuple[object, BaseException | None]] = (
        asyncio.get_running_loop().create_future()
    )

    def done(result: object, exc: BaseException | None) -> None:
        future.set_result((result, exc))

    return done, future


def test_the_coroutine_runs_in_one_current_task_from_its_first_step(run: Any) -> None:
    seen: list[object] = []

    async def decide() -> str:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
        return "allow"

    async def main() -> tuple[object, object]:
        caller = asyncio.current_task()
        done, outcome = outcome_of()
        task = run_eagerly(decide(), done)
        assert asyncio.current_task() is caller  # the caller's task is current again
        assert seen == [task] and task is not None and not task.done()
        return await asyncio.wait_for(outcome, 5)

    assert run(main()) == ("allow", None)
    assert seen[0] is seen[1] and seen[0] is not None


def test_a_coroutine_that_never_waits_runs_in_a_task_too(run: Any) -> None:
    async def decide() -> bool:
        return asyncio.current_task() is not None

    async def main() -> list[tuple[object, object]]:
        seen: list[tuple[object, object]] = []
        assert run_eagerly(decide(), lambda result, exc: seen.append((result, exc))) is None
        return seen

    assert run(main()) == [(True, None)]


def test_asyncio_timeout_expires_into_timeout_error(run: Any) -> None:
    async def decide() -> str:
        async with asyncio.timeout(0):  # already due: expires on the next loop iteration
            await asyncio.Event().wait()
        return "never"

    async def main() -> tuple[object, BaseException | None]:
        done, outcome = outcome_of()
        run_eagerly(decide(), done)
        return await asyncio.wait_for(outcome, 5)

    result, error = run(main())
    assert result is None and isinstance(error, TimeoutError)


def test_asyncio_timeout_that_does_not_expire_returns_the_result(run: Any) -> None:
    async def decide(later: asyncio.Future[str]) -> str:
        async with asyncio.timeout(60):
            answer = await later
        async with asyncio.timeout(60):  # entered after the first wait, on the same task
            await asyncio.sleep(0)
        return answer

    async def main() -> tuple[object, object]:
        later: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        done, outcome = outcome_of()
        run_eagerly(decide(later), done)
        later.set_result("allow")
        return await asyncio.wait_for(outcome, 5)

    assert run(main()) == ("allow", None)


def test_a_task_group_inside_the_coroutine_runs_its_children(run: Any) -> None:
    async def child(value: str) -> str:
        await asyncio.sleep(0)
        return value

    async def decide() -> str:
        async with asyncio.TaskGroup() as group:
            first = group.create_task(child("al"))
            second = group.create_task(child("low"))
        return first.result() + second.result()

    async def main() -> tuple[object, object]:
        done, outcome = outcome_of()
        run_eagerly(decide(), done)
        return await asyncio.wait_for(outcome, 5)

    assert run(main()) == ("allow", None)


def test_a_failing_task_group_child_cancels_the_coroutine_and_reports_the_group(
    run: Any,
) -> None:
    async def broken() -> None:
        await asyncio.sleep(0)
        raise ValueError("broken")

    async def decide() -> str:
        async with asyncio.TaskGroup() as group:
            group.create_task(broken())
            await asyncio.Event().wait()  # cancelled by the group when the child fails
        return "never"

    async def main() -> tuple[object, BaseException | None]:
        done, outcome = outcome_of()
        run_eagerly(decide(), done)
        return await asyncio.wait_for(outcome, 5)

    _, error = run(main())
    assert isinstance(error, ExceptionGroup)
    assert [str(e) for e in error.exceptions] == ["broken"]


def test_context_variables_set_in_the_coroutine_stay_in_its_task(run: Any) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="caller")

    async def decide() -> str:
        var.set("check")
        await asyncio.sleep(0)
        return var.get()

    async def main() -> tuple[object, object]:
        done, outcome = outcome_of()
        run_eagerly(decide(), done)
        assert var.get() == "caller"
        return await asyncio.wait_for(outcome, 5)

    assert run(main()) == ("check", None)


def test_cancelling_the_task_cancels_the_coroutine_where_it_waits(run: Any) -> None:
    cleaned: list[bool] = []

    async def decide() -> str:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)
        return "never"

    async def main() -> tuple[object, BaseException | None]:
        done, outcome = outcome_of()
        task = run_eagerly(decide(), done)
        assert task is not None
        assert task.cancel()
        result = await asyncio.wait_for(outcome, 5)
        assert task.done() and task.cancelled() and not task.cancel()
        return result

    _, error = run(main())
    assert isinstance(error, asyncio.CancelledError) and cleaned == [True]

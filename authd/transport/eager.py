"""Run a coroutine eagerly: to completion right now if it never waits, else as a task.

Most checks never wait (identities come from caches, policies are in memory), and creating
an asyncio Task per request costs more than the decision. Python 3.12's eager task factory
does this; on 3.11 we drive the coroutine ourselves until it first yields a future.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_eagerly(
    coro: Coroutine[Any, Any, T], done: Callable[[T | None, BaseException | None], None]
) -> asyncio.Future[T] | None:
    """Call ``done(result, None)`` or ``done(None, exc)`` when ``coro`` finishes.

    Returns the task that goes on driving ``coro`` if it had to wait (cancel it to cancel
    the coroutine), or None if ``coro`` is already finished.
    """
    try:
        pending = coro.send(None)
    except StopIteration as stop:
        done(stop.value, None)
        return None
    except Exception as exc:
        done(None, exc)
        return None
    task = asyncio.ensure_future(_resume(coro, pending))

    def finished(task: asyncio.Future[T]) -> None:
        if task.cancelled():
            done(None, asyncio.CancelledError())
        elif task.exception() is not None:
            done(None, task.exception())
        else:
            done(task.result(), None)

    task.add_done_callback(finished)
    return task


async def _resume(coro: Coroutine[Any, Any, T], pending: Any) -> T:
    """Continue driving ``coro`` from where ``run_eagerly`` left it, inside a task."""
    while True:
        if pending is None:
            await asyncio.sleep(0)
        else:
            # The coroutine reads the outcome (result, exception or cancellation) itself when
            # resumed, exactly as under a Task; cancelling this task cancels ``pending`` first.
            # Yielding the future marked it as awaited; a Task clears that mark before waiting
            # on it, and so must we, or awaiting it again fails ("await wasn't used with
            # future") whenever it is still pending here.
            pending._asyncio_future_blocking = False
            with contextlib.suppress(BaseException):
                await pending
        try:
            pending = coro.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

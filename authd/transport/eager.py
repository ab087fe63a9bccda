"""Run a coroutine eagerly: to completion right now if it never waits, else on the loop.

Most checks never wait (identities come from caches, policies are in memory), and scheduling
an asyncio Task per request costs more than the decision. Python 3.12's eager task factory
does this; on 3.11 ``EagerTask`` does the same: it steps the coroutine at once, with itself
as the loop's current task and in its own copy of the context, and only a coroutine that
waits goes on being stepped from the loop. So ``asyncio.timeout``, ``asyncio.TaskGroup``,
``asyncio.current_task()`` and context variables behave as they do under a Task, from the
first step on, and one task object stays current for the coroutine's whole life.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio import tasks
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# How an event loop makes a task current (3.11's asyncio; its own Tasks use the same calls).
current_task = tasks.current_task
# What current_task reads (a dict of loop → task), read directly on the hot path: one Python
# call less per check.
_current_tasks: dict[asyncio.AbstractEventLoop, Any] = tasks._current_tasks  # type: ignore[attr-defined]
enter_task: Callable[[asyncio.AbstractEventLoop, Any], None] = tasks._enter_task
leave_task: Callable[[asyncio.AbstractEventLoop, Any], None] = tasks._leave_task


class EagerTask(Generic[T]):
    """A coroutine driven like an asyncio Task, whose first step runs synchronously.

    ``on_done(result, None)`` or ``on_done(None, exc)`` is called once, as soon as the
    coroutine finishes (for a coroutine that never waits: within its first step). It has the Task
    methods that code inside the coroutine relies on (``asyncio.timeout``, ``TaskGroup``):
    ``cancel`` (which cancels the awaited future, as a Task does), ``cancelling``,
    ``uncancel``, ``done``, ``cancelled``, ``get_loop``, ``get_coro``, ``get_context``,
    ``get_name``. It is not a Future and not in ``asyncio.all_tasks()``: nothing awaits it,
    ``on_done`` is its one callback, and its owner cancels it (the transports do on reset).
    """

    __slots__ = (
        "_cancel_message",
        "_cancel_requests",
        "_cancelled",
        "_context",
        "_coro",
        "_finished",
        "_loop",
        "_must_cancel",
        "_on_done",
        "_waiter",
    )

    def __init__(
        self,
        coro: Coroutine[Any, Any, T],
        on_done: Callable[[T | None, BaseException | None], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._coro = coro
        self._loop = loop
        self._context = contextvars.copy_context()
        self._on_done = on_done
        self._waiter: asyncio.Future[Any] | None = None
        self._must_cancel = False
        self._cancel_message: Any = None
        self._cancel_requests = 0
        self._finished = False
        self._cancelled = False

    # -- the Task interface code inside the coroutine uses ---------------------------------

    def cancel(self, msg: Any = None) -> bool:
        """Ask the coroutine to stop: CancelledError is raised where it waits."""
        if self._finished:
            return False
        self._cancel_requests += 1
        waiter = self._waiter
        if waiter is not None and waiter.cancel(msg=msg):
            return True  # the coroutine sees CancelledError when it resumes
        self._must_cancel = True
        self._cancel_message = msg
        return True

    def cancelling(self) -> int:
        return self._cancel_requests

    def uncancel(self) -> int:
        if self._cancel_requests > 0:
            self._cancel_requests -= 1
        return self._cancel_requests

    def done(self) -> bool:
        return self._finished

    def cancelled(self) -> bool:
        return self._cancelled

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def get_coro(self) -> Coroutine[Any, Any, T]:
        return self._coro

    def get_context(self) -> contextvars.Context:
        return self._context

    def get_name(self) -> str:
        return f"EagerTask-{id(self):x}"

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "finished" if self._finished else "pending"
        return f"<{self.get_name()} {state} coro={self._coro!r}>"

    # -- stepping --------------------------------------------------------------------------

    def _step(self, exc: BaseException | None) -> None:
        if self._finished:
            return
        if self._must_cancel:
            exc = asyncio.CancelledError(self._cancel_message)
            self._must_cancel = False
        loop = self._loop
        # As in 3.12's eager start: a task that is current (run_eagerly may be called from
        # inside one) steps aside while this one runs, and is current again afterwards.
        previous = _current_tasks.get(loop)
        if previous is not None:
            leave_task(loop, previous)
        enter_task(loop, self)
        try:
            try:
                if exc is None:
                    yielded = self._context.run(self._coro.send, None)
                else:
                    yielded = self._context.run(self._coro.throw, exc)
            finally:
                leave_task(loop, self)
                if previous is not None:
                    enter_task(loop, previous)
        except StopIteration as stop:
            if self._must_cancel:
                self._finish(stop.value, None)
            else:  # _finish's usual case, without the call
                self._finished = True
                self._on_done(stop.value, None)
        except (KeyboardInterrupt, SystemExit) as error:
            self._finish(None, error)
            raise
        except BaseException as error:  # CancelledError included: the coroutine's outcome
            self._finish(None, error)
        else:
            self._wait_on(yielded)

    def _wait_on(self, yielded: Any) -> None:
        loop = self._loop
        if yielded is None:  # a bare yield (asyncio.sleep(0)): step again next iteration
            loop.call_soon(self._step, None)
            return
        if not getattr(yielded, "_asyncio_future_blocking", False):
            error = RuntimeError(f"eager task got a bad yield: {yielded!r}")
            loop.call_soon(self._step, error)
            return
        if asyncio.futures._get_loop(yielded) is not loop:  # type: ignore[attr-defined]
            error = RuntimeError(f"eager task got a future of another loop: {yielded!r}")
            loop.call_soon(self._step, error)
            return
        # A Task clears the mark before waiting on the future; so must we.
        yielded._asyncio_future_blocking = False
        yielded.add_done_callback(self._wakeup)
        self._waiter = yielded
        if self._must_cancel and yielded.cancel(msg=self._cancel_message):
            self._must_cancel = False

    def _wakeup(self, future: asyncio.Future[Any]) -> None:
        self._waiter = None
        try:
            future.result()
        except BaseException as exc:
            self._step(exc)
        else:
            self._step(None)

    def _finish(self, result: T | None, exc: BaseException | None) -> None:
        if exc is None and self._must_cancel:
            # Cancelled after its last wait: it ends cancelled, as a Task does.
            exc = asyncio.CancelledError(self._cancel_message)
            self._must_cancel = False
        self._finished = True
        if exc is None:
            self._on_done(result, None)
            return
        self._cancelled = isinstance(exc, asyncio.CancelledError)
        self._on_done(None, exc)


def run_eagerly(
    coro: Coroutine[Any, Any, T],
    done: Callable[[T | None, BaseException | None], None],
    loop: asyncio.AbstractEventLoop | None = None,
) -> EagerTask[T] | None:
    """Call ``done(result, None)`` or ``done(None, exc)`` when ``coro`` finishes.

    ``coro`` runs in an ``EagerTask`` on ``loop`` (default: the running loop; a connection
    passes the one it runs on, since asking costs a getpid() system call per check). Returns
    that task if ``coro`` had to wait (cancel it to cancel the coroutine), or None if
    ``coro`` is already finished.
    """
    task = EagerTask(coro, done, loop or asyncio.get_running_loop())
    task._step(None)  # the first step, now
    return None if task._finished else task

"""Where admin operations run: one thread of their own, never the serving event loop.

Operations call the store, which may take up to its socket timeout to answer; on the loop
that would stall every ext_authz Check the daemon serves. They run one at a time, in the
order their calls arrived, as they did on the loop, so an acknowledged change is in place
(stored, audited, in the in-memory views) before the next operation starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class OperationWorker:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="authd-admin")

    async def run(self, operation: Callable[[], T]) -> T:
        """``operation()`` on the worker thread, after every operation submitted before it."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, operation)

    def close(self) -> None:
        """Start nothing new; an operation already running finishes on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)

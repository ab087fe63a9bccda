"""A version counter that asyncio streams can wait on, bumped from any thread.

The SVID provider and the SDS CRL feed both tell open streams "something changed; send the
new state": the change may come from the serving loop (an admin call) or from another
thread (a replica following the shared store), and waking an asyncio waiter from another
thread must go through the loop.
"""

from __future__ import annotations

import asyncio


class ChangeSignal:
    def __init__(self) -> None:
        self.version = 0
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bump(self) -> None:
        """Record a change and wake the waiters (safe from any thread)."""
        self.version += 1
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            loop.call_soon_threadsafe(self._wake)

    async def wait(self, version: int, timeout: float | None = None) -> bool:
        """Wait until the version differs from ``version``; False if ``timeout`` passed first."""
        self._loop = asyncio.get_running_loop()
        if self.version != version:
            return True
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return self.version != version
        return True

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

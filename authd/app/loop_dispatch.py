"""Callbacks from other threads reach the serving loop's state only through the loop.

The CA notifies its listeners from whichever thread changed the authorities: the serving
loop for an admin call, a worker thread for a scheduled rotation (``asyncio.to_thread``, so a
store that does not answer cannot stall ext_authz). The listeners touch state the loop owns
(SVID caches, stream signals), so a call from another thread is handed to the loop with
``call_soon_threadsafe``; a call on the loop's own thread runs at once, as before.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

__all__ = ["Notify", "on_loop"]

#: How a notifier calls one listener.
Notify = Callable[[Callable[[], None]], None]


def on_loop(loop: asyncio.AbstractEventLoop) -> Notify:
    """A notify function that runs each listener on ``loop``'s thread.

    Call it on that loop (it records the loop's thread).
    """
    loop_thread = threading.get_ident()

    def notify(listener: Callable[[], None]) -> None:
        if threading.get_ident() == loop_thread:
            listener()
        else:
            loop.call_soon_threadsafe(listener)

    return notify

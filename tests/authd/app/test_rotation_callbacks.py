"""Authority changes reach the serving loop's state only on the loop's thread.

A scheduled rotation runs on a worker thread (a store that does not answer must not stall
ext_authz); the CA's listeners (SVID caches, stream signals, the remote admin SVID) belong to
the loop, so they must run there, whichever thread changed the authorities.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from authd.app.daemon import Daemon
from authd.app.loop_dispatch import on_loop
from authd.config import load_config
from ca.clock import FakeClock

NOT_SERVED = {"authz.grpc_address": "", "authz.http_address": "", "authz.metrics_address": ""}


def test_listeners_of_a_scheduled_rotation_run_on_the_loop_thread(workdir: Path) -> None:
    config = load_config(None, env={}, overrides={"data_dir": workdir / "data", **NOT_SERVED})
    clock = FakeClock()

    async def scenario() -> tuple[list[int], int]:
        daemon = Daemon(config, clock=clock)
        await daemon.start()
        try:
            threads: list[int] = []
            daemon.ca.add_listener(lambda: threads.append(threading.get_ident()))
            clock.advance(config.ca.ca_ttl // 2 + 60)  # the next authority is due
            await daemon.rotate()
            async with asyncio.timeout(10):
                while not threads:
                    await asyncio.sleep(0.01)
            return threads, threading.get_ident()
        finally:
            await daemon.close()

    threads, loop_thread = asyncio.run(scenario())
    assert threads == [loop_thread]


def test_a_listener_called_on_the_loop_thread_runs_at_once() -> None:
    async def scenario() -> list[str]:
        calls: list[str] = []
        notify = on_loop(asyncio.get_running_loop())
        notify(lambda: calls.append("now"))
        return calls

    assert asyncio.run(scenario()) == ["now"]


def test_a_listener_called_from_another_thread_runs_later_on_the_loop() -> None:
    async def scenario() -> tuple[list[int], int]:
        threads: list[int] = []
        notify = on_loop(asyncio.get_running_loop())
        await asyncio.to_thread(notify, lambda: threads.append(threading.get_ident()))
        async with asyncio.timeout(10):
            while not threads:
                await asyncio.sleep(0.01)
        return threads, threading.get_ident()

    threads, loop_thread = asyncio.run(scenario())
    assert threads == [loop_thread]

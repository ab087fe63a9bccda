"""A slow store never stalls the event loop that answers every SDS stream.

The store here is a real SQLite store whose chosen method waits at a gate the test opens:
while one stream's issuance-log write or CRL build is held there, another stream on the
same server still gets its answer. Were the write or the build done on the event loop, the
loop would wait at the gate (the gate gives up after a while, and says so, rather than hang).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ca.store import IssuanceRecord, Revocation, SQLiteStore
from tests.support.sds import WEB, EnvoyStream, run, secrets, world

GATE_GIVES_UP = 10.0  # only if the test is broken: the gate is opened by the test itself


class GatedStore(SQLiteStore):
    """A SQLite store whose ``gated`` method, once armed, waits until the test opens the gate."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.gated = ""  # "record_issuances" or "list_revocations"
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gave_up = False

    def _pass_gate(self, method: str) -> None:
        if self.gated == method and not self.gate.is_set():
            self.entered.set()
            if not self.gate.wait(GATE_GIVES_UP):
                self.gave_up = True

    def record_issuances(self, records: Sequence[IssuanceRecord]) -> None:
        self._pass_gate("record_issuances")
        super().record_issuances(records)

    def list_revocations(self, target_kind: str | None = None) -> list[Revocation]:
        self._pass_gate("list_revocations")
        return super().list_revocations(target_kind)


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.DEBUG):
        yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def answered_while_held(
    workdir: Path, gated: str, held_asks: list[str], other_asks: list[str], **options: Any
) -> tuple[Any, Any]:
    """One stream asks ``held_asks`` (which reaches the gated store method) and is held there;
    another then asks ``other_asks``. Returns both responses, checking the other came first."""
    async with world(workdir, store_type=GatedStore, **options) as w:
        store = w.store
        assert isinstance(store, GatedStore)
        w.add_entry(WEB)
        async with w.channel() as held_channel, w.channel() as other_channel:
            store.gated = gated
            held = EnvoyStream(held_channel)
            await held.ask(held_asks)
            held_response = asyncio.ensure_future(held.response())
            await w.until("the store to be entered", store.entered.is_set)

            other = EnvoyStream(other_channel)
            await other.ask(other_asks)
            other_response = await other.response()
            assert not store.gave_up, "the loop waited at the gate"
            assert not held_response.done()

            store.gate.set()
            return await held_response, other_response


def test_a_slow_issuance_log_write_does_not_stall_other_streams(workdir: Path) -> None:
    held, other = run(answered_while_held(workdir, "record_issuances", ["default"], ["ALL"]))
    assert list(secrets(held)) == ["default"]
    assert list(secrets(other)) == ["ALL"]


def test_a_slow_crl_build_does_not_stall_other_streams(workdir: Path) -> None:
    held, other = run(
        answered_while_held(workdir, "list_revocations", ["ROOTCA"], ["ALL"], crl_refresh=60)
    )
    assert secrets(held)["ROOTCA"].validation_context.crl.inline_bytes
    assert list(secrets(other)) == ["ALL"]

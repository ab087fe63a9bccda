"""The issuance log, written behind issuance in small batches (group commit).

One SQLite commit per SVID would cost more than signing it, so records are queued and a
writer thread commits them together, at most ``max_delay`` seconds after the first one was
queued. Readers call ``flush()`` first, so what the CA has issued is always visible to the
admin API. The price, stated in the README: a crash of the process can lose the log records
of the last ``max_delay`` seconds (the SVIDs themselves remain valid and verifiable).
"""

from __future__ import annotations

import contextlib
import logging
import threading

from ca.store import AlreadyExists, IssuanceRecord, Store

log = logging.getLogger(__name__)


class IssuanceLog:
    def __init__(self, store: Store, *, max_delay: float = 0.02, max_batch: int = 512) -> None:
        self._store = store
        self._max_delay = max_delay
        self._max_batch = max_batch
        self._pending: list[IssuanceRecord] = []
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._closed = False
        self._writer = threading.Thread(target=self._run, name="issuance-log", daemon=True)
        self._writer.start()

    def append(self, record: IssuanceRecord) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("issuance log is closed")
            self._pending.append(record)
            if len(self._pending) == 1 or len(self._pending) >= self._max_batch:
                self._cond.notify()

    def flush(self) -> None:
        """Commit everything queued so far before returning."""
        with self._write_lock:
            with self._cond:
                batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                self._store.record_issuances(batch)
            except AlreadyExists:
                # One duplicate must not block the rest: write them one by one.
                for record in batch:
                    with contextlib.suppress(AlreadyExists):
                        self._store.record_issuance(record)
            except BaseException:
                with self._cond:  # keep them, in order, for the next attempt
                    self._pending[:0] = batch
                raise

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._writer.join()
        self.flush()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                if len(self._pending) < self._max_batch:
                    self._cond.wait(self._max_delay)
            try:
                self.flush()
            except Exception:
                log.exception("issuance log: writing a batch failed; retrying in 1s")
                with self._cond:
                    self._cond.wait(1.0)

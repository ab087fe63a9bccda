"""Uploading decision events to a log service the way OPA's decision log plugin does.

Events are gathered into gzip-compressed JSON arrays no bigger than
``upload_size_limit_bytes`` (``ChunkEncoder``), kept in a buffer bounded by
``buffer_size_limit_bytes`` that drops its oldest chunks first (``ChunkBuffer``), and POSTed
to ``<service url>/<resource>`` with ``Content-Type: application/json`` and
``Content-Encoding: gzip`` by a thread of their own (``Uploader``): after a successful round
it waits a random delay between ``min_delay_seconds`` and ``max_delay_seconds``; after a
failure (a connection error or a status outside 2xx) it puts the chunk back and retries with
exponential backoff from 100 ms up to ``max_delay_seconds``. Nothing here ever blocks a
check: the encoder and buffer are fed by the decision log writer thread.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

__all__ = ["ChunkBuffer", "ChunkEncoder", "LogCounters", "Uploader", "backoff_delay"]

_GZIP = 31  # zlib wbits for a gzip container
_TRAILER = 2 + 8 + 64  # "]", the gzip trailer, and a final deflate block's worst case
_MIN_RETRY_DELAY = 0.1
_UPLOAD_TIMEOUT = 30.0


class LogCounters:
    """What happened to decision events, by kind; published as ``authd_decision_logs``."""

    KINDS = (
        "logged",
        "dropped_by_policy",
        "dropped_queue_full",
        "dropped_rate_limit",
        "dropped_buffer_size_limit_bytes_exceeded",
        "encoding_failure",
        "mask_failure",
        "uploaded",
        "upload_failures",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.KINDS, 0)

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {kind: float(count) for kind, count in self._counts.items()}


class ChunkEncoder:
    """Gathers encoded events into gzip chunks, each at most ``limit`` bytes compressed.

    Each event is compressed onto a copy of the current stream and sync-flushed, so the
    compressed size so far is known exactly; an event that does not fit starts a new chunk,
    one that does not fit even alone is dropped (``encoding_failure``).
    """

    def __init__(self, limit: int, counters: LogCounters) -> None:
        self._limit = limit
        self._counters = counters
        self._start()

    def _start(self) -> None:
        self._stream = zlib.compressobj(6, zlib.DEFLATED, _GZIP)
        self._data: list[bytes] = []
        self._size = 0
        self.events = 0

    def write(self, event: bytes) -> list[tuple[bytes, int]]:
        """Add one JSON-encoded event; returns the chunks completed by it (bytes, events)."""
        done: list[tuple[bytes, int]] = []
        if not self._add(event):
            if self.events:
                done.append(self.flush_chunk())
            if not self._add(event):
                self._counters.add("encoding_failure")
                log.error(
                    "decision event of %d bytes exceeds decision_logs.upload_size_limit_bytes "
                    "(%d) compressed: dropped",
                    len(event),
                    self._limit,
                )
                self._start()
        return done

    def _add(self, event: bytes) -> bool:
        trial = self._stream.copy()
        piece = trial.compress(b"," if self.events else b"[") + trial.compress(event)
        piece += trial.flush(zlib.Z_SYNC_FLUSH)
        if self._size + len(piece) + _TRAILER > self._limit:
            return False
        self._stream = trial
        self._data.append(piece)
        self._size += len(piece)
        self.events += 1
        return True

    def flush_chunk(self) -> tuple[bytes, int]:
        """The current chunk, closed (empty bytes when there is none), and a new one begun."""
        if not self.events:
            return b"", 0
        chunk = b"".join(self._data) + self._stream.compress(b"]") + self._stream.flush()
        events = self.events
        self._start()
        return chunk, events


class ChunkBuffer:
    """Chunks waiting for upload, at most ``limit`` bytes: the oldest go first when full."""

    def __init__(self, limit: int, counters: LogCounters) -> None:
        self._limit = limit
        self._counters = counters
        self._chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self.ready = threading.Event()

    def push(self, chunk: tuple[bytes, int], *, front: bool = False) -> None:
        dropped = 0
        with self._lock:
            if front:
                self._chunks.appendleft(chunk)
            else:
                self._chunks.append(chunk)
            self._bytes += len(chunk[0])
            while self._bytes > self._limit and len(self._chunks) > 1:
                old, events = self._chunks.popleft()
                self._bytes -= len(old)
                dropped += events
        if dropped:
            self._counters.add("dropped_buffer_size_limit_bytes_exceeded", dropped)
            log.error(
                "dropped %d decision events from the upload buffer: reduce "
                "decision_logs.max_delay_seconds or raise buffer_size_limit_bytes",
                dropped,
            )
        self.ready.set()

    def pop(self) -> tuple[bytes, int] | None:
        with self._lock:
            if not self._chunks:
                return None
            chunk = self._chunks.popleft()
            self._bytes -= len(chunk[0])
            return chunk

    def __len__(self) -> int:
        with self._lock:
            return len(self._chunks)

    @property
    def size(self) -> int:
        with self._lock:
            return self._bytes


def backoff_delay(retries: int, maximum: float, rand: Callable[[], float] = random.random) -> float:
    """OPA's DefaultBackoff: 100 ms doubled per retry, jittered ±20%, at most ``maximum``."""
    delay = _MIN_RETRY_DELAY * (2.0 ** min(retries, 32))
    delay = min(delay, maximum)
    return max(0.0, delay * (0.8 + 0.4 * rand()))


class Uploader:
    """POSTs the buffer's chunks to ``url`` on a thread of its own."""

    def __init__(
        self,
        url: str,
        buffer: ChunkBuffer,
        counters: LogCounters,
        *,
        min_delay: float,
        max_delay: float,
        headers: Mapping[str, str] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._url = url
        self._buffer = buffer
        self._counters = counters
        self._min = min_delay
        self._max = max_delay
        self._headers = dict(headers or {})
        self._rand = rand
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-log-upload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def upload_now(self) -> None:
        """Start the next round now instead of after the delay (tests, and shutdown)."""
        self._wake.set()

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop; one last round is tried first, as OPA flushes its buffer on shutdown."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=flush_timeout)

    def _run(self) -> None:
        retries = 0
        while True:
            ok = self.upload_round()
            if self._stop.is_set():
                return
            if ok:
                retries = 0
                delay = self._min + (self._max - self._min) * self._rand()
            else:
                delay = backoff_delay(retries, self._max, self._rand)
                retries += 1
            self._wake.wait(delay)
            self._wake.clear()

    def upload_round(self) -> bool:
        """Upload every chunk in the buffer; on the first failure put it back and stop."""
        while (chunk := self._buffer.pop()) is not None:
            error = self._post(chunk[0])
            if error:
                self._buffer.push(chunk, front=True)
                self._counters.add("upload_failures")
                log.warning("decision log upload to %s failed: %s", self._url, error)
                return False
            self._counters.add("uploaded", chunk[1])
        return True

    def _post(self, body: bytes) -> str:
        """POST one chunk; the reason it failed, or "" when the service took it."""
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        # The URL is http(s), checked by the config (decision_logs.service_url).
        request = urllib.request.Request(self._url, body, headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=_UPLOAD_TIMEOUT) as reply:  # noqa: S310
                reply.read(65536)
                status = reply.status
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # refused, reset, timed out, bad URL
            return type(exc).__name__ + (f": {exc.reason}" if hasattr(exc, "reason") else "")
        return "" if 200 <= status < 300 else f"HTTP {status}"

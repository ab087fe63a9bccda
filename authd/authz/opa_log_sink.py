"""Decision logs in OPA's format: the sink the pipeline writes each decided check to.

On the check's path only a bounded queue put happens (a full queue drops the event and counts
it, ``dropped_queue_full``). A writer thread then does the rest, as OPA's decision log
plugin: builds the event (``authd.authz.opa_decision_log``) with the input document the
policy saw, evaluates ``system.log.drop`` and ``system.log.mask`` on it in the Rego engine
(``authd.policy.rego_log_rules``; an event whose mask rules fail is not logged, as in OPA),
adds the metrics, writes it as one JSON line to the file (mode 0600) and to standard output
when ``console`` is on, and hands it to the uploader (``authd.authz.log_upload``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.metadata
import json
import logging
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from authd.authz.decision_log import DecisionSink
from authd.authz.log_upload import ChunkBuffer, ChunkEncoder, LogCounters, Uploader
from authd.authz.opa_decision_log import decision_event, mask_input, rfc3339_nanos, with_metrics
from authd.authz.opa_log_mask import MaskError, apply_mask, mask_rules
from authd.authz.pipeline import logged_input
from authd.check.model import CheckContext, Decision, Outcome, PolicyTrace, Reason
from authd.config.decision_logs import DecisionLogSettings
from authd.config.model import Config
from authd.policy.base import PolicyError
from authd.policy.rego_source import normalize_entrypoint
from authd.policy.result import UNDEFINED, ResultMapping

if TYPE_CHECKING:
    from authd.policy.rego_log_rules import LogRules

log = logging.getLogger(__name__)

__all__ = [
    "FanOut",
    "OpaDecisionLog",
    "build_opa_decision_log",
    "console_line",
    "open_log_file",
    "traced",
]

_STOP = object()
# Reasons of checks authd refused before any policy ran (no policy result to log).
_REFUSED_FIRST = frozenset(
    {
        Reason.INVALID_CREDENTIALS,
        Reason.REVOKED,
        Reason.STALE,
        Reason.STORE_REGRESSED,
        Reason.MALFORMED_REQUEST,
    }
)
_FLUSH_EVERY = 1.0  # seconds the file and the current chunk wait at most


def open_log_file(path: Path) -> IO[str]:
    """``path`` opened for appending, created 0600 (and made 0600 if it was wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1 << 16)
    except BaseException:
        os.close(fd)
        raise


class _RateLimit:
    """A token bucket of ``rate`` events per second (OPA's ``max_decisions_per_second``)."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = max(1.0, rate)
        self._tokens = self._burst
        self._clock = clock
        self._last = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class OpaDecisionLog:
    """Writes OPA-format decision events; ``start()`` runs its threads, ``close()`` ends them."""

    def __init__(
        self,
        settings: DecisionLogSettings,
        *,
        path: str = "",
        version: str = "",
        rules: LogRules | None = None,
        opa_envoy: bool = True,
        file: IO[str] | None = None,
        bundles: Callable[[], Mapping[str, str]] = dict,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.counters = LogCounters()
        self._path = path
        self._labels = {"id": str(uuid.uuid4()), "version": version, **dict(settings.labels)}
        self._rules = rules
        self._opa_envoy = opa_envoy
        self._file = file
        self._bundles = bundles
        self._clock_ns = clock_ns
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_size)
        self._limit = (
            _RateLimit(settings.max_decisions_per_second, monotonic)
            if settings.max_decisions_per_second > 0
            else None
        )
        self._encoder: ChunkEncoder | None = None
        self.buffer: ChunkBuffer | None = None
        self.uploader: Uploader | None = None
        if settings.upload_url:
            self._encoder = ChunkEncoder(settings.upload_size_limit_bytes, self.counters)
            self.buffer = ChunkBuffer(settings.buffer_size_limit_bytes, self.counters)
            self.uploader = Uploader(
                settings.upload_url,
                self.buffer,
                self.counters,
                min_delay=float(settings.min_delay_seconds),
                max_delay=float(settings.max_delay_seconds),
                headers=dict(settings.service_headers),
            )
        self._flushed = threading.Condition()
        self._done = 0  # queue items the writer finished
        self._sent = 0  # queue items put
        self._thread = threading.Thread(target=self._run, name="decision-log-writer", daemon=True)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._labels)

    def start(self) -> None:
        self._thread.start()
        if self.uploader is not None:
            self.uploader.start()

    # --- on the check's path ---------------------------------------------------------------

    def write(
        self, ctx: CheckContext, outcome: Outcome, policy: str, elapsed: float, *, dry_run: bool
    ) -> None:
        try:
            self._queue.put_nowait((ctx, outcome, elapsed, self._clock_ns()))
        except queue.Full:
            self.counters.add("dropped_queue_full")
            return
        self._sent += 1

    def flush(self) -> None:
        """Nothing to do on the check's path: the writer flushes on its own."""

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        last_flush = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=_FLUSH_EVERY)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._flush_outputs()
                return
            if item is not None:
                try:
                    self._log(*item)
                except Exception:  # never let one event end the writer
                    log.exception("decision event could not be logged")
                    self.counters.add("encoding_failure")
                if self._queue.empty() and self._file is not None:
                    with contextlib.suppress(OSError, ValueError):
                        self._file.flush()  # a burst is over: the file has it all
                with self._flushed:
                    self._done += 1
                    self._flushed.notify_all()
            if item is None or time.monotonic() - last_flush >= _FLUSH_EVERY:
                self._flush_outputs()
                if self._rules is not None:
                    self._rules = self._rules.refreshed()
                last_flush = time.monotonic()

    def _flush_outputs(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError, ValueError):
                self._file.flush()
        if self._encoder is not None and self.buffer is not None and self._encoder.events:
            self.buffer.push(self._encoder.flush_chunk())

    def _log(self, ctx: CheckContext, outcome: Outcome, elapsed: float, at_ns: int) -> None:
        event = self.event(ctx, outcome, elapsed, at_ns)
        if event is None:
            return
        if self._limit is not None and not self._limit.allow():
            self.counters.add("dropped_rate_limit")
            return
        line = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        if self._file is not None:
            self._file.write(line + "\n")
        if self.settings.console:
            sys.stdout.write(console_line(event, at_ns) + "\n")
        if self._encoder is not None and self.buffer is not None:
            for chunk in self._encoder.write(line.encode("utf-8")):
                self.buffer.push(chunk)
        self.counters.add("logged")

    def event(
        self, ctx: CheckContext, outcome: Outcome, elapsed: float, at_ns: int
    ) -> dict[str, Any] | None:
        """The event for one decided check, dropped (None) or masked by the policy's rules."""
        trace = outcome.decision.trace
        error: dict[str, Any] | None = None
        result: Any = None
        reason = outcome.decision.reason
        if trace is None and reason in _REFUSED_FIRST:
            error = {"message": f"decided by authd before the policy: {reason}"}
        elif trace is None:  # the rules engine: its answer as a boolean rule's
            result = outcome.decision.allowed
        elif trace.result is UNDEFINED:
            error = {"message": "undefined decision"}
        else:
            result = copy.deepcopy(trace.result)  # a cached decision shares it; masks change it
        try:
            document: Any = logged_input(ctx, outcome.identities, self._opa_envoy)
        except Exception:  # a request that has no input document (denied as malformed)
            document = None
        event = decision_event(
            decision_id=outcome.decision_id,
            path=self._path,
            input_document=document,
            result=result,
            timestamp_ns=at_ns,
            labels=self._labels,
            bundles=self._bundles(),
            requested_by=ctx.destination_principal,
            error=error,
        )
        if document is None:
            del event["input"]
        if self._rules is not None and not self._apply_rules(event):
            return None
        metrics = {"timer_server_handler_ns": int(elapsed * 1e9)}
        if trace is not None and trace.eval_ns:
            metrics["timer_rego_query_eval_ns"] = trace.eval_ns
        return with_metrics(event, metrics)

    def _apply_rules(self, event: dict[str, Any]) -> bool:
        """Drop or mask ``event`` as the rules say; False when it is not to be logged."""
        assert self._rules is not None
        seen = mask_input(event)
        try:
            drop, masks = self._rules.evaluate(seen)
            if drop:
                self.counters.add("dropped_by_policy")
                return False
            if masks is not UNDEFINED:
                apply_mask(event, mask_rules(masks))
        except (PolicyError, MaskError) as exc:
            # As OPA: a drop or mask rule that fails means the event is not logged.
            self.counters.add("mask_failure")
            log.error("decision log masking failed, event not logged: %s", exc)
            return False
        return True

    # --- tests and shutdown -------------------------------------------------------------------

    def wait_written(self, timeout: float = 10.0) -> bool:
        """Wait until every event put so far has been handled by the writer."""
        target = self._sent
        with self._flushed:
            return self._flushed.wait_for(lambda: self._done >= target, timeout=timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=10)
        if self.uploader is not None:
            self.uploader.stop()
        if self._file is not None:
            with contextlib.suppress(OSError, ValueError):
                self._file.close()


def console_line(event: Mapping[str, Any], at_ns: int) -> str:
    """The event as OPA's console logger prints it: one JSON object, keys sorted, with the
    logger's ``level``, ``msg``, ``time`` and ``type`` added."""
    fields = {
        **event,
        "level": "info",
        "msg": "Decision Log",
        "time": rfc3339_nanos(at_ns - at_ns % 1_000_000_000),
        "type": "openpolicyagent.org/decision_logs",
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def traced(results: ResultMapping) -> ResultMapping:
    """``results`` that also keep the policy's result on the Decision, for the event."""

    def mapping(result: Any, rule: str) -> Decision:
        decision = results(result, rule)
        decision.trace = PolicyTrace(result)
        return decision

    return mapping


class FanOut:
    """Several decision sinks written to as one (authd's own log and OPA's format)."""

    def __init__(self, *sinks: DecisionSink) -> None:
        self._sinks = sinks

    def write(
        self, ctx: CheckContext, outcome: Outcome, policy: str, elapsed: float, *, dry_run: bool
    ) -> None:
        for sink in self._sinks:
            sink.write(ctx, outcome, policy, elapsed, dry_run=dry_run)


def _version() -> str:
    try:
        return importlib.metadata.version("authd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_opa_decision_log(
    config: Config, *, bundles: Callable[[], Mapping[str, str]] = dict
) -> OpaDecisionLog | None:
    """The OPA-format decision log the config asks for (``[decision_logs]``), not started.

    The drop and mask rules come from the Rego modules of ``authz.rego_files`` (the Rego
    engine); with other engines nothing is dropped or masked. ``bundles`` gives the
    revision of each loaded bundle by name (events carry them as ``bundles``).
    """
    settings = config.decision_logs
    if not settings.enabled:
        return None
    authz = config.authz
    rules = None
    path = ""
    if authz.policy_engine == "rego":
        from authd.policy.rego_log_rules import LogRules

        path = normalize_entrypoint(authz.rego_entrypoint)
        files = [config.resolve_path(f) for f in authz.rego_files]
        rules = LogRules.load(files, settings.mask_decision, settings.drop_decision)
    elif authz.policy_engine == "opa":
        path = normalize_entrypoint(authz.opa_path)
    if settings.service_token_path:
        token_file = config.resolve_path(settings.service_token_path)
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PolicyError(f"decision_logs.service_token_path: {exc.strerror}") from None
        scheme = settings.service_token_scheme
        headers = (*settings.service_headers, ("authorization", f"{scheme} {token}"))
        settings = dataclasses.replace(settings, service_headers=headers)
    file = open_log_file(config.resolve_path(settings.file)) if settings.file else None
    return OpaDecisionLog(
        settings,
        path=path,
        version=_version(),
        rules=rules,
        opa_envoy=authz.compat == "opa-envoy",
        file=file,
        bundles=bundles,
    )

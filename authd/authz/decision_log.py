"""Decision logs: one JSON line per check, with credentials never written.

What a line holds: the decision id (also in Envoy's dynamic metadata and the upstream
header, to join with access logs), the verified caller, a request summary, the rule that
decided, the latency. Header values and query values are never logged: tokens travel there.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import IO, TYPE_CHECKING, Any, Protocol

from authd.check.model import CheckContext

if TYPE_CHECKING:
    from authd.check.model import Outcome


class DecisionSink(Protocol):
    """What the pipeline writes each decided check to (this log, or OPA's format)."""

    def write(
        self, ctx: CheckContext, outcome: Outcome, policy: str, elapsed: float, *, dry_run: bool
    ) -> None: ...


class DecisionLog:
    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    @classmethod
    def open(cls, target: str) -> DecisionLog:
        """``-`` is standard output; anything else is a file path, appended to."""
        if target == "-":
            return cls(sys.stdout)
        return cls(open(target, "a", encoding="utf-8", buffering=1 << 16))

    def write(
        self, ctx: CheckContext, outcome: Outcome, policy: str, elapsed: float, *, dry_run: bool
    ) -> None:
        decision = outcome.decision
        identities = outcome.identities
        record: dict[str, Any] = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "decision_id": outcome.decision_id,
            "transport": ctx.transport,
            "decision": "allow" if decision.allowed else "deny",
            "status": outcome.status,
            "reason": str(decision.reason),
            "rule": decision.rule,
            "policy": policy,
            "dry_run": dry_run,
            "caller": str(identities.caller) if identities.caller else None,
            "user": identities.user.subject if identities.user else None,
            "api_key": identities.api_key,
            "txn": outcome.txn or None,
            "request": {
                "id": ctx.request_id or None,
                "method": ctx.method,
                "host": ctx.host,
                "path": ctx.path_only,
                "query_keys": sorted(ctx.query) if "?" in ctx.path else [],
            },
            "latency_us": round(elapsed * 1e6, 1),
        }
        if identities.problems:
            record["problems"] = [{"kind": p.kind, "reason": p.reason} for p in identities.problems]
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
        if self._stream is not sys.stdout:
            self._stream.close()

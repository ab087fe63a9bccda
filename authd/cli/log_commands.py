"""`authd log --txn ID`: one transaction's decisions, from this node's decision log file.

The decision log (``authz.decision_log``) is read directly: it is a local file of JSON lines
the daemon appends to (flushed every second), not state behind the admin API. Lines that are
not JSON records (a line cut by a crash, another program's output) are skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from authd.cli.client import CommandError, cli_config
from authd.cli.errors import Exit, usage_error
from authd.cli.output import print_json


def _log_path(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    target = cli_config(args).authz.decision_log
    if not target:
        raise CommandError(
            "failed precondition: no decision log: authz.decision_log is not set", Exit.FAILED
        )
    if target == "-":
        raise CommandError(
            "failed precondition: the decision log goes to standard output "
            '(authz.decision_log = "-"); give the file it is written to with --file',
            Exit.FAILED,
        )
    return cli_config(args).resolve_path(target)


def matching(path: Path, txn: str) -> list[dict[str, Any]]:
    """The records of ``path`` whose ``txn`` is ``txn``, in the order they were written."""
    found = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if f'"{txn}"' not in line:  # cheap: most lines are other transactions
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("txn") == txn:
                found.append(record)
    return found


def cmd_log(args: argparse.Namespace) -> int:
    if not args.txn:
        raise usage_error("--txn: give the transaction id (a Txn-Token's txn)")
    path = _log_path(args)
    try:
        records = matching(path, args.txn)
    except OSError as exc:
        raise CommandError(
            f"not found: cannot read the decision log {path}: {exc.strerror}", Exit.NOT_FOUND
        ) from None
    if args.json:
        print_json({"records": records})
        return 0
    count = len(records)
    print(f"Found {count} {'decision' if count == 1 else 'decisions'} of transaction {args.txn}")
    for r in records:
        request = r.get("request") or {}
        print(
            f"{r.get('time', '-')}  {r.get('decision', '-')} {r.get('status', '-')}  "
            f"reason={r.get('reason', '-')}  rule={r.get('rule') or '-'}  "
            f"caller={r.get('caller') or '-'}  {request.get('method', '')} "
            f"{request.get('host', '')}{request.get('path', '')}  id={r.get('decision_id', '-')}"
        )
    return 0

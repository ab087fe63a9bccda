"""`authd sds status`: the Envoys connected over SDS, what they were sent and what they took."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.client import ask
from authd.cli.output import print_json, table, when

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[Any]  # what add_subparsers returns


def in_step(stream: admin_pb2.SdsStream) -> bool:
    """Envoy accepted the last response it was sent (or has been sent nothing yet)."""
    return stream.responses == 0 or stream.acked_version == stream.sent_version


def refused_latest(stream: admin_pb2.SdsStream) -> bool:
    """Envoy refused (NACKed) the last response it was sent."""
    return bool(stream.last_nack) and stream.nacked_version == stream.sent_version


def stream_state(stream: admin_pb2.SdsStream) -> str:
    if refused_latest(stream):
        return "refused"
    return "in step" if in_step(stream) else "awaiting ack"


def stream_json(stream: admin_pb2.SdsStream) -> dict[str, Any]:
    return {
        "node_id": stream.node_id,
        "cluster": stream.cluster,
        "pid": stream.pid,
        "uid": stream.uid,
        "resource_names": list(stream.resource_names),
        "state": stream_state(stream),
        "sent_version": stream.sent_version,
        "acked_version": stream.acked_version,
        "responses": stream.responses,
        "acks": stream.acks,
        "nacks": stream.nacks,
        "last_nack": stream.last_nack,
        "nacked_version": stream.nacked_version,
        "opened_at": when(stream.opened_at),
    }


def cmd_sds_status(args: argparse.Namespace) -> int:
    reply = ask(args, "ListSdsStreams", admin_pb2.ListSdsStreamsRequest())
    if args.json:
        print_json({"serving": reply.serving, "streams": [stream_json(s) for s in reply.streams]})
        return 0
    if not reply.serving:
        print("this daemon does not serve SDS (workload.enabled = false)")
        return 0
    if not reply.streams:
        print("no Envoy is connected over SDS")
        return 0
    rows = [
        [
            s.node_id or "(no node id)",
            f"{s.pid}/{s.uid}",
            ",".join(s.resource_names),
            stream_state(s),
            s.acked_version[:12] or "-",
            when(s.opened_at),
            s.last_nack,
        ]
        for s in reply.streams
    ]
    headers = ["NODE", "PID/UID", "SECRETS", "STATE", "ACKED", "SINCE", "LAST NACK"]
    print("\n".join(table(headers, rows)))
    return 0


def add_sds_commands(commands: Subparsers, client: argparse.ArgumentParser) -> None:
    """Register `authd sds status` (``client`` holds the flags that find the daemon)."""
    sds = commands.add_parser("sds", help="Envoys connected over SDS").add_subparsers(
        dest="sds_command", metavar="<command>", required=True
    )
    status = sds.add_parser(
        "status",
        parents=[client],
        help="each connected Envoy: its node, secrets, accepted version and last NACK",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_sds_status)

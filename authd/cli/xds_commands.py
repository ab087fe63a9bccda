"""`authd policy explain` and `authd xds status`: the native fast path, as the daemon sees it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.client import ask
from authd.cli.output import print_json, table, when

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[Any]  # what add_subparsers returns


def node_state(node: admin_pb2.XdsNode, version: str) -> str:
    if node.last_nack and node.nacked_version == node.sent_version:
        return "refused"
    return "in step" if node.acked_version == version else "awaiting ack"


def cmd_policy_explain(args: argparse.Namespace) -> int:
    reply = ask(args, "ExplainNativePolicy", admin_pb2.ExplainNativePolicyRequest())
    rules = [
        {
            "rule_set": r.rule_set,
            "rule": r.rule,
            "line": r.line,
            "effect": r.effect,
            "runs": "native" if r.native else "ext_authz",
            "why": r.why,
        }
        for r in reply.rules
    ]
    if args.json:
        print_json(
            {
                "enabled": reply.enabled,
                "version": reply.version,
                "filter_name": reply.filter_name,
                "config_bytes": reply.config_bytes,
                "identities": reply.identities,
                "revoked": reply.revoked,
                "last_refusal": reply.last_refusal,
                "rules": rules,
            }
        )
        return 0
    state = "on" if reply.enabled else "off ([xds] enabled = false; shown as it would run)"
    print(
        f"native fast path: {state}; config {reply.version or '-'} ({reply.config_bytes} bytes, "
        f"{reply.identities} identities, {reply.revoked} revoked)"
    )
    if reply.last_refusal:
        print(f"last config refused by authd: {reply.last_refusal}")
    if not rules:
        print("no rules compiled (no rules file, or its rule set is unknown)")
        return 0
    rows = [
        [r["rule_set"], r["rule"], str(r["line"]), r["effect"], r["runs"], r["why"]] for r in rules
    ]
    print("\n".join(table(["RULE SET", "RULE", "LINE", "EFFECT", "RUNS IN", "WHY"], rows)))
    return 0


def cmd_xds_status(args: argparse.Namespace) -> int:
    reply = ask(args, "ListXdsNodes", admin_pb2.ListXdsNodesRequest())
    nodes = [
        {
            "node_id": n.node_id,
            "cluster": n.cluster,
            "pid": n.pid,
            "uid": n.uid,
            "resource_names": list(n.resource_names),
            "state": node_state(n, reply.version),
            "sent_version": n.sent_version,
            "acked_version": n.acked_version,
            "nacks": n.nacks,
            "last_nack": n.last_nack,
            "nacked_version": n.nacked_version,
            "lag_seconds": round(n.lag_seconds, 3),
            "opened_at": when(n.opened_at),
        }
        for n in reply.nodes
    ]
    if args.json:
        print_json({"enabled": reply.enabled, "version": reply.version, "nodes": nodes})
        return 0
    if not reply.enabled:
        print("this daemon does not serve the native fast path ([xds] enabled = false)")
        return 0
    print(f"serving RBAC config {reply.version or '-'}")
    if not nodes:
        print("no Envoy is connected over ECDS")
        return 0
    rows = [
        [
            n["node_id"] or "(no node id)",
            f"{n['pid']}/{n['uid']}",
            n["state"],
            n["acked_version"] or "-",
            f"{n['lag_seconds']:.1f}s",
            n["opened_at"],
            n["last_nack"],
        ]
        for n in nodes
    ]
    headers = ["NODE", "PID/UID", "STATE", "APPLIED", "LAG", "SINCE", "LAST NACK"]
    print("\n".join(table(headers, rows)))
    return 0


def add_policy_explain(policy: Subparsers, client: argparse.ArgumentParser) -> None:
    """Register `authd policy explain` under the `policy` command group."""
    explain = policy.add_parser(
        "explain",
        parents=[client],
        help="each rule: decided natively in Envoy's RBAC filter or by ext_authz, and why",
    )
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.set_defaults(func=cmd_policy_explain)


def add_xds_commands(commands: Subparsers, client: argparse.ArgumentParser) -> None:
    """Register `authd xds status`."""
    xds = commands.add_parser("xds", help="Envoys fed the RBAC filter over ECDS").add_subparsers(
        dest="xds_command", metavar="<command>", required=True
    )
    status = xds.add_parser(
        "status",
        parents=[client],
        help="each connected Envoy: applied RBAC config, state, lag and last NACK",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_xds_status)

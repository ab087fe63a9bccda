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
    if node.serving_version:  # a daemon that says what it serves this stream
        version = node.serving_version
    return "in step" if node.acked_version == version else "awaiting ack"


def missing_filters(reply: admin_pb2.ListXdsNodesResponse) -> dict[str, list[str]]:
    """Per node id: the filters authd serves that no stream of that node asks for (a
    sidecar without the revocation filter does not enforce revocations natively)."""
    served = {r.filter_name for r in reply.resources}
    asked: dict[str, set[str]] = {}
    for node in reply.nodes:
        asked.setdefault(node.node_id, set()).update(node.resource_names)
    return {
        node_id: sorted(served - names)
        for node_id, names in asked.items()
        if names & served and served - names
    }


NATIVE_ONLY_NOTE = (
    "[xds] native_only is on: no ext_authz behind RBAC; what would go to it is denied "
    "(requests with a credential header or without a client certificate, paths that need "
    "normalising, a revoked entry's SPIFFE ID, and what the rules below marked DENIED decide)"
)


# Without a revocation filter (always with native_only): revoked IDs are in the rules filter.
REVOCATIONS_IN_RULES = "revocations: in the rules filter"


def denied_line(rule: admin_pb2.NativeRuleRouting) -> str:
    return (
        f"warning: {rule.effect} rule {rule.rule!r} ({rule.rule_set} line {rule.line}) needs "
        f"ext_authz ({rule.why}): [xds] native_only denies the requests it would decide"
    )


def routing_row(rule: admin_pb2.NativeRuleRouting, native_only: bool) -> dict[str, Any]:
    runs = "native" if rule.native else "DENIED (native_only)" if native_only else "ext_authz"
    why = rule.why
    if native_only and not rule.native:
        why = f"needs ext_authz: {why}"
    return {
        "rule_set": rule.rule_set,
        "rule": rule.rule,
        "line": rule.line,
        "effect": rule.effect,
        "runs": runs,
        "why": why,
    }


def unserved_filters(reply: admin_pb2.ListXdsNodesResponse) -> dict[str, list[str]]:
    """Per node id: the filters it asks for that authd does not serve (that Envoy keeps their
    default_config: the shipped rules filters deny everything). A sidecar without ext_authz
    (``authd.rbac.native_only``) against an authd with ``[xds] native_only`` off, or the
    other way round, shows here."""
    served = {r.filter_name for r in reply.resources}
    asked: dict[str, set[str]] = {}
    for node in reply.nodes:
        asked.setdefault(node.node_id, set()).update(node.resource_names)
    return {node_id: sorted(names - served) for node_id, names in asked.items() if names - served}


def cmd_policy_explain(args: argparse.Namespace) -> int:
    reply = ask(args, "ExplainNativePolicy", admin_pb2.ExplainNativePolicyRequest())
    rules = [routing_row(r, reply.native_only) for r in reply.rules]
    if args.json:
        print_json(
            {
                "enabled": reply.enabled,
                "version": reply.version,
                "filter_name": reply.filter_name,
                "config_bytes": reply.config_bytes,
                "identities": reply.identities,
                "revoked": reply.revoked,
                "revoked_filter_name": reply.revoked_filter_name,
                "revoked_version": reply.revoked_version,
                "revoked_config_bytes": reply.revoked_config_bytes,
                "last_refusal": reply.last_refusal,
                "native_only": reply.native_only,
                "rules": rules,
            }
        )
        return 0
    state = "on" if reply.enabled else "off ([xds] enabled = false; shown as it would run)"
    print(
        f"native fast path: {state}; config {reply.version or '-'} ({reply.config_bytes} bytes, "
        f"{reply.identities} identities, {reply.revoked} revoked)"
    )
    if reply.revoked_filter_name:
        print(
            f"revocation filter {reply.revoked_filter_name}: config {reply.revoked_version} "
            f"({reply.revoked_config_bytes} bytes, {reply.revoked} revoked)"
        )
    elif reply.enabled or reply.native_only:
        print(f"{REVOCATIONS_IN_RULES} ({reply.revoked} revoked)")
    if reply.last_refusal:
        print(f"last config refused by authd: {reply.last_refusal}")
    if reply.native_only:
        print(NATIVE_ONLY_NOTE)
    if not rules:
        print("no rules compiled (no rules file, or its rule set is unknown)")
        return 0
    rows = [
        [r["rule_set"], r["rule"], str(r["line"]), r["effect"], r["runs"], r["why"]] for r in rules
    ]
    print("\n".join(table(["RULE SET", "RULE", "LINE", "EFFECT", "RUNS IN", "WHY"], rows)))
    for rule in reply.rules if reply.native_only else ():
        if not rule.native:
            print(denied_line(rule))
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
            "serving_version": n.serving_version,
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
    resources = [
        {"filter_name": r.filter_name, "version": r.version, "config_bytes": r.config_bytes}
        for r in reply.resources
    ]
    missing = missing_filters(reply)
    unserved = unserved_filters(reply)
    if args.json:
        print_json(
            {
                "enabled": reply.enabled,
                "version": reply.version,
                "resources": resources,
                "nodes": nodes,
                "missing_filters": missing,
                "unserved_filters": unserved,
                "native_only": reply.native_only,
                "denied_rules": [routing_row(r, True) for r in reply.denied_rules],
            }
        )
        return 0
    if not reply.enabled:
        print("this daemon does not serve the native fast path ([xds] enabled = false)")
        return 0
    for r in resources or [{"filter_name": "RBAC", "version": reply.version, "config_bytes": 0}]:
        size = f"{r['config_bytes']} bytes"
        print(f"serving {r['filter_name']} config {r['version'] or '-'} ({size})")
    if reply.native_only:
        print(REVOCATIONS_IN_RULES)
        print(NATIVE_ONLY_NOTE)
        for rule in reply.denied_rules:
            print(denied_line(rule))
    if not nodes:
        print("no Envoy is connected over ECDS")
        return 0
    nodes.sort(key=lambda n: (n["node_id"], n["resource_names"]))
    rows = [
        [
            n["node_id"] or "(no node id)",
            ",".join(n["resource_names"]) or "-",
            f"{n['pid']}/{n['uid']}",
            n["state"],
            n["acked_version"] or "-",
            f"{n['lag_seconds']:.1f}s",
            n["opened_at"],
            n["last_nack"],
        ]
        for n in nodes
    ]
    headers = ["NODE", "FILTER", "PID/UID", "STATE", "APPLIED", "LAG", "SINCE", "LAST NACK"]
    print("\n".join(table(headers, rows)))
    for node_id, names in sorted(missing.items()):
        print(
            f"warning: node {node_id or '(no node id)'} does not ask for {', '.join(names)}: "
            "revoked SPIFFE IDs are not refused natively there (see README)"
        )
    for node_id, names in sorted(unserved.items()):
        print(
            f"warning: node {node_id or '(no node id)'} asks for {', '.join(names)}, which "
            "this daemon does not serve: that Envoy keeps the filter's default config there "
            "(deny all in the shipped configs); see [xds] native_only"
        )
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

"""`authd agent run|list|evict|ban` and `authd token generate` (README "Agents")."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.client import CommandError, ask, cli_config
from authd.cli.flags import duration_flag
from authd.cli.output import print_json, table, when

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[Any]

__all__ = ["add_agent_commands"]

JSON_HELP = "print one JSON document instead of text"


def cmd_agent_run(args: argparse.Namespace) -> int:
    import uvloop

    from authd.agent.run import AgentError, serve_agent

    config = cli_config(args)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        uvloop.run(serve_agent(config))
    except AgentError as exc:
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    return 0


def _agent_json(agent: admin_pb2.Agent) -> dict[str, Any]:
    return {
        "agent_id": agent.agent_id,
        "method": agent.method,
        "node_id": agent.node_id,
        "serial": agent.serial,
        "attested_at": when(agent.attested_at),
        "expires_at": when(agent.expires_at),
        "banned": agent.banned,
    }


def cmd_agent_list(args: argparse.Namespace) -> int:
    agents = ask(args, "ListAgents", admin_pb2.ListAgentsRequest()).agents
    if args.json:
        print_json({"agents": [_agent_json(a) for a in agents]})
        return 0
    rows = [
        [
            a.agent_id,
            a.method,
            a.node_id or "-",
            when(a.expires_at),
            "banned" if a.banned else "attested",
        ]
        for a in agents
    ]
    print("\n".join(table(["AGENT", "METHOD", "NODE ALIAS", "SVID EXPIRES", "STATE"], rows)))
    return 0


def _remove(args: argparse.Namespace, method: str, request: Any, verb: str) -> int:
    reply = ask(args, method, request)
    if args.json:
        print_json({"agent_id": args.agent_id, verb: True, "revoked": reply.revoked})
    else:
        print(f"{verb} {args.agent_id}; {reply.revoked} SVIDs revoked")
    return 0


def cmd_agent_evict(args: argparse.Namespace) -> int:
    request = admin_pb2.EvictAgentRequest(agent_id=args.agent_id)
    return _remove(args, "EvictAgent", request, "evicted")


def cmd_agent_ban(args: argparse.Namespace) -> int:
    return _remove(args, "BanAgent", admin_pb2.BanAgentRequest(agent_id=args.agent_id), "banned")


def cmd_token_generate(args: argparse.Namespace) -> int:
    request = admin_pb2.CreateJoinTokenRequest(
        spiffe_id=args.spiffe_id or "", ttl=duration_flag(args.ttl)
    )
    reply = ask(args, "CreateJoinToken", request)
    if args.json:
        print_json({"token": reply.token, "expires_at": when(reply.expires_at)})
    else:
        print(reply.token)
    return 0


def add_agent_commands(
    commands: Subparsers, common: argparse.ArgumentParser, client: argparse.ArgumentParser
) -> None:
    agent = commands.add_parser("agent", help="node agents").add_subparsers(
        dest="agent_command", metavar="<command>", required=True
    )
    run = agent.add_parser(
        "run", parents=[common], help="run an agent: attest, then serve the Workload API and SDS"
    )
    run.add_argument("--trust-domain", metavar="NAME", help="trust domain (default example.org)")
    run.set_defaults(func=cmd_agent_run)
    listing = agent.add_parser("list", parents=[client], help="the attested agents")
    listing.add_argument("--json", action="store_true", help=JSON_HELP)
    listing.set_defaults(func=cmd_agent_list)
    for name, func, text in (
        ("evict", cmd_agent_evict, "forget an agent (it may attest again) and revoke its SVIDs"),
        ("ban", cmd_agent_ban, "refuse an agent for good and revoke its SVIDs"),
    ):
        sub = agent.add_parser(name, parents=[client], help=text)
        sub.add_argument("agent_id", metavar="AGENT_ID", help="spiffe://<td>/authd/agent/...")
        sub.add_argument("--json", action="store_true", help=JSON_HELP)
        sub.set_defaults(func=func)

    token = commands.add_parser("token", help="join tokens for agents").add_subparsers(
        dest="token_command", metavar="<command>", required=True
    )
    generate = token.add_parser(
        "generate", parents=[client], help="print a single-use join token for one agent"
    )
    generate.add_argument(
        "--spiffe-id", metavar="ID", help="the node's alias, a parent_id its entries may name"
    )
    generate.add_argument("--ttl", metavar="DURATION", help="default: agent.join_token_ttl")
    generate.add_argument("--json", action="store_true", help=JSON_HELP)
    generate.set_defaults(func=cmd_token_generate)

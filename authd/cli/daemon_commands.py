"""`authd run` and `authd healthcheck`."""

from __future__ import annotations

import argparse
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authd.cli.client import CommandError, cli_config, connect


def cmd_run(args: argparse.Namespace) -> int:
    import uvloop

    from authd.app.daemon import StartupError, serve

    config = cli_config(args)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        uvloop.run(serve(config))
    except StartupError as exc:
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    return 0


def cmd_healthcheck(args: argparse.Namespace) -> int:
    with connect(args) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        except grpc.RpcError as exc:
            raise CommandError(f"authd is not serving: {exc.details()}") from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        raise CommandError(f"authd is not serving: {status}")
    if not args.quiet:
        print("authd is serving")
    return 0

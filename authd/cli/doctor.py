"""`authd doctor`: one line per check of a running authd, each failure with its fix."""

from __future__ import annotations

import argparse
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.cli.client import CommandError, call, cli_config, probe_socket
from authd.cli.errors import Exit
from authd.cli.output import ordered_authorities, print_json
from authd.cli.sds_commands import in_step, refused_latest
from authd.config import Config, format_duration

OK, WARN, FAIL, UNKNOWN = "ok", "warn", "FAIL", "n/a"
# An authority whose notBefore is this far ahead of our clock means the clocks disagree.
CLOCK_SLACK = 60


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f"  -> {self.fix}" if self.fix else ""
        return f"{self.status:<4}  {self.check}: {self.detail}{fix}"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_paths(config: Config) -> list[Finding]:
    """The data directory's mode and the sockets the daemon should have made."""
    found: list[Finding] = []
    data_dir = config.data_dir
    if not data_dir.is_dir():
        return [Finding("data dir", FAIL, f"{data_dir} does not exist", "start `authd run`")]
    mode = _mode(data_dir)
    found.append(
        Finding("data dir", OK, f"{data_dir} mode {mode:o}")
        if mode & 0o022 == 0
        else Finding(
            "data dir", FAIL, f"{data_dir} mode {mode:o} is writable by others", "chmod 711 it"
        )
    )
    sockets = [("admin socket", config.admin_socket_path)]
    if config.workload.enabled:
        sockets.append(("workload socket", config.workload_socket_path))
    for name, path in sockets:
        try:
            info = path.stat()
        except OSError:
            found.append(Finding(name, FAIL, f"no socket at {path}", "start `authd run`"))
            continue
        if not stat.S_ISSOCK(info.st_mode):
            found.append(Finding(name, FAIL, f"{path} is not a socket", f"remove {path}"))
        else:
            found.append(Finding(name, OK, f"{path} mode {stat.S_IMODE(info.st_mode):o}"))
    return found


def check_daemon(config: Config) -> Finding:
    try:
        probe_socket(config.admin_socket_path)
    except CommandError as exc:
        return Finding("daemon", FAIL, str(exc), "start `authd run` with this config")
    with grpc.insecure_channel(f"unix:{config.admin_socket_path}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        except grpc.RpcError as exc:
            return Finding("daemon", FAIL, f"not serving: {exc.details()}", "see its log")
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return Finding("daemon", FAIL, "not serving yet", "wait, or see its log")
    return Finding("daemon", OK, f"serving on {config.admin_socket_path}")


def check_store(admin: admin_pb2_grpc.AdminStub) -> Finding:
    try:
        call(admin.ListEntries, admin_pb2.ListEntriesRequest(spiffe_id="spiffe://doctor.invalid/x"))
    except CommandError as exc:
        unreachable = exc.exit_code == Exit.UNAVAILABLE
        fix = "check store.url and that the store is up" if unreachable else ""
        return Finding("store", FAIL, str(exc), fix)
    return Finding("store", OK, "reachable through the daemon")


def check_authorities(admin: admin_pb2_grpc.AdminStub, now: float) -> list[Finding]:
    """Each kind's active authority and its remaining life; a clock behind the CA's."""
    try:
        state = call(admin.ShowCA, admin_pb2.ShowCARequest())
    except CommandError as exc:
        return [Finding("authorities", FAIL, str(exc))]
    return authority_findings(state.authorities, now)


def authority_findings(listed: Iterable[admin_pb2.Authority], now: float) -> list[Finding]:
    """What the authorities say at ``now``: each kind's active one and its remaining life
    (a warning when under a sixth of it is left and none is prepared), and the clock."""
    found: list[Finding] = []
    authorities = ordered_authorities(listed)
    for kind in ("x509", "jwt"):
        active = [a for a in authorities if a.kind == kind and a.state == "active"]
        if not active:
            found.append(
                Finding(f"{kind} authority", FAIL, "none active", "see `authd authority show`")
            )
            continue
        a = active[0]
        left = a.not_after - now
        life = max(a.not_after - a.not_before, 1)
        detail = f"{a.authority_id} active, {format_duration(max(int(left), 0))} left"
        if left <= 0:
            found.append(Finding(f"{kind} authority", FAIL, f"{detail} (expired)", "see the log"))
        elif left < life / 6 and not any(
            b.kind == kind and b.state == "prepared" for b in authorities
        ):
            found.append(
                Finding(
                    f"{kind} authority",
                    WARN,
                    f"{detail}, none prepared",
                    f"`authd authority prepare --kind {kind}`",
                )
            )
        else:
            found.append(Finding(f"{kind} authority", OK, detail))
    newest = max((a.not_before for a in authorities), default=0)
    if newest - now > CLOCK_SLACK:
        found.append(
            Finding(
                "clock",
                FAIL,
                f"an authority starts {format_duration(int(newest - now))} after this clock",
                "sync the clocks (NTP) of this host and the CA",
            )
        )
    else:
        found.append(Finding("clock", OK, "no authority starts in this clock's future"))
    return found


def check_sds(admin: admin_pb2_grpc.AdminStub, workload_socket: Path) -> Finding:
    try:
        reply = call(admin.ListSdsStreams, admin_pb2.ListSdsStreamsRequest())
    except CommandError as exc:
        return Finding("envoy sds", FAIL, str(exc))
    return sds_finding(reply, workload_socket)


def sds_finding(reply: admin_pb2.ListSdsStreamsResponse, workload_socket: Path) -> Finding:
    """Which Envoys are connected over SDS, and whether each took what it was last sent."""
    if not reply.serving:
        return Finding("envoy sds", UNKNOWN, "this daemon does not serve SDS (workload disabled)")
    streams = list(reply.streams)
    if not streams:
        return Finding(
            "envoy sds",
            WARN,
            "no Envoy is connected over SDS",
            f"point each Envoy's sds_config at unix:{workload_socket} "
            "(see deploy/envoy/sidecar-sds.yaml)",
        )
    envoys = sorted({s.node_id or f"pid {s.pid}" for s in streams})
    refused = [s for s in streams if refused_latest(s)]
    if refused:
        first = refused[0]
        return Finding(
            "envoy sds",
            FAIL,
            f"{len(refused)} of {len(streams)} streams refused their secrets; "
            f"{first.node_id or f'pid {first.pid}'}: {first.last_nack}",
            "see that Envoy's log; it keeps its previous certificates until it accepts new ones",
        )
    waiting = sum(not in_step(s) for s in streams)
    tail = f"{waiting} awaiting Envoy's ACK" if waiting else "each on what it was last sent"
    return Finding(
        "envoy sds",
        OK,
        f"{len(envoys)} Envoys ({', '.join(envoys)}) on {len(streams)} streams, {tail}",
    )


def run_checks(config: Config, now: Callable[[], float] = time.time) -> list[Finding]:
    findings = check_paths(config)
    daemon = check_daemon(config)
    findings.append(daemon)
    if daemon.status == FAIL:
        return findings
    with grpc.insecure_channel(f"unix:{config.admin_socket_path}") as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        findings.append(check_store(admin))
        findings += check_authorities(admin, now())
        findings.append(check_sds(admin, config.workload_socket_path))
    return findings


def cmd_doctor(args: argparse.Namespace) -> int:
    findings = run_checks(cli_config(args))
    if args.json:
        print_json(
            {
                "healthy": all(f.status != FAIL for f in findings),
                "checks": [
                    {"check": f.check, "status": f.status.lower(), "detail": f.detail, "fix": f.fix}
                    for f in findings
                ],
            }
        )
    else:
        print("\n".join(f.line() for f in findings))
    return Exit.FAILED if any(f.status == FAIL for f in findings) else Exit.OK

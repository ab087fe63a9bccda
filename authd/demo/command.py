"""``authd demo run|up|down``: the entry points the CLI calls."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from authd.demo.processes import DemoError, ProcessTable, alive
from authd.demo.topology import SERVICES, Layout, Ports, Topology, spiffe_id
from authd.demo.walkthrough import walk

DEFAULT_STATE_DIR = Path("/tmp/authd-demo")  # noqa: S108 (one machine, root: a known place)


def _layout(
    state_dir: Path, port_base: int, authz: str, deploy_dir: Path | None, envoy: Path | None
) -> Layout:
    layout = Layout(
        state_dir=state_dir.resolve(), ports=Ports.from_base(port_base), authz=authz, envoy=envoy
    )
    if deploy_dir is not None:
        layout.deploy_dir = deploy_dir.resolve()
    if not (layout.deploy_dir / "policy.yaml").is_file():
        raise DemoError(f"no deploy/local found at {layout.deploy_dir} (pass --deploy-dir)")
    return layout


def describe_up(topology: Topology) -> list[str]:
    layout, ports = topology.layout, topology.layout.ports
    mode = {"http": "HTTP service mode", "grpc": "gRPC", "none": "none (no authz)"}[layout.authz]
    lines = [
        f"state directory: {layout.state_dir}  (logs in logs/, decisions in logs/decisions.jsonl)",
        f"authd: CA + ext_authz ({mode}) on 127.0.0.1:{ports.authd_http} (HTTP) and "
        f":{ports.authd_grpc} (gRPC); data {layout.data_dir}",
        f"local IdP: POST http://127.0.0.1:{ports.idp}/token?sub=NAME[&scope=S][&x5t=T] "
        "gives a user's JWT (scope 'orders:read pay' to reach payments)",
        f"API key (name {'demo-client'}): {layout.api_key_path}",
        f"front door (gateway Envoy, mints the Txn-Token): "
        f"http://127.0.0.1:{ports.front_door}/orders/ID, "
        f"https://127.0.0.1:{ports.front_door_tls}/orders/ID (client certificate optional)",
        f"orders sidecar (mTLS): 127.0.0.1:{ports.orders_inbound}; "
        f"payments sidecar (mTLS): 127.0.0.1:{ports.payments_inbound}",
    ]
    for service in SERVICES:
        lines.append(
            f"entry {service}: {spiffe_id(service)} <- unix:path:{layout.envoy_path(service)}, "
            f"unix:uid:{os.getuid()} (its Envoy's SVID over SDS)"
        )
    lines.append(f"authd CLI: authd --data-dir {layout.data_dir} --config {layout.config_path} ...")
    return lines


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (a `kill`, a closing terminal's supervisor) stops the demo as Ctrl-C does:
    through its cleanup, not around it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(
    state_dir: Path | None,
    port_base: int,
    authz: str,
    deploy_dir: Path | None,
    envoy: Path | None,
    keep: bool,
) -> bool:
    """Up, walk through every step, down (also on Ctrl-C or SIGTERM); the state directory is
    removed unless ``keep``."""
    with _sigterm_as_ctrl_c():
        return _run(state_dir, port_base, authz, deploy_dir, envoy, keep)


def _run(
    state_dir: Path | None,
    port_base: int,
    authz: str,
    deploy_dir: Path | None,
    envoy: Path | None,
    keep: bool,
) -> bool:
    made = state_dir is None
    directory = Path(tempfile.mkdtemp(prefix="authd-demo-")) if state_dir is None else state_dir
    topology: Topology | None = None
    try:
        layout = _layout(directory, port_base, authz, deploy_dir, envoy)
        if authz != "http":
            raise DemoError("the walkthrough needs --authz http (grpc and none are for `up`)")
        print("authd demo: starting authd, the local IdP, orders, payments and three Envoys ...")
        topology = Topology(layout)
        topology.up()
        for line in describe_up(topology):
            print(f"  {line}")
        return walk(topology)
    finally:
        if topology is not None:
            topology.down()
            print("authd demo: stopped every process it started")
        if made or not keep:
            shutil.rmtree(directory, ignore_errors=True)


def up(
    state_dir: Path, port_base: int, authz: str, deploy_dir: Path | None, envoy: Path | None
) -> None:
    table = ProcessTable(state_dir / "processes.json")
    if any(alive(p) for p in table.started):
        raise DemoError(f"a topology is already up in {state_dir}: authd demo down first")
    topology = Topology(_layout(state_dir, port_base, authz, deploy_dir, envoy))
    topology.up()
    for line in describe_up(topology):
        print(line)
    print(f"stop it with: authd demo down --state-dir {state_dir}")


def down(state_dir: Path, keep: bool) -> None:
    if not (state_dir / "processes.json").exists():
        raise DemoError(f"no topology in {state_dir}")
    ProcessTable(state_dir / "processes.json").stop_all()
    if not keep:
        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"stopped the topology in {state_dir}" + ("" if keep else " and removed it"))

"""How fast a rotation reaches open Workload API and SDS streams; daemon memory with entries.

Run on purpose, never as a timed test:

    python bench/workload_rotation.py [--streams 1000] [--sds 100] [--entries 10000]

Starts a real ``authd run`` (temp data dir), registers one entry for this process's uid plus
``--entries`` that match nobody, and measures the daemon's RSS. Then it opens ``--streams``
FetchX509SVID streams and ``--sds`` SDS StreamSecrets streams, prepares and activates a new
X.509 authority and taints the old one, which forces every SVID to be re-issued at once.
The figure is, per stream, the time from the taint call to the stream's first message
carrying an SVID signed by the new authority; the table gives p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.api.spiffe.workload import workload_pb2, workload_pb2_grpc

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
HEADER = (("workload.spiffe.io", "true"),)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_daemon(workdir: Path) -> subprocess.Popen[bytes]:
    config = workdir / "authd.toml"
    config.write_text(
        '[authz]\ngrpc_address = ""\nhttp_address = ""\nmetrics_address = ""\n'
        '[ca]\nrotation_check_interval = "1h"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "authd", "run", "--data-dir", str(workdir / "d"),
         "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "daemon.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        check = subprocess.run(
            [sys.executable, "-m", "authd", "healthcheck", "--quiet", "--data-dir",
             str(workdir / "d")],
            capture_output=True,
        )  # fmt: skip
        if check.returncode == 0:
            return process
        time.sleep(0.2)
    raise SystemExit("authd did not start: " + (workdir / "daemon.log").read_text())


def first_certificate(der_chain: bytes) -> x509.Certificate:
    """The leaf of a concatenated-DER chain (the Workload API's x509_svid)."""
    length_byte = der_chain[1]
    if length_byte < 0x80:
        size = 2 + length_byte
    else:
        count = length_byte & 0x7F
        size = 2 + count + int.from_bytes(der_chain[2 : 2 + count], "big")
    return x509.load_der_x509_certificate(der_chain[:size])


def authority_of(der_chain: bytes) -> bytes:
    leaf = first_certificate(der_chain)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    return aki.key_identifier or b""


async def workload_stream(
    channel: grpc.aio.Channel, ready: asyncio.Event, first: dict[int, bytes], index: int,
    arrived: dict[int, float], new_authority: asyncio.Future[bytes],
) -> None:  # fmt: skip
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
    async for message in call:
        aki = authority_of(message.svids[0].x509_svid)
        if index not in first:
            first[index] = aki
            ready.set()
            continue
        if new_authority.done() and aki == new_authority.result():
            arrived[index] = time.monotonic()
            call.cancel()
            return


async def sds_stream(
    channel: grpc.aio.Channel, first: dict[int, bytes], index: int,
    arrived: dict[int, float], new_authority: asyncio.Future[bytes],
) -> None:  # fmt: skip
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    requests: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
    await requests.put(
        discovery_pb2.DiscoveryRequest(resource_names=["default"], type_url=SECRET_TYPE)
    )

    async def outgoing():  # type: ignore[no-untyped-def]
        while True:
            yield await requests.get()

    call = stub.StreamSecrets(outgoing())
    async for response in call:
        await requests.put(
            discovery_pb2.DiscoveryRequest(
                resource_names=["default"], type_url=SECRET_TYPE,
                version_info=response.version_info, response_nonce=response.nonce,
            )
        )  # fmt: skip
        secret = secret_pb2.Secret()
        response.resources[0].Unpack(secret)
        pem = secret.tls_certificate.certificate_chain.inline_bytes
        leaf = x509.load_pem_x509_certificates(pem)[0]
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        key_id = aki.key_identifier or b""
        if index not in first:
            first[index] = key_id
            continue
        if new_authority.done() and key_id == new_authority.result():
            arrived[index] = time.monotonic()
            call.cancel()
            return


async def measure(workdir: Path, streams: int, sds: int) -> tuple[list[float], list[float]]:
    socket = workdir / "d" / "workload.sock"
    admin_channel = grpc.aio.insecure_channel(f"unix:{workdir / 'd' / 'admin.sock'}")
    admin = admin_pb2_grpc.AdminStub(admin_channel)
    loop = asyncio.get_running_loop()
    new_authority: asyncio.Future[bytes] = loop.create_future()
    channels = [
        grpc.aio.insecure_channel(f"unix:{socket}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, (streams + sds) // 100))
    ]
    first_w: dict[int, bytes] = {}
    first_s: dict[int, bytes] = {}
    arrived_w: dict[int, float] = {}
    arrived_s: dict[int, float] = {}
    ready = asyncio.Event()
    tasks = [
        asyncio.create_task(
            workload_stream(
                channels[i % len(channels)], ready, first_w, i, arrived_w, new_authority
            )
        )
        for i in range(streams)
    ] + [
        asyncio.create_task(
            sds_stream(channels[i % len(channels)], first_s, i, arrived_s, new_authority)
        )
        for i in range(sds)
    ]
    deadline = time.monotonic() + 120
    while (len(first_w) < streams or len(first_s) < sds) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    print(f"open: {len(first_w)} Workload API streams, {len(first_s)} SDS streams")
    old = (await admin.ShowCA(admin_pb2.ShowCARequest())).authorities
    old_id = next(a.authority_id for a in old if a.kind == "x509" and a.state == "active")
    prepared = await admin.PrepareAuthority(admin_pb2.PrepareAuthorityRequest(kind="x509"))
    await admin.ActivateAuthority(admin_pb2.ActivateAuthorityRequest(kind="x509"))
    new_authority.set_result(bytes.fromhex(prepared.authority.authority_id))
    started = time.monotonic()
    await admin.TaintAuthority(admin_pb2.TaintAuthorityRequest(kind="x509", authority_id=old_id))
    await asyncio.wait(tasks, timeout=120)
    for task in tasks:
        task.cancel()
    for channel in (*channels, admin_channel):
        await channel.close()
    return (
        [t - started for t in arrived_w.values()],
        [t - started for t in arrived_s.values()],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--sds", type=int, default=100)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="authd-bench-"))
    os.chmod(workdir, 0o755)
    process = start_daemon(workdir)
    try:
        data = str(workdir / "d")
        subprocess.run(
            [sys.executable, "-m", "authd", "entry", "create", "--data-dir", data,
             "--spiffe-id", "spiffe://example.org/bench", "--selector", f"unix:uid:{os.getuid()}"],
            check=True, capture_output=True,
        )  # fmt: skip
        baseline = rss_kib(process.pid)
        started = time.monotonic()
        with grpc.insecure_channel(f"unix:{data}/admin.sock") as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            for i in range(args.entries):
                admin.CreateEntry(
                    admin_pb2.CreateEntryRequest(
                        entry=admin_pb2.Entry(
                            spiffe_id=f"spiffe://example.org/filler/{i}",
                            selectors=[admin_pb2.Selector(type="unix", value=f"uid:{200000 + i}")],
                        )
                    )
                )
        created = time.monotonic() - started
        with_entries = rss_kib(process.pid)
        workload, sds = asyncio.run(measure(workdir, args.streams, args.sds))
        after = rss_kib(process.pid)
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{'measure':<44} {'value':>12}")
    print(f"{'daemon RSS, 1 entry':<44} {baseline / 1024:>10.1f} MB")
    print(f"{f'daemon RSS, {args.entries + 1} entries':<44} {with_entries / 1024:>10.1f} MB")
    print(f"{'entries created per second (admin API)':<44} {args.entries / created:>12.0f}")
    print(f"{'daemon RSS with all streams open':<44} {after / 1024:>10.1f} MB")
    for name, values, wanted in (
        ("Workload API", workload, args.streams),
        ("SDS", sds, args.sds),
    ):
        if not values:
            print(f"{name}: no stream saw the rotation")
            continue
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        print(
            f"{name + ' rotation reached':<44} {len(values):>7}/{wanted} streams; "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(values) * 1000:.0f} ms, "
            f"mean {statistics.mean(values) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()

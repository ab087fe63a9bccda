"""The native fast path against no authz at all: 10 / 1,000 / 10,000 callers, one run.

Run on purpose, never as a timed test (it installs h2load with apt-get if it is missing):

    python bench/rbac_native.py [--seconds 3] [--rounds 3] [--sizes 10,1000,10000]

One `authd run` with `[xds] enabled` and one Envoy (`--concurrency 1`) from
deploy/envoy/sidecar-rbac.yaml, plus listeners that are the same mTLS listener with fewer
HTTP filters, so the cost of each filter shows (every listener answers with a
`direct_response` 200: the bench measures Envoy's authz cost, not an upstream's):

    none      router only (no authz): the baseline
    rules     the rules filter (authd.rbac) alone
    revoked   the revocation filter (authd.rbac.revoked) alone
    rbac      the early header mutation + the revocation filter + the rules filter, no
              ext_authz
    native    the full sidecar: the above + ext_authz (disabled per request by the RBAC
              metadata, as on every natively decided request)
    skip      the full sidecar, ext_authz disabled on the route (ExtAuthzPerRoute): the filter
              is built for each request but returns at once
    native-only  deploy/envoy/sidecar-rbac-only.yaml (the early header mutation and one RBAC
              filter, revocations in it; no ext_authz), fed by a second `authd run` with
              `[xds] native_only = true` (one authd serves one mode)
    native-only-bare  the same without the early header mutation (the x-authd-* strip): the
              RBAC filter alone, as the native-only authd compiles it

For each size the policy gets that many rules, one per caller SPIFFE ID (`allow GET
/orders/{id}`), authd recompiles and pushes it over ECDS, and h2load (8 connections, TLS,
HTTP/2) loads the listeners presenting one of the callers' SVIDs (built into h2load with
bench/client_cert_shim.c). The machine's speed drifts, so, as bench/extauthz.py does, each
listener runs in rounds interleaved with the baseline (none, X, none, Y, none, ...): each run
is divided by the mean of the two baseline runs around it; the ratio is the median of those.

Reported per size: the ratios, the rules push (bytes), the time from writing the policy to
Envoy enforcing it (authd's YAML parse, compile, validation, push, Envoy's ACK); then one
caller is revoked: the revocation push (bytes) and the time from `authd revoke` returning to
Envoy refusing that caller with 403 (the native sidecar, then the native-only one, whose
authd is told second and re-assembles its one filter around the cached rules); Envoy's RSS;
and how many requests authd was asked (it must be 0: every request is decided natively).
A second table gives the native-only figures alone; the load average is printed before and
after (the machine may be shared: note it next to the figures).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from extauthz import build_client_cert_shim, ensure_h2load, h2load  # noqa: E402

from tests.support.envoy import (  # noqa: E402
    HOST,
    EchoUpstream,
    authd_config,
    mtls_context,
    request,
    short_tmpdir,
    start_authd,
    start_envoy,
    wait_for,
)
from tests.support.rbac import (  # noqa: E402
    FILTER_NAME,
    NATIVE_ONLY_FILTER_NAME,
    REVOKED_FILTER_NAME,
    applied_version,
    config_bytes,
    rbac_only_sidecar,
    rbac_sidecar,
    served_version,
)
from tests.support.rbac_rules import MANY_CALLER, many_callers_policy  # noqa: E402

# Listener name → the HTTP filters it keeps (by name; the router always).
VARIANTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "rules": (FILTER_NAME,),
    "revoked": (REVOKED_FILTER_NAME,),
    "rbac": (REVOKED_FILTER_NAME, FILTER_NAME),
}
# Listeners that keep the sidecar's early header mutation (x-authd-* of the client removed).
EARLY_MUTATION = ("rbac",)
EXT_AUTHZ = "envoy.filters.http.ext_authz"
EXT_AUTHZ_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
)
ROUTER = "envoy.filters.http.router"
NATIVE_ONLY = "native-only"
NATIVE_ONLY_BARE = "native-only-bare"
NATIVE_ONLY_XDS = "authd_xds_native_only"


def answering_200(listener: dict[str, Any]) -> None:
    """Advertise h2 over ALPN (h2load speaks HTTP/2) and answer 200 from Envoy itself."""
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    tls["common_tls_context"]["alpn_protocols"] = ["h2", "http/1.1"]
    route = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    route["virtual_hosts"][0]["routes"][0].pop("route")
    route["virtual_hosts"][0]["routes"][0]["direct_response"] = {"status": 200}


def with_native_only(config_text: str, native_only_text: str) -> str:
    """``config_text`` plus the inbound listener of sidecar-rbac-only.yaml ("native-only"),
    its ECDS on a cluster of its own (the second authd), and the same listener without the
    early header mutation ("native-only-bare")."""
    config = yaml.safe_load(config_text)
    other = yaml.safe_load(native_only_text)
    listener = other["static_resources"]["listeners"][0]
    listener["name"] = NATIVE_ONLY
    answering_200(listener)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "native_only"
    for http_filter in hcm["http_filters"]:
        discovery = http_filter.get("config_discovery")
        if discovery:
            source = discovery["config_source"]["api_config_source"]
            source["grpc_services"][0]["envoy_grpc"]["cluster_name"] = NATIVE_ONLY_XDS
    xds = next(c for c in other["static_resources"]["clusters"] if c["name"] == "authd_xds")
    xds["name"] = xds["load_assignment"]["cluster_name"] = NATIVE_ONLY_XDS
    bare: dict[str, Any] = copy.deepcopy(listener)
    bare["name"] = NATIVE_ONLY_BARE
    bare_hcm = bare["filter_chains"][0]["filters"][0]["typed_config"]
    bare_hcm["stat_prefix"] = "native_only_bare"
    bare_hcm.pop("early_header_mutation_extensions")
    config["static_resources"]["listeners"] += [listener, bare]
    config["static_resources"]["clusters"].append(xds)
    return yaml.safe_dump(config)


def with_variants(config_text: str) -> str:
    """The sidecar config ("native"), plus one listener per VARIANTS entry; all advertise h2
    over ALPN (h2load speaks HTTP/2) and answer 200 themselves."""
    config = yaml.safe_load(config_text)
    inbound = config["static_resources"]["listeners"][0]
    answering_200(inbound)
    inbound["name"] = "native"
    for name, kept in VARIANTS.items():
        listener: dict[str, Any] = copy.deepcopy(inbound)
        listener["name"] = name
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = name
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] in (*kept, ROUTER)]
        if name not in EARLY_MUTATION:
            hcm.pop("early_header_mutation_extensions", None)
        config["static_resources"]["listeners"].append(listener)
    # "skip": the full sidecar, its route disabling ext_authz (ExtAuthzPerRoute disabled).
    skip: dict[str, Any] = copy.deepcopy(inbound)
    skip["name"] = "skip"
    hcm = skip["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "skip"
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    route["typed_per_filter_config"][EXT_AUTHZ] = {"@type": EXT_AUTHZ_PER_ROUTE, "disabled": True}
    config["static_resources"]["listeners"].append(skip)
    return yaml.safe_dump(config)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="10,1000,10000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    measured = ["native", NATIVE_ONLY, NATIVE_ONLY_BARE, "skip", "rbac", "rules", "revoked"]
    load_before = os.getloadavg()
    h2load_bin = ensure_h2load()
    tmp = short_tmpdir()
    shim = build_client_cert_shim(tmp)
    if shim is None:
        sys.exit("this bench needs gcc to build bench/client_cert_shim.c")
    upstream = EchoUpstream()
    authd = start_authd(
        tmp / "d",
        authd_config() + "\n[xds]\nenabled = true\n",
        files={"policy.yaml": many_callers_policy(1)},
    )
    only = start_authd(
        tmp / "d2",
        authd_config() + "\n[xds]\nenabled = true\nnative_only = true\n",
        files={"policy.yaml": many_callers_policy(1)},
    )
    envoy = None
    rows = []
    try:
        caller_dir = authd.mint_x509(MANY_CALLER.format(0), tmp / "caller")
        revoked_dirs = {s: authd.mint_x509(MANY_CALLER.format(s - 1), tmp / f"r{s}") for s in sizes}
        sidecar = rbac_sidecar(
            tmp / "envoy",
            cert_dir=caller_dir,
            workload_socket=authd.data_dir / "workload.sock",
            app_port=upstream.port,
            authz_port=authd.grpc_port,
            policy="s",
            access_log=Path("/dev/null"),
        )
        sidecar.stop()
        only_sidecar = rbac_only_sidecar(
            tmp / "envoy-only",
            cert_dir=caller_dir,
            workload_socket=only.data_dir / "workload.sock",
            app_port=upstream.port,
            access_log=Path("/dev/null"),
        )
        only_sidecar.stop()
        config = with_native_only(
            with_variants(sidecar.config_path.read_text()), only_sidecar.config_path.read_text()
        )
        envoy = start_envoy(config, tmp / "envoy2", "bench")
        env = {
            "AUTHD_BENCH_CLIENT_CERT": str(caller_dir / "svid.pem"),
            "AUTHD_BENCH_CLIENT_KEY": str(caller_dir / "svid.key"),
            "LD_PRELOAD": str(shim),
        }

        def load(name: str, size: int, run: int) -> float:
            port = envoy.listener_port(name)
            result = h2load(
                h2load_bin,
                f"https://{HOST}:{port}/orders/7",
                connections=8,
                seconds=args.seconds,
                headers={},
                log_file=tmp / f"{name}-{size}-{run}.log",
                env=env,
            )
            if result.ok != result.requests:
                raise RuntimeError(f"{name}: {result.requests - result.ok} requests not 200")
            return result.rps

        for size in sizes:
            before = served_version(authd)
            only_before = served_version(only, NATIVE_ONLY_FILTER_NAME)
            started = time.monotonic()
            (authd.data_dir / "policy.yaml").write_text(many_callers_policy(size))
            (only.data_dir / "policy.yaml").write_text(many_callers_policy(size))
            version = wait_for(
                "authd to recompile",
                lambda old=before: (v := served_version(authd)) not in ("", old) and v,
                timeout=300,
            )
            wait_for(
                "Envoy to apply the config",
                lambda new=version: applied_version(envoy) == new,
                timeout=300,
            )
            enforce = time.monotonic() - started
            only_version = wait_for(
                "the native-only authd to recompile",
                lambda old=only_before: (
                    (v := served_version(only, NATIVE_ONLY_FILTER_NAME)) not in ("", old) and v
                ),
                timeout=300,
            )
            wait_for(
                "Envoy to apply the native-only config",
                lambda new=only_version: applied_version(envoy, NATIVE_ONLY_FILTER_NAME) == new,
                timeout=300,
            )
            push = config_bytes(authd)
            only_push = config_bytes(only, NATIVE_ONLY_FILTER_NAME)
            checks = authd.checks_total() + only.checks_total()
            baseline = [load("none", size, 0)]
            ratios: dict[str, list[float]] = {name: [] for name in measured}
            rps: dict[str, list[float]] = {name: [] for name in measured}
            for run in range(args.rounds):
                for name in measured:
                    value = load(name, size, run)
                    baseline.append(load("none", size, run))
                    rps[name].append(value)
                    ratios[name].append(value / ((baseline[-2] + baseline[-1]) / 2))
            asked = authd.checks_total() + only.checks_total() - checks
            # Revoke one caller: the time from `authd revoke` returning to a 403 in Envoy.
            caller = MANY_CALLER.format(size - 1)
            port = envoy.listener_port("native")
            context = mtls_context(revoked_dirs[size])
            assert request(port, "/orders/7", context=context).status == 200
            cli_started = time.monotonic()
            authd.cli("revoke", "spiffe-id", caller, "--reason", "key-compromise")
            revoked_at = time.monotonic()
            while request(port, "/orders/7", context=context).status != 403:
                if time.monotonic() - revoked_at > 60:
                    raise RuntimeError("the revocation never reached Envoy")
            refused = time.monotonic()
            # The same on the native-only sidecar, revoked at its own authd.
            port = envoy.listener_port(NATIVE_ONLY)
            assert request(port, "/orders/7", context=context).status == 200
            only.cli("revoke", "spiffe-id", caller, "--reason", "key-compromise")
            only_revoked_at = time.monotonic()
            while request(port, "/orders/7", context=context).status != 403:
                if time.monotonic() - only_revoked_at > 60:
                    raise RuntimeError("the revocation never reached the native-only filter")
            only_refused = time.monotonic()
            rows.append(
                {
                    "size": size,
                    "none": statistics.median(baseline),
                    **{f"{n}_rps": statistics.median(rps[n]) for n in measured},
                    **{n: statistics.median(ratios[n]) for n in measured},
                    "push": push,
                    "only_push": only_push,
                    "only_revoke": only_refused - only_revoked_at,
                    "only_revoke_push": config_bytes(only, NATIVE_ONLY_FILTER_NAME),
                    "enforce": enforce,
                    "revoke_push": config_bytes(authd, REVOKED_FILTER_NAME),
                    "revoke": refused - revoked_at,
                    "revoke_cli": refused - cli_started,
                    "rules_pushed_again": served_version(authd) != version,
                    "rss": rss_mib(envoy.process.pid),
                    "asked": asked,
                }
            )
            print(f"  {size} callers done", flush=True)
    finally:
        if envoy is not None:
            envoy.stop()
        authd.stop()
        only.stop()
        upstream.close()
    print_table(rows, args.rounds)
    print_native_only(rows)
    print()
    print(
        "load average (1, 5, 15 min): before "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )


def print_table(rows: list[dict[str, Any]], rounds: int) -> None:
    print()
    print(f"Ratios of no-authz throughput (median of {rounds} interleaved rounds):")
    print()
    print(
        "| callers | none req/s | native | native-only | native-only, no early header mutation "
        "| ext_authz off by route | rbac (no ext_authz) | rules filter alone "
        "| revocation filter alone "
        "| rules push | policy write → enforced | revocation push | revoke → 403 "
        "| Envoy RSS | ext_authz checks |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        again = " (rules pushed again!)" if r["rules_pushed_again"] else ""
        print(
            f"| {r['size']:,} | {r['none']:,.0f} | {r['native']:.2f} | {r[NATIVE_ONLY]:.2f} "
            f"| {r[NATIVE_ONLY_BARE]:.2f} | {r['skip']:.2f} | {r['rbac']:.2f} "
            f"| {r['rules']:.2f} | {r['revoked']:.2f} | {r['push']:,} B | {r['enforce']:.2f} s "
            f"| {r['revoke_push']:,} B | {r['revoke'] * 1000:.0f} ms "
            f"({r['revoke_cli']:.2f} s with the CLI){again} | {r['rss']:.0f} MiB | {r['asked']} |"
        )


def print_native_only(rows: list[dict[str, Any]]) -> None:
    print()
    print("Native-only (one RBAC filter, revocations in it, no ext_authz) against no authz:")
    print()
    print(
        "| callers | none req/s | native-only req/s | native-only | no early header mutation "
        "| rules push | revocation push | revoke → 403 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['size']:,} | {r['none']:,.0f} | {r[NATIVE_ONLY + '_rps']:,.0f} "
            f"| {r[NATIVE_ONLY]:.2f} | {r[NATIVE_ONLY_BARE]:.2f} | {r['only_push']:,} B "
            f"| {r['only_revoke_push']:,} B | {r['only_revoke'] * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    main()

"""The native fast path against no authz at all: 10 / 1,000 / 10,000 callers, one run.

Run on purpose, never as a timed test (it installs h2load with apt-get if it is missing):

    python bench/rbac_native.py [--seconds 4] [--sizes 10,1000,10000]

One `authd run` with `[xds] enabled` and one Envoy (`--concurrency 1`) from
deploy/envoy/sidecar-rbac.yaml with a second, identical mTLS listener that has no RBAC and no
ext_authz ("none"). For each size the policy gets that many rules, one per caller SPIFFE ID
(`allow GET /orders/{id}`), authd recompiles and pushes it over ECDS, and h2load (8
connections, TLS, HTTP/2) loads both listeners, presenting one of the callers' SVIDs (built
into h2load with bench/client_cert_shim.c). The identity map is a hash map, so which caller
calls does not change the cost; the number of callers changes the tree Envoy holds.

Reported per size: req/s native and none, their ratio, the push (bytes of the RBAC config),
the time from writing the policy to Envoy enforcing it (authd's YAML parse, compile,
validation, push, Envoy's ACK), Envoy's RSS, and whether authd was asked at all (it must not
be: every request is decided natively).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from extauthz import build_client_cert_shim, ensure_h2load, h2load  # noqa: E402

from tests.support.envoy import (  # noqa: E402
    HOST,
    EchoUpstream,
    authd_config,
    short_tmpdir,
    start_authd,
    start_envoy,
    wait_for,
)
from tests.support.rbac import applied_version, rbac_sidecar, served_version  # noqa: E402

CALLER = "spiffe://example.org/caller/{}"


def policy(size: int) -> str:
    rules = "".join(
        f'      - {{name: c{i}, effect: allow, methods: [GET], paths: ["/orders/{{id}}"], '
        f'callers: ["{CALLER.format(i)}"]}}\n'
        for i in range(size)
    )
    return "version: 1\ndefault_rule_set: s\nrule_sets:\n  s:\n    rules:\n" + rules


def with_plain_listener(config_text: str) -> str:
    """The sidecar config plus listener "plain": the same mTLS listener, router only; both
    advertise h2 over ALPN (h2load speaks HTTP/2)."""
    config = yaml.safe_load(config_text)
    inbound = config["static_resources"]["listeners"][0]
    tls = inbound["filter_chains"][0]["transport_socket"]["typed_config"]
    tls["common_tls_context"]["alpn_protocols"] = ["h2", "http/1.1"]
    # Envoy answers itself: the bench measures Envoy's authz cost, not an upstream's.
    route = inbound["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    route["virtual_hosts"][0]["routes"][0].pop("route")
    route["virtual_hosts"][0]["routes"][0]["direct_response"] = {"status": 200}
    plain = copy.deepcopy(inbound)
    plain["name"] = "plain"
    hcm = plain["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "plain"
    hcm["http_filters"] = [
        f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router"
    ]
    config["static_resources"]["listeners"].append(plain)
    return yaml.safe_dump(config)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--sizes", default="10,1000,10000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    h2load_bin = ensure_h2load()
    tmp = short_tmpdir()
    shim = build_client_cert_shim(tmp)
    if shim is None:
        sys.exit("this bench needs gcc to build bench/client_cert_shim.c")
    upstream = EchoUpstream()
    authd = start_authd(
        tmp / "d", authd_config() + "\n[xds]\nenabled = true\n", files={"policy.yaml": policy(1)}
    )
    envoy = None
    rows = []
    try:
        caller_dir = authd.mint_x509(CALLER.format(0), tmp / "caller")
        sidecar = rbac_sidecar(
            tmp / "envoy",
            cert_dir=caller_dir,
            workload_socket=authd.data_dir / "workload.sock",
            app_port=upstream.port,
            authz_port=authd.grpc_port,
            policy="s",
            access_log=Path("/dev/null"),
        )
        config = with_plain_listener(sidecar.config_path.read_text())
        sidecar.stop()
        envoy = start_envoy(config, tmp / "envoy2", "bench")
        env = {
            "AUTHD_BENCH_CLIENT_CERT": str(caller_dir / "svid.pem"),
            "AUTHD_BENCH_CLIENT_KEY": str(caller_dir / "svid.key"),
            "LD_PRELOAD": str(shim),
        }
        for size in sizes:
            before = served_version(authd)
            started = time.monotonic()
            (authd.data_dir / "policy.yaml").write_text(policy(size))
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
            push = int(
                next(
                    float(line.split()[-1])
                    for line in authd.metrics().splitlines()
                    if line.startswith("authd_xds_config_bytes ")
                )
            )
            checks = authd.checks_total()
            loads = {}
            for name in ("inbound", "plain"):
                port = envoy.listener_port(name)
                loads[name] = h2load(
                    h2load_bin,
                    f"https://{HOST}:{port}/orders/7",
                    connections=8,
                    seconds=args.seconds,
                    headers={},
                    log_file=tmp / f"{name}-{size}.log",
                    env=env,
                )
            native, none = loads["inbound"], loads["plain"]
            rows.append(
                (
                    size,
                    native.rps,
                    none.rps,
                    native.rps / none.rps,
                    native.ok == native.requests,
                    push,
                    enforce,
                    rss_mib(envoy.process.pid),
                    authd.checks_total() - checks,
                )
            )
            print(f"  {size} callers done", flush=True)
    finally:
        if envoy is not None:
            envoy.stop()
        authd.stop()
        upstream.close()
    print()
    print(
        "| callers | native req/s | none req/s | ratio | all 200 | push bytes "
        "| policy write → enforced | Envoy RSS | ext_authz checks |"
    )
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for size, nrps, prps, ratio, ok, push, enforce, rss, checks in rows:
        print(
            f"| {size:,} | {nrps:,.0f} | {prps:,.0f} | {ratio:.2f} | {'yes' if ok else 'NO'} "
            f"| {push:,} | {enforce:.2f} s | {rss:.0f} MiB | {checks:.0f} |"
        )


if __name__ == "__main__":
    main()

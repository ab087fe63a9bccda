"""Any request path, through one real Envoy with the shipped gateway configs, on both
transports (hypothesis): authd decides about the path the upstream gets, in any encoding.

One Envoy serves both shipped gateways (native gRPC and HTTP service mode) in front of an
echo upstream. Each path is sent twice per gateway: with an API key that the policy lets
anywhere (so the echo tells which path Envoy forwards), and anonymously (allowed only under
``/public/``). The invariants:

- what an anonymous request gets through is, read the way upstreams read paths (percent
  escapes decoded once, ``\\`` as ``/``, ``;params`` dropped from segments, dot segments
  removed), under ``/public/``: no denied path reaches the upstream in any encoding;
- a forwarded path under ``/public/`` read that way is allowed anonymously as well, and both
  requests reach the upstream as the same path;
- both transports decide alike, and no answer is a 5xx (Envoy's own 400s are fine).

A CI run tries a few dozen paths; set ``AUTHD_HYPOTHESIS_EXAMPLES`` for a longer run.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.envoy import (
    API_KEY,
    HOST,
    Authd,
    EchoUpstream,
    Envoy,
    api_keys_toml,
    authd_config,
    gateway_config,
    start_authd,
    start_envoy,
)

EXAMPLES = int(os.environ.get("AUTHD_HYPOTHESIS_EXAMPLES", "40"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TRANSPORTS = ("grpc", "http")
POLICY = """\
version: 1
default_rule_set: gateway
rule_sets:
  gateway:
    rules:
      - name: public
        effect: allow
        paths: ["/public/*"]
      - name: ci-bot-anywhere
        effect: allow
        paths: ["/*"]
        api_keys: ["ci-bot"]
"""
MAX_URL_LENGTH = 8192  # authd's default limits.max_url_length (HTTP mode answers 414 past it)


@pytest.fixture(scope="module")
def authd(tmp: Path) -> Iterator[Authd]:
    config = authd_config(extra='api_keys_file = "api-keys.toml"')
    files = {"policy.yaml": POLICY, "api-keys.toml": api_keys_toml()}
    daemon = start_authd(tmp / "authd", config, files=files)
    yield daemon
    daemon.stop()


def both_gateways(authd: Authd, upstream: EchoUpstream, tmp: Path) -> str:
    """gateway-grpc.yaml and gateway-http.yaml as one Envoy: listeners gateway-grpc and
    gateway-http, each with its own authd cluster, one upstream cluster."""
    merged: dict[str, Any] | None = None
    for mode in TRANSPORTS:
        config = yaml.safe_load(gateway_config(mode, authd, upstream, tmp / f"{mode}.access.log"))
        resources = config["static_resources"]
        (listener,) = resources["listeners"]
        listener["name"] = f"gateway-{mode}"
        authz_cluster = f"authd_ext_authz_{mode}"
        text = json.dumps(listener).replace('"authd_ext_authz"', json.dumps(authz_cluster))
        resources["listeners"] = [json.loads(text)]
        for cluster in resources["clusters"]:
            if cluster["name"] == "authd_ext_authz":
                cluster["name"] = cluster["load_assignment"]["cluster_name"] = authz_cluster
        if merged is None:
            merged = config
        else:
            ours = merged["static_resources"]
            ours["listeners"] += resources["listeners"]
            ours["clusters"] += [c for c in resources["clusters"] if c["name"] == authz_cluster]
    assert merged is not None
    return yaml.safe_dump(merged)


@pytest.fixture(scope="module")
def gateways(authd: Authd, upstream: EchoUpstream, tmp: Path) -> Iterator[dict[str, int]]:
    envoy: Envoy = start_envoy(both_gateways(authd, upstream, tmp), tmp, name="paths")
    yield {mode: envoy.listener_port(f"gateway-{mode}") for mode in TRANSPORTS}
    envoy.stop()


# --- sending a path as it is --------------------------------------------------------------


@dataclass
class Answer:
    status: int
    upstream_path: str | None  # the path the echo upstream got, when the request reached it


def send(port: int, target: bytes, headers: dict[str, str]) -> Answer:
    """GET ``target`` exactly as given (no client-side quoting), over HTTP/1.1."""
    lines = [b"GET " + target + b" HTTP/1.1", b"host: gateway", b"connection: close"]
    lines += [f"{name}: {value}".encode() for name, value in headers.items()]
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    if response.status != 200:
        return Answer(response.status, None)
    return Answer(200, json.loads(body)["path"])


# --- how an upstream reads a path ---------------------------------------------------------


def as_upstreams_read(target: str) -> str:
    """The resource an upstream may take ``target`` to mean: the path without query or
    fragment, escapes decoded once, ``\\`` as ``/``, ``;params`` dropped (Tomcat, Jetty),
    ``//`` merged, dot segments removed (RFC 3986 5.2.4)."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    path = unquote_to_bytes(path).decode("latin-1").replace("\\", "/")
    kept: list[str] = []
    segments = [segment.split(";", 1)[0] for segment in path.split("/")]
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    trailing = "/" if kept and segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(kept) + trailing


def under_public(target: str) -> bool:
    """In what the rule ``/public/*`` allows: ``/public`` and below."""
    resource = as_upstreams_read(target)
    return resource == "/public" or resource.startswith("/public/")


# --- paths --------------------------------------------------------------------------------

ATOMS = [
    "public", "api", "admin", "orders", "x", ".", "..", "", "%2e", "%2E%2e", ".%2e",
    "%2f", "%2F", "%5c", "%5C", "\\", ";", "..;", ".;", ";x=1", "%00", "%25", "%252e",
    "%2e%2e%2f", "%70ublic", "%41", "~", "%7e", ":", "@", "!", "$", "&", "'", "(", ")",
    "*", "+", ",", "=", "é", "用户", "%C3%A9", "%ff", "%", "%g1",
]  # fmt: skip
QUERY_CHARS = string.ascii_letters + string.digits + "/.%;=&?#-_~+"

segments = st.lists(st.sampled_from(ATOMS), max_size=3).map("".join)
paths = st.one_of(
    st.lists(segments, min_size=1, max_size=6).map(lambda s: "/" + "/".join(s)),
    st.lists(segments, max_size=5).map(lambda s: "/public/" + "/".join(s)),
    st.integers(100, 9000).map(lambda n: "/public/" + "a" * n),
    st.integers(100, 9000).map(lambda n: "/public/" + "../" * (n // 3) + "api/x"),
)
targets = st.tuples(
    paths,
    st.one_of(st.just(""), st.text(QUERY_CHARS, max_size=20).map(lambda q: "?" + q)),
    st.one_of(st.just(""), st.text(QUERY_CHARS, max_size=8).map(lambda q: "#" + q)),
).map("".join)


@PROPERTY
@given(target=targets)
@example(target="/public/../api/x")
@example(target="/public/%2e%2e/api/x")
@example(target="/public/..%2fapi/x")
@example(target="/public/..;/api/x")
@example(target="/public/%2e%2e;/api/x")  # Envoy forwarded it as /public/..;/api/x
@example(target="/public/.;/../api/x")
@example(target="/public/..\\api/x")
@example(target="/%70ublic/x?a=/../api#/../api")
def test_authd_decides_about_the_path_the_upstream_gets_on_both_transports(
    gateways: dict[str, int], target: str
) -> None:
    raw = target.encode("utf-8")
    anonymous_allowed = {}
    for mode, port in gateways.items():
        keyed = send(port, raw, {"x-api-key": API_KEY})
        anonymous = send(port, raw, {})
        for answer in (keyed, anonymous):
            assert answer.status < 500, f"{mode}: {target!r} answered {answer.status}"
        if anonymous.upstream_path is not None:
            assert under_public(anonymous.upstream_path), (
                f"{mode}: {target!r} reached the upstream as {anonymous.upstream_path!r}, "
                f"which upstreams may read as {as_upstreams_read(anonymous.upstream_path)!r}"
            )
        if keyed.upstream_path is not None and under_public(keyed.upstream_path):
            assert anonymous.upstream_path == keyed.upstream_path, (
                f"{mode}: {target!r} forwarded as {keyed.upstream_path!r}, under /public/, "
                f"but denied anonymously ({anonymous.status})"
            )
        anonymous_allowed[mode] = anonymous.status == 200
    if len(target) + len("/check") < MAX_URL_LENGTH:
        assert anonymous_allowed["grpc"] == anonymous_allowed["http"], target

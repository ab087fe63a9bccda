"""Every policy engine on every transport: rules, Rego, OPA on native gRPC, grpcio, HTTP mode.

One policy meaning, written once per engine (rules YAML, Rego, and the OPA stand-in's
Python), behind the deploy gateway configs (deploy/envoy/gateway-{grpc,http}.yaml) with a
real Envoy and a real authd per combination. The same requests get the same answers
everywhere. The OPA server is an in-test stand-in for OPA's Data API
(tests/support/opa.py): down, slow (beyond ``authz.opa_timeout_ms``) or answering garbage,
it is an authd error that Envoy answers with the configs' ``status_on_error`` (503), while the
other engines, which never ask OPA, go on answering.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.envoy import (
    INTRUDER,
    WEB,
    Authd,
    EchoUpstream,
    Envoy,
    authd_config,
    gateway_config,
    request,
    start_authd,
    start_envoy,
)
from tests.support.opa import Answer, OpaStandIn, document

ENGINES = ("rules", "rego", "opa")
TRANSPORTS = ("native", "grpcio", "http")
OPA_PATH = "envoy/authz/response"
# authd gives up on OPA well before Envoy gives up on authd (ENVOY_AUTHZ_TIMEOUT), and a
# healthy OPA answers well within it even on a busy machine.
OPA_TIMEOUT_MS = 1000
ENVOY_AUTHZ_TIMEOUT = "timeout: 5s"  # the deploy configs say 0.5s
ERROR_STATUS = 503  # the deploy configs' status_on_error

# --- one policy, three spellings -----------------------------------------------------------
# GET /public/... is open to anyone; /api/... only to the web workload; nothing else. On
# allow, the engines that can (Rego, OPA) add x-served-by to the client's response.

RULES = f"""\
version: 1
default_rule_set: gateway
rule_sets:
  gateway:
    rules:
      - name: public
        effect: allow
        methods: [GET]
        paths: ["/public/*"]
      - name: web-api
        effect: allow
        paths: ["/api/*"]
        callers: ["{WEB}"]
"""

REGO = f"""\
package envoy.authz

import rego.v1

default allow := false

allow if {{
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "public"
}}

allow if {{
	input.authd.caller == "{WEB}"
	input.parsed_path[0] == "api"
}}

default response := {{"allowed": false}}

response := {{"allowed": true, "response_headers_to_add": {{"x-served-by": "authd"}}}} if allow
"""


def opa_policy(received: Any) -> Any:
    """The same policy as RULES and REGO, as the OPA stand-in evaluates it."""
    method = received["attributes"]["request"]["http"]["method"]
    first = received.get("parsed_path", [])[:1]
    caller = received["authd"]["caller"]
    if (method == "GET" and first == ["public"]) or (caller == WEB and first == ["api"]):
        return {"allowed": True, "response_headers_to_add": {"x-served-by": "authd"}}
    return {"allowed": False}


# --- the OPA stand-in, and how it fails --------------------------------------------------------

GARBAGE: dict[str, Answer] = {
    "invalid_json": (200, "application/json", b'{"result": tru'),
    "not_json": (200, "text/html", b"<html>proxy error</html>"),
    "not_an_object": (200, "application/json", b"[1, 2]"),
    "malformed_result": document({"allowed": "yes"}),
    "opa_error": (500, "application/json", b'{"code": "internal_error", "message": "boom"}'),
}
FAILURES = ("down", "slow", *GARBAGE)


class Opa(OpaStandIn):
    """Answers OPA_PATH with ``opa_policy``, or fails as ``failure`` says."""

    def __init__(self) -> None:
        self.failure = ""
        super().__init__()

    def answer(self, path: str, received: Any) -> Answer:
        if self.failure == "slow":
            self.release.wait(timeout=30)  # far beyond authd's opa_timeout_ms
        if self.failure in GARBAGE:
            return GARBAGE[self.failure]
        if path != OPA_PATH:
            return 200, "application/json", b"{}"  # undefined
        return document(opa_policy(received))

    @contextmanager
    def failing(self, failure: str) -> Iterator[None]:
        self.release.clear()
        if failure == "down":
            self.stop()
        self.failure = failure
        try:
            yield
        finally:
            self.failure = ""
            self.release.set()
            if failure == "down":
                self.start()


@pytest.fixture(scope="module")
def opa() -> Iterator[Opa]:
    server = Opa()
    yield server
    server.close()


# --- one authd and one Envoy per engine and transport -----------------------------------------


@dataclass
class Gateway:
    engine: str
    transport: str
    authd: Authd
    envoy: Envoy
    port: int
    tokens: dict[str, str]

    @property
    def error_transport(self) -> str:
        return "http" if self.transport == "http" else "grpc"


def engine_config(engine: str, grpc_engine: str, opa: Opa) -> tuple[str, dict[str, str]]:
    """authd's config and files for ``engine``, with the web/intruder JWT audience."""
    base = authd_config(
        extra=f'grpc_engine = "{grpc_engine}"\njwt_svid_audiences = ["gateway"]\n'
        + {
            "rules": "",
            "rego": f'rego_files = ["authz.rego"]\nrego_entrypoint = "{OPA_PATH}"',
            "opa": f'opa_url = "{opa.url}"\nopa_path = "{OPA_PATH}"\n'
            f"opa_timeout_ms = {OPA_TIMEOUT_MS}",
        }[engine]
    )
    if engine == "rules":
        return base, {"policy.yaml": RULES}
    # authd's own answers on every engine (OPA-Envoy's are test_opa_envoy_differential.py's).
    config = base.replace(
        'policy_engine = "rules"', f'policy_engine = "{engine}"\npolicy_compat = "authd"'
    )
    config = config.replace('policy_file = "policy.yaml"', 'policy_file = ""')
    return config, {"authz.rego": REGO} if engine == "rego" else {}


def envoy_config(transport: str, authd: Authd, upstream: EchoUpstream, tmp: Path) -> str:
    mode = "http" if transport == "http" else "grpc"
    text = gateway_config(mode, authd, upstream, tmp / f"access-{transport}.log")
    assert text.count("timeout: 0.5s") == 1, "the ext_authz timeout moved: update this test"
    text = text.replace("timeout: 0.5s", ENVOY_AUTHZ_TIMEOUT)
    if mode == "grpc":
        return text
    # The policy's response_headers_to_add: HTTP mode passes them to the client on allow
    # only when Envoy is told which (gRPC mode needs no such list).
    anchor = "                authorization_response:\n"
    assert anchor in text, "gateway-http.yaml changed: update this test"
    allowed = (
        "                  allowed_client_headers_on_success:\n"
        "                    patterns:\n"
        "                    - {exact: x-served-by}\n"
    )
    return text.replace(anchor, anchor + allowed)


@pytest.fixture(
    scope="module",
    params=[(e, t) for e in ENGINES for t in TRANSPORTS],
    ids=[f"{e}-{t}" for e in ENGINES for t in TRANSPORTS],
)
def gateway(
    request: pytest.FixtureRequest, opa: Opa, upstream: EchoUpstream, tmp: Path
) -> Iterator[Gateway]:
    engine, transport = request.param
    grpc_engine = "grpcio" if transport == "grpcio" else "native"
    config, files = engine_config(engine, grpc_engine, opa)
    where = tmp / f"{engine}-{transport}"
    authd = start_authd(where / "authd", config, files=files)
    try:
        with ThreadPoolExecutor(2) as pool:
            minted = {
                name: pool.submit(authd.mint_jwt, who, "gateway")
                for name, who in (("web", WEB), ("intruder", INTRUDER))
            }
            tokens = {name: future.result() for name, future in minted.items()}
        envoy = start_envoy(envoy_config(transport, authd, upstream, where), where)
        try:
            port = envoy.listener_port("gateway")
            yield Gateway(engine, transport, authd, envoy, port, tokens)
        finally:
            envoy.stop()
    finally:
        authd.stop()


def ask(gateway: Gateway, method: str, path: str, who: str = "") -> Any:
    headers = {"authorization": f"Bearer {gateway.tokens[who]}"} if who else {}
    return request(gateway.port, path, method=method, headers=headers)


# --- the same answers everywhere ---------------------------------------------------------------

# (method, path, caller token, status, x-authd-caller the upstream sees)
SAME_ANSWERS = [
    ("GET", "/public/page", "", 200, None),
    ("GET", "/public/page", "web", 200, WEB),
    ("POST", "/public/page", "", 401, None),
    ("POST", "/public/page", "intruder", 403, None),
    ("GET", "/api/orders", "web", 200, WEB),
    ("DELETE", "/api/orders/7", "web", 200, WEB),
    ("GET", "/api/orders", "intruder", 403, None),
    ("GET", "/api/orders", "", 401, None),
    ("GET", "/admin/users", "web", 403, None),
]


@pytest.mark.parametrize(
    ("method", "path", "who", "status", "caller"),
    SAME_ANSWERS,
    ids=[f"{m}-{p}-{w or 'anonymous'}" for m, p, w, _, _ in SAME_ANSWERS],
)
def test_every_engine_on_every_transport_answers_alike(
    gateway: Gateway, method: str, path: str, who: str, status: int, caller: str | None
) -> None:
    errors = gateway.authd.counter("authd_check_errors_total")
    reply = ask(gateway, method, path, who)
    assert reply.status == status, reply.body
    if status == 200:
        seen = reply.upstream
        assert seen.values("x-authd-caller") == ([caller] if caller else [])
        assert seen.values("authorization") == []
        assert seen.one("x-authd-decision-id")
    else:
        assert reply.headers["content-type"] == "application/json"
        assert json.loads(reply.body)["error"]
    assert gateway.authd.counter("authd_check_errors_total") == errors


def test_policy_response_headers_reach_the_client_on_allow_only(gateway: Gateway) -> None:
    allowed = ask(gateway, "GET", "/public/page")
    denied = ask(gateway, "GET", "/api/orders", "intruder")
    # The rules engine has no response headers; Rego and OPA add x-served-by on allow.
    expected = None if gateway.engine == "rules" else "authd"
    assert (allowed.status, allowed.headers.get("x-served-by")) == (200, expected)
    assert allowed.upstream.values("x-served-by") == []  # for the client, not the upstream
    assert (denied.status, denied.headers.get("x-served-by")) == (403, None)


# --- a failing OPA -------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failing_opa_is_an_error_answered_by_status_on_error(
    gateway: Gateway, opa: Opa, failure: str
) -> None:
    errors = gateway.authd.counter("authd_check_errors_total")
    with opa.failing(failure):
        reply = ask(gateway, "GET", "/public/page")
    if gateway.engine == "opa":
        assert reply.status == ERROR_STATUS, reply.body
        after = gateway.authd.counter("authd_check_errors_total", transport=gateway.error_transport)
        assert after == errors + 1
        logged = gateway.authd.stderr_path.read_text()
        assert "Traceback" not in logged, logged[-3000:]
    else:
        assert reply.status == 200, reply.body  # the other engines never ask OPA
    # authd is unharmed: with OPA back, the same request is allowed.
    assert ask(gateway, "GET", "/public/page").status == 200
    assert gateway.authd.process.poll() is None

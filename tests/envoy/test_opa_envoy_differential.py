"""OPA-Envoy's tutorial policies through real Envoy, answered byte for byte as the plugin does.

One Envoy (the module's), three listeners in front of the same echo upstream: ext_authz over
gRPC to an authd on the native engine, over gRPC to an authd on grpcio, and in HTTP service
mode. Both authds run the same Rego with ``policy_engine = "rego"`` and nothing else
configured, so ``policy_compat`` is its default for Rego, ``opa-envoy``. The Envoy filter is
the one the OPA-Envoy tutorials use (gRPC, ``with_request_body``, ``status_on_error`` left at
its default, 403).

Every expected answer below is what the OPA-Envoy plugin (1.9, ``internal/internal.go`` and
``envoyauth/response.go``) sends for the policy's result, as Envoy then turns it into the
client's answer:

- a boolean ``false`` → ``PERMISSION_DENIED`` with no ``denied_response``: 403, empty body;
- ``true`` → ``OK`` with no ``ok_response``: the request goes upstream untouched (the
  bearer token too; no identity or decision-id headers);
- an object: ``headers`` as header options with no append action (Envoy adds them, one line
  per value), ``request_headers_to_remove``, ``response_headers_to_add`` and the query
  mutations on allow; ``http_status`` (403 when absent), ``headers`` and ``body`` on deny,
  the body with no content-type of the plugin's (Envoy's local reply then says
  ``text/plain``);
- an ``http_status`` outside Envoy's ``StatusCode`` enum (418) → the plugin's ``Check``
  returns an error → Envoy's ``status_on_error`` (default 403, empty body);
- ``dynamic_metadata`` → the CheckResponse's, plus ``decision_id``.

HTTP service mode has no OPA-Envoy counterpart (the plugin speaks gRPC only); there authd
gives the same client- and upstream-visible answer where the mode can carry it (no query
mutations and no dynamic metadata in that mode), with Envoy told which of the policy's
headers to pass: ``allowed_upstream_headers`` (set, as gRPC mode does with the plugin's
header options) and ``allowed_client_headers`` (else Envoy also passes its own
``x-envoy-upstream-service-time`` of the authz call to the client).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.envoy import (
    Authd,
    EchoUpstream,
    Envoy,
    Reply,
    access_log_entry,
    authd_config,
    request,
    start_authd,
    start_envoy,
)

TRANSPORTS = ("native", "grpcio", "http")

POLICY = """\
package envoy.authz

import rego.v1

default allow := false

# The OPA-Envoy JWT tutorial: the policy decodes the bearer itself (no verification by the
# proxy or by authd; the tutorial's io.jwt.decode).
token := {"payload": payload} if {
	[_, encoded] := split(input.attributes.request.http.headers.authorization, " ")
	[_, payload, _] := io.jwt.decode(encoded)
}

# Path and method rules: guests may read /people, admins may create someone named as
# themselves (a body rule on parsed_body).
allow if {
	input.parsed_path == ["people"]
	input.attributes.request.http.method == "GET"
	token.payload.role in {"guest", "admin"}
}

allow if {
	input.parsed_path == ["people"]
	input.attributes.request.http.method == "POST"
	token.payload.role == "admin"
	input.parsed_body.firstname == token.payload.sub
}

# Header rule: /bool/<anything> with x-let-me-in: yes.
allow if {
	input.parsed_path[0] == "bool"
	input.attributes.request.http.headers["x-let-me-in"] == "yes"
}

# Custom status, headers and body on deny.
allow := {"allowed": false, "http_status": 401, "headers": challenge, "body": "who are you?"} if {
	input.parsed_path[0] == "login"
}

challenge := {"www-authenticate": "Bearer realm=\\"tutorial\\""}

# A status Envoy's StatusCode enum does not have.
allow := {"allowed": false, "http_status": 418} if input.parsed_path[0] == "teapot"

# Upstream headers (one name twice), a header removed, a client response header, query
# mutations, dynamic metadata.
allow := object.union(mutations, {"dynamic_metadata": {"tenant": "acme"}}) if {
	input.parsed_path[0] == "mutate"
}

mutations := {
	"allowed": true,
	"headers": [{"x-tenant": "acme"}, {"x-tenant": "beta"}],
	"request_headers_to_remove": ["x-secret"],
	"response_headers_to_add": {"x-served-by": "policy"},
	"query_parameters_to_set": {"added": "1"},
	"query_parameters_to_remove": ["drop"],
}
"""

GRPC_FILTER = """\
              transport_api_version: V3
              with_request_body: {{max_request_bytes: 8192, allow_partial_message: true}}
              failure_mode_allow: false
              grpc_service:
                envoy_grpc: {{cluster_name: {cluster}}}
                timeout: 5s"""

HTTP_FILTER = """\
              transport_api_version: V3
              with_request_body: {max_request_bytes: 8192, allow_partial_message: true}
              failure_mode_allow: false
              allowed_headers:
                patterns:
                - {exact: authorization}
                - {exact: content-type}
                - {exact: x-let-me-in}
              http_service:
                server_uri: {uri: "http://127.0.0.1", cluster: authd_http, timeout: 5s}
                path_prefix: /check
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{exact: x-tenant}]
                  allowed_client_headers_on_success:
                    patterns: [{exact: x-served-by}]
                  allowed_client_headers:
                    patterns: [{exact: www-authenticate}]"""

LISTENER = """\
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: {name}
          codec_type: AUTO
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{access_log}"
              log_format:
                json_format:
                  path: "%REQ(:PATH)%"
                  mark: "%REQ(X-MARK)%"
                  tenant: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:tenant)%"
                  decision_id: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%"
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
{filter}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)

CLUSTER = """\
  - name: {name}
    type: STATIC
    connect_timeout: 1s
{http2}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {port}}}
"""

HTTP2 = """\
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"""


def envoy_config(native: Authd, grpcio: Authd, upstream: EchoUpstream, access_log: Path) -> str:
    filters = {
        "native": GRPC_FILTER.format(cluster="authd_native"),
        "grpcio": GRPC_FILTER.format(cluster="authd_grpcio"),
        "http": HTTP_FILTER,
    }
    listeners = "".join(
        LISTENER.format(name=name, access_log=access_log, filter=filters[name], hcm=HCM)
        for name in TRANSPORTS
    )
    clusters = "".join(
        [
            CLUSTER.format(name="authd_native", port=native.grpc_port, http2=HTTP2),
            CLUSTER.format(name="authd_grpcio", port=grpcio.grpc_port, http2=HTTP2),
            CLUSTER.format(name="authd_http", port=native.http_port, http2=""),
            CLUSTER.format(name="upstream", port=upstream.port, http2=""),
        ]
    )
    return (
        "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n"
        f"static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
    )


@dataclass
class Gateway:
    envoy: Envoy
    ports: dict[str, int]
    access_log: Path


@pytest.fixture(scope="module")
def gateway(upstream: EchoUpstream, tmp: Path) -> Iterator[Gateway]:
    authds: dict[str, Authd] = {}
    try:
        for engine in ("native", "grpcio"):
            config = authd_config(extra=f'grpc_engine = "{engine}"\nrego_files = ["authz.rego"]')
            config = config.replace('policy_engine = "rules"', 'policy_engine = "rego"')
            config = config.replace('policy_file = "policy.yaml"', 'policy_file = ""')
            authds[engine] = start_authd(tmp / engine, config, files={"authz.rego": POLICY})
        access_log = tmp / "access.log"
        text = envoy_config(authds["native"], authds["grpcio"], upstream, access_log)
        envoy = start_envoy(text, tmp / "envoy")
        try:
            ports = {name: envoy.listener_port(name) for name in TRANSPORTS}
            yield Gateway(envoy, ports, access_log)
        finally:
            envoy.stop()
    finally:
        for authd in authds.values():
            authd.stop()


def jwt(payload: dict[str, Any]) -> str:
    """An unsigned-looking HS256 token: the tutorial policy only decodes it."""

    def part(value: dict[str, Any]) -> str:
        text = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(text).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


GUEST = jwt({"sub": "bob", "role": "guest"})
ADMIN = jwt({"sub": "alice", "role": "admin"})


def ask(
    gateway: Gateway,
    transport: str,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Reply:
    return request(gateway.ports[transport], path, method=method, headers=headers, body=body)


def local_reply_headers(reply: Reply) -> dict[str, str]:
    """The client's headers of an answer Envoy made itself, without the changing date."""
    return {k: v for k, v in reply.headers.items() if k != "date"}


parametrize_transports = pytest.mark.parametrize("transport", TRANSPORTS)


@parametrize_transports
def test_boolean_false_is_403_with_an_empty_body_and_nothing_added(
    gateway: Gateway, transport: str
) -> None:
    reply = ask(gateway, transport, "/bool/x", headers={"authorization": "Bearer nonsense"})
    # internal.go: status PERMISSION_DENIED, no denied_response → Envoy's default 403.
    assert (reply.status, reply.body) == (403, b"")
    assert local_reply_headers(reply) == {"content-length": "0", "server": "envoy"}


@parametrize_transports
def test_boolean_true_lets_the_request_through_untouched(gateway: Gateway, transport: str) -> None:
    headers = {"authorization": "Bearer nonsense", "x-let-me-in": "yes", "x-mark": "m1"}
    reply = ask(gateway, transport, "/bool/x", headers=headers)
    assert reply.status == 200, reply.body
    seen = reply.upstream
    # An unverified bearer is the policy's business: it is neither refused nor stripped.
    assert seen.values("authorization") == ["Bearer nonsense"]
    assert [name for name, _ in seen.header_list if name.startswith("x-authd")] == []
    assert "x-served-by" not in reply.headers


@parametrize_transports
def test_the_jwt_tutorial_decodes_the_bearer_in_the_policy(
    gateway: Gateway, transport: str
) -> None:
    for token, status in ((GUEST, 200), (ADMIN, 200), ("", 403)):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        reply = ask(gateway, transport, "/people", headers=headers)
        assert reply.status == status, (token, reply.body)
        if status == 200:
            assert reply.upstream.values("authorization") == [f"Bearer {token}"]
    # A guest may read but not create.
    created = ask(
        gateway,
        transport,
        "/people",
        method="POST",
        headers={"authorization": f"Bearer {GUEST}", "content-type": "application/json"},
        body=b'{"firstname": "bob"}',
    )
    assert (created.status, created.body) == (403, b"")


@parametrize_transports
def test_a_body_rule_reads_parsed_body(gateway: Gateway, transport: str) -> None:
    headers = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    own = ask(
        gateway,
        transport,
        "/people",
        method="POST",
        headers=headers,
        body=b'{"firstname": "alice"}',
    )
    assert own.status == 200, own.body
    assert own.upstream.body == '{"firstname": "alice"}'
    other = ask(
        gateway, transport, "/people", method="POST", headers=headers, body=b'{"firstname": "eve"}'
    )
    assert (other.status, other.body) == (403, b"")


@parametrize_transports
def test_custom_status_headers_and_body_on_deny(gateway: Gateway, transport: str) -> None:
    reply = ask(gateway, transport, "/login")
    # response.go: http_status 401, headers and body as given; no content-type from the
    # plugin, so Envoy's local reply labels the body text/plain.
    assert (reply.status, reply.body) == (401, b"who are you?")
    assert local_reply_headers(reply) == {
        "www-authenticate": 'Bearer realm="tutorial"',
        "content-length": "12",
        "content-type": "text/plain",
        "server": "envoy",
    }


@parametrize_transports
def test_a_status_outside_envoys_enum_is_an_error_answered_by_status_on_error(
    gateway: Gateway, transport: str
) -> None:
    reply = ask(gateway, transport, "/teapot")
    # response.go: "invalid HTTP status code 418" → Check returns an error → Envoy's
    # status_on_error, 403 by default, with an empty body.
    assert (reply.status, reply.body) == (403, b"")
    assert local_reply_headers(reply) == {"content-length": "0", "server": "envoy"}


@parametrize_transports
def test_upstream_and_client_header_mutations(gateway: Gateway, transport: str) -> None:
    mark = f"mutate-{transport}"
    headers = {"x-secret": "s3cr3t", "x-tenant": "client", "x-mark": mark}
    reply = ask(gateway, transport, "/mutate/x?keep=1&drop=2", headers=headers)
    assert reply.status == 200, reply.body
    seen = reply.upstream
    # Header options without an append action: Envoy 1.40 sets each in turn, the last wins.
    assert seen.values("x-tenant") == ["beta"]
    assert seen.values("x-secret") == []
    assert reply.headers["x-served-by"] == "policy"
    assert "x-served-by" not in dict(seen.header_list)
    if transport == "http":
        # HTTP service mode carries neither query mutations nor dynamic metadata.
        assert seen.path == "/mutate/x?keep=1&drop=2"
        return
    # query_parameters_to_set / _to_remove as the plugin sends them; Envoy rebuilds the query.
    assert seen.path == "/mutate/x?added=1&keep=1"
    logged = access_log_entry(gateway.access_log, "mark", mark)
    assert logged["tenant"] == "acme"
    assert logged["decision_id"]

"""``parsed_body`` and ``truncated_body`` through real Envoy, as the OPA-Envoy plugin sets them.

One Envoy in front of the echo upstream, with the filter the plugin's docs use for bodies
(``with_request_body: {max_request_bytes: 1024, allow_partial_message: true,
pack_as_bytes: true}``), three listeners: ext_authz over gRPC to an authd on the native
engine with a protoset (``authz.opa_envoy_protoset``, compiled from a test proto at test
time), in HTTP service mode to the same authd, and over gRPC to a second authd with
``authz.skip_request_body_parse = true``. Both run Rego in OPA-Envoy mode.

The policy compares what it is given with what the test says the plugin gives for the
same request (``envoyauth/request.go`` of opa-envoy-plugin 1.9, ``getParsedBody``), sent
in the ``x-expect`` header, and denies 403 with the body ``match`` or ``mismatch``: the
comparison is Rego's own equality, so a list, a number or a null that differs shows.
A body the plugin cannot parse is the plugin's 400 (``RequestParseErr``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.envoy import (
    Authd,
    EchoUpstream,
    Envoy,
    authd_config,
    request,
    start_authd,
    start_envoy,
)
from tests.support.protoset import SERVICE, compile_protoset, message_class

POLICY = """\
package envoy.authz

import rego.v1

allow := {"allowed": false, "http_status": 403, "body": verdict}

seen := {
	"parsed_body": object.get(input, "parsed_body", "absent"),
	"truncated_body": object.get(input, "truncated_body", "absent"),
}

verdict := "match" if {
	json.unmarshal(input.attributes.request.http.headers["x-expect"]) == seen
} else := "mismatch"
"""

BODY = (
    "with_request_body: {max_request_bytes: 1024, allow_partial_message: true, pack_as_bytes: true}"
)

GRPC_FILTER = f"""\
              transport_api_version: V3
              {BODY}
              grpc_service:
                envoy_grpc: {{cluster_name: {{cluster}}}}
                timeout: 5s"""

HTTP_FILTER = f"""\
              transport_api_version: V3
              {BODY}
              allowed_headers:
                patterns: [{{exact: content-type}}, {{exact: x-expect}}]
              http_service:
                server_uri: {{uri: "http://127.0.0.1", cluster: authd_http, timeout: 5s}}
                path_prefix: /check"""

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
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: upstream}}}}]
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
{filter}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""

CLUSTER = """\
  - name: {name}
    type: STATIC
    connect_timeout: 1s
{http2}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""

HTTP2 = """\
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"""

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
TRANSPORTS = ("grpc", "http")


@dataclass
class Gateway:
    envoy: Envoy
    ports: dict[str, int]
    protoset: Path


def envoy_config(parsing: Authd, skipping: Authd, upstream: EchoUpstream) -> str:
    filters = {
        "grpc": GRPC_FILTER.replace("{cluster}", "authd_grpc"),
        "http": HTTP_FILTER,
        "skip": GRPC_FILTER.replace("{cluster}", "authd_skip"),
    }
    listeners = "".join(LISTENER.format(name=n, filter=f, hcm=HCM) for n, f in filters.items())
    clusters = "".join(
        [
            CLUSTER.format(name="authd_grpc", port=parsing.grpc_port, http2=HTTP2),
            CLUSTER.format(name="authd_skip", port=skipping.grpc_port, http2=HTTP2),
            CLUSTER.format(name="authd_http", port=parsing.http_port, http2=""),
            CLUSTER.format(name="upstream", port=upstream.port, http2=""),
        ]
    )
    return (
        "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n"
        f"static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
    )


def rego_authd(data_dir: Path, extra: str) -> Authd:
    config = authd_config(extra=f'rego_files = ["authz.rego"]\n{extra}')
    config = config.replace('policy_engine = "rules"', 'policy_engine = "rego"')
    config = config.replace('policy_file = "policy.yaml"', 'policy_file = ""')
    return start_authd(data_dir, config, files={"authz.rego": POLICY})


@pytest.fixture(scope="module")
def gateway(upstream: EchoUpstream, tmp: Path) -> Iterator[Gateway]:
    (tmp / "proto").mkdir()
    protoset = compile_protoset(tmp / "proto")
    authds: list[Authd] = []
    try:
        parsing = rego_authd(tmp / "parsing", f'opa_envoy_protoset = "{protoset}"')
        authds.append(parsing)
        skipping = rego_authd(tmp / "skipping", "skip_request_body_parse = true")
        authds.append(skipping)
        envoy = start_envoy(envoy_config(parsing, skipping, upstream), tmp / "envoy")
        try:
            ports = {name: envoy.listener_port(name) for name in ("grpc", "http", "skip")}
            yield Gateway(envoy, ports, protoset)
        finally:
            envoy.stop()
    finally:
        for authd in authds:
            authd.stop()


def expect(parsed_body: Any, truncated_body: Any) -> str:
    """The ``x-expect`` header: what the plugin's input holds (ASCII JSON)."""
    return json.dumps({"parsed_body": parsed_body, "truncated_body": truncated_body})


def post(
    gateway: Gateway, listener: str, content_type: str, body: bytes, expected: str
) -> tuple[int, bytes]:
    headers = {"content-type": content_type, "x-expect": expected}
    reply = request(gateway.ports[listener], "/submit", method="POST", headers=headers, body=body)
    return reply.status, reply.body


MULTIPART = b"".join(
    [
        b"preamble\r\n",
        b"--XyZ\r\n",
        b'Content-Disposition: form-data; name="name"\r\n\r\nalice\r\n',
        b"--XyZ\r\n",
        b'Content-Disposition: form-data; name="doc"\r\nContent-Type: application/json\r\n\r\n',
        b'{"roles": ["admin", "dev"], "n": 2.5, "x": null}\r\n',
        b"--XyZ\r\n",
        b'Content-Disposition: form-data; name="name"; filename="b.txt"\r\n',
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
        b"b=C3=B6b =\r\nsoft\r\n",
        b"--XyZ\r\n",
        b"Content-Disposition: attachment\r\n\r\nskipped\r\n",
        b"--XyZ--\r\n",
    ]
)
MULTIPART_SEEN = {
    "name": ["alice", "b\u00f6b soft"],
    "doc": [{"roles": ["admin", "dev"], "n": 2.5, "x": None}],
}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_multipart_form_data_is_a_map_of_lists_of_part_values(
    gateway: Gateway, transport: str
) -> None:
    content_type = "multipart/form-data; boundary=XyZ"
    answer = post(gateway, transport, content_type, MULTIPART, expect(MULTIPART_SEEN, False))
    assert answer == (403, b"match")
    # The same body said to be something else does not read the same.
    wrong = expect({"name": ["alice"]}, False)
    assert post(gateway, transport, content_type, MULTIPART, wrong) == (403, b"mismatch")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_url_encoded_form_is_a_map_of_lists(gateway: Gateway, transport: str) -> None:
    body = b"a=1&b=two+words&a=%E2%9C%93&empty="
    seen = {"a": ["1", "\u2713"], "b": ["two words"], "empty": [""]}
    content_type = "application/x-www-form-urlencoded"
    assert post(gateway, transport, content_type, body, expect(seen, False)) == (403, b"match")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_body_envoy_cut_at_max_request_bytes_is_truncated_and_not_parsed(
    gateway: Gateway, transport: str
) -> None:
    body = b"a=" + b"x" * 2000
    content_type = "application/x-www-form-urlencoded"
    assert post(gateway, transport, content_type, body, expect(None, True)) == (403, b"match")
    form = b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n" + b"x" * 2000 + b"\r\n--XyZ--"
    multipart = "multipart/form-data; boundary=XyZ"
    assert post(gateway, transport, multipart, form, expect(None, True)) == (403, b"match")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_other_content_types_and_no_boundary_give_null(gateway: Gateway, transport: str) -> None:
    for content_type in ("text/plain", "multipart/form-data"):
        answer = post(gateway, transport, content_type, MULTIPART, expect(None, False))
        assert answer == (403, b"match"), content_type


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_grpc_body_on_a_path_not_naming_a_method_is_the_plugins_400(
    gateway: Gateway, transport: str
) -> None:
    # The plugin's "invalid parsed path": /submit is one segment, not /Service/Method.
    headers = {"content-type": "application/grpc", "x-expect": expect(None, False)}
    body = b"\x00\x00\x00\x00\x00"
    reply = request(gateway.ports[transport], "/submit", method="POST", headers=headers, body=body)
    # Envoy answers a gRPC request's local reply in gRPC: 400 is grpc-status INTERNAL.
    assert (reply.status, reply.headers.get("grpc-status")) == (200, "13"), reply
    assert reply.headers["grpc-message"] == "request_parse_error: body cannot be parsed"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_multipart_body_gos_reader_fails_on_is_the_plugins_400(
    gateway: Gateway, transport: str
) -> None:
    broken = b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nno end"
    status, body = post(
        gateway, transport, "multipart/form-data; boundary=XyZ", broken, expect(None, False)
    )
    assert (status, body) == (400, b"request_parse_error: body cannot be parsed")


def test_skip_request_body_parse_leaves_both_members_out(gateway: Gateway) -> None:
    absent = expect("absent", "absent")
    content_type = "multipart/form-data; boundary=XyZ"
    assert post(gateway, "skip", content_type, MULTIPART, absent) == (403, b"match")
    # Not even a body the plugin could not parse is looked at.
    assert post(gateway, "skip", "application/json", b"{nope", absent) == (403, b"match")


# --- gRPC requests, decoded with the protoset ----------------------------------------------


def grpc_call(
    gateway: Gateway, listener: str, method: str, payload: bytes, expected: str
) -> tuple[grpc.StatusCode, str]:
    """A unary call through Envoy; the policy always denies, so the answer is its verdict."""
    with grpc.insecure_channel(f"127.0.0.1:{gateway.ports[listener]}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            call(payload, metadata=[("x-expect", expected)], timeout=10)
        except grpc.RpcError as err:
            return err.code(), err.details() or ""
    raise AssertionError("the policy always denies")


def order(gateway: Gateway, **fields: Any) -> bytes:
    """An OrderRequest's bytes (grpcio frames it itself)."""
    cls = message_class(gateway.protoset.read_bytes(), "shop.v1.OrderRequest")
    return bytes(cls(**fields).SerializeToString())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_grpc_request_is_decoded_as_protojson(gateway: Gateway, transport: str) -> None:
    payload = order(
        gateway,
        customer_id="c-7",
        total_cents=9_007_199_254_740_993,
        items=[{"sku": "tea", "count": 3}],
        colour=1,
        blob=b"\x00\x01",
    )
    seen = {
        "customerId": "c-7",
        "totalCents": "9007199254740993",  # int64: a string, as protojson writes it
        "items": [{"sku": "tea", "count": 3}],
        "colour": "RED",
        "blob": "AAE=",
    }
    code, details = grpc_call(gateway, transport, "Place", payload, expect(seen, False))
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "match")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unknown_or_client_streaming_method_gives_null(gateway: Gateway, transport: str) -> None:
    payload = order(gateway, customer_id="c")
    for method in ("Upload", "Nope"):
        code, details = grpc_call(gateway, transport, method, payload, expect(None, False))
        assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "match"), method


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_grpc_message_envoy_cut_is_truncated(gateway: Gateway, transport: str) -> None:
    payload = order(gateway, customer_id="x" * 3000)
    code, details = grpc_call(gateway, transport, "Place", payload, expect(None, True))
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "match")

"""A config Envoy refuses (NACK) leaves the last accepted one enforcing.

authd's ECDS servicer runs in the test process (``tests.support.ecds``) so the test can push
a config authd's own validation lets through but Envoy refuses: a regex RE2 rejects (a
repetition above 1000) that Python's ``re`` compiles. The servicer records Envoy's reason
and that node's applied version stays the last good one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.config.core.v3 import extension_pb2
from google.protobuf import json_format

from authd.policy.rules import RulesPolicy
from authd.xds.rbac_compiler import CompiledRbac, compile_rbac
from authd.xds.rbac_validation import validate_rbac
from authd.xds.stream import XdsNodeStatus
from tests.support.ecds import InProcessEcds
from tests.support.envoy import (
    WEB,
    EchoUpstream,
    Envoy,
    foreign_svid,
    mtls_context,
    request,
    wait_for,
)
from tests.support.ports import free_port
from tests.support.rbac import FILTER_NAME, applied_version, rbac_sidecar

POLICY = """\
version: 1
rule_sets:
  s:
    rules:
      - {name: web-orders, effect: allow, methods: [GET], paths: ["/orders/{id}"],
         callers: ["spiffe://example.org/web"]}
"""


def compiled(text: str) -> CompiledRbac:
    rule_set = RulesPolicy.from_text(text, "p.yaml").rule_sets["s"]
    return compile_rbac(rule_set, rule_set_name="s", filter_name=FILTER_NAME)


def refused_by_re2(good: CompiledRbac) -> CompiledRbac:
    """``good`` with its path template's regex swapped for one RE2 refuses."""
    as_json = json_format.MessageToJson(good.config)
    bad_json = re.sub(r'"regex": "/orders[^"]*"', '"regex": "/orders/a{1001}"', as_json)
    assert bad_json != as_json
    config = json_format.Parse(bad_json, extension_pb2.TypedExtensionConfig())
    return dataclasses.replace(good, config=config, version="refused-by-envoy")


@pytest.fixture(scope="module")
def cert_dir(tmp: Path) -> Path:
    return foreign_svid(tmp / "web", WEB)  # the sidecar trusts its bundle.pem


@pytest.fixture(scope="module")
def ecds(tmp: Path) -> Iterator[InProcessEcds]:
    server = InProcessEcds(tmp, FILTER_NAME)
    server.push(compiled(POLICY))
    yield server
    server.close()


@pytest.fixture(scope="module")
def sidecar(
    ecds: InProcessEcds, cert_dir: Path, upstream: EchoUpstream, tmp: Path
) -> Iterator[Envoy]:
    envoy = rbac_sidecar(
        tmp / "envoy",
        cert_dir=cert_dir,
        workload_socket=ecds.socket_path,
        app_port=upstream.port,
        authz_port=free_port(),  # nothing listens: only native decisions can succeed
        policy="s",
        access_log=tmp / "access.log",
    )
    yield envoy
    envoy.stop()


def test_a_refused_config_leaves_the_last_good_one_enforcing(
    ecds: InProcessEcds, sidecar: Envoy, cert_dir: Path
) -> None:
    good = ecds.publisher.current
    assert good is not None
    wait_for("the first config applied", lambda: applied_version(sidecar) == good.version)
    port = sidecar.listener_port("inbound")
    assert request(port, "/orders/7", context=mtls_context(cert_dir)).status == 200

    bad = refused_by_re2(good)
    validate_rbac(bad.config)  # authd's own check lets it through: only Envoy can refuse
    ecds.push(bad)

    def rules_stream() -> XdsNodeStatus | None:
        # The sidecar opens one stream per filter; this test serves the rules filter only.
        return next((n for n in ecds.status() if n.names == (good.filter_name,)), None)

    def refused() -> str | None:
        node = rules_stream()
        return node.last_nack if node is not None and node.nacked_version == bad.version else None

    reason = wait_for("Envoy's NACK", refused)
    assert "invalid repetition size" in reason
    node = rules_stream()
    assert node is not None
    assert node.acked_version == good.version
    # (Envoy 1.40's config_dump lists the refused config's version and body for ECDS; what
    # it enforces is the last one it ACKed, as the requests below show.)
    assert request(port, "/orders/7", context=mtls_context(cert_dir)).status == 200
    assert request(port, "/orders/7", method="POST", context=mtls_context(cert_dir)).status == 403

    # The next good config is taken again.
    fixed = compiled(POLICY.replace("[GET]", "[GET, POST]"))
    ecds.push(fixed)
    wait_for("the fixed config applied", lambda: applied_version(sidecar) == fixed.version)
    assert request(port, "/orders/7", method="POST", context=mtls_context(cert_dir)).status == 200

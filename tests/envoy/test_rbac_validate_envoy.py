"""Whatever rules the compiler is given, Envoy's own validation accepts the RBAC filter.

Each example is a rule set compiled into the filter of a minimal listener and checked with
``envoy --mode validate`` (the same checks Envoy runs on a config pushed over ECDS).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings

from authd.policy.rules import RulesPolicy
from authd.xds.rbac_compiler import compile_rbac
from authd.xds.rbac_validation import validate_rbac
from tests.support.envoy import DEPLOY_ENVOY, ENVOY_BINARY, short_tmpdir
from tests.support.rbac_rules import rules_yaml

ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


def envoy_validates(
    typed_extension_config: object, where: Path
) -> subprocess.CompletedProcess[str]:
    typed = json_format.MessageToDict(typed_extension_config)  # type: ignore[arg-type]
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": "l",
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "v",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/"},
                                                "direct_response": {"status": 200},
                                            }
                                        ],
                                    }
                                ]
                            },
                            "http_filters": [
                                {"name": typed["name"], "typed_config": typed["typedConfig"]},
                                ROUTER,
                            ],
                        },
                    }
                ]
            }
        ],
    }
    path = where / "rbac.json"
    path.write_text(json.dumps({"static_resources": {"listeners": [listener]}}))
    return subprocess.run(
        [str(ENVOY_BINARY), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_shipped_example_policy_compiles_to_what_envoy_accepts(tmp: Path) -> None:
    policy = RulesPolicy.from_text(
        (DEPLOY_ENVOY.parent / "policy" / "rules.yaml").read_text(), "rules.yaml"
    )
    for name, rule_set in policy.rule_sets.items():
        compiled = compile_rbac(
            rule_set, rule_set_name=name, filter_name="authd.rbac", revoked=["spiffe://x/y"]
        )
        validate_rbac(compiled.config)
        done = envoy_validates(compiled.config, tmp)
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=rules_yaml())
def test_any_rule_set_compiles_to_what_envoy_accepts(text: str) -> None:
    rule_set = RulesPolicy.from_text(text, "t.yaml").rule_sets["s"]
    compiled = compile_rbac(rule_set, rule_set_name="s", filter_name="authd.rbac")
    validate_rbac(compiled.config)
    where = short_tmpdir()
    done = envoy_validates(compiled.config, where)
    assert done.returncode == 0, f"{text}\n{done.stdout}{done.stderr}"

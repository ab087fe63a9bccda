"""The OPA config file an operator runs OPA-Envoy with, read into authd's settings."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authd.authz.assembly import policy_source
from authd.cli.errors import Exit
from authd.config import ConfigError, load_config
from authd.config.opa_config import parse_opa_config
from authd.policy.rego_offload import OffLoopRego
from tests.support.daemon import AUTHD
from tests.support.opa_bundles import SigningKey, policy_files, signed_bundle, tar_gz

OPA_ENVOY = """\
services:
  acmecorp:
    url: https://bundles.example.com/v1
    credentials:
      bearer:
        token: "${{BUNDLE_TOKEN}}"
bundles:
  authz:
    service: acmecorp
    resource: bundles/authz.tar.gz
    polling:
      min_delay_seconds: 10
      max_delay_seconds: 20
    signing:
      keyid: global_key
keys:
  global_key:
    algorithm: ES256
    key: |
{key}
plugins:
  envoy_ext_authz_grpc:
    addr: :9191
    path: envoy/authz/allow
    dry-run: true
    skip-request-body-parse: true
    enable-reflection: false
decision_logs:
  console: true
  reporting:
    min_delay_seconds: 5
    max_delay_seconds: 7
labels:
  app: shop
"""


def _indent(pem: str) -> str:
    return "\n".join("      " + line for line in pem.strip().splitlines())


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("global_key", "ES256")


def _write(tmp_path: Path, text: str, authd: str = "") -> Path:
    (tmp_path / "opa.yaml").write_text(text)
    config = tmp_path / "authd.toml"
    config.write_text(f'[authz]\nopa_config = "{tmp_path / "opa.yaml"}"\n{authd}')
    return config


def test_the_plugin_settings_map_onto_authd(tmp_path: Path, key: SigningKey) -> None:
    config_path = _write(tmp_path, OPA_ENVOY.format(key=_indent(key.public_pem)))
    config = load_config(config_path, env={"BUNDLE_TOKEN": "t0ken"})
    authz = config.authz
    assert authz.rego_entrypoint == "envoy/authz/allow"
    assert authz.dry_run is True
    assert authz.skip_request_body_parse is True
    assert authz.grpc_reflection is False
    assert authz.grpc_address == "0.0.0.0:9191"
    assert authz.policy_engine == "rego"
    assert authz.rego_bundle == "https://bundles.example.com/v1/bundles/authz.tar.gz"
    opa = config.opa
    reporting = {"min_delay_seconds": 5, "max_delay_seconds": 7}
    assert opa.decision_logs == {"console": True, "reporting": reporting}
    assert isinstance(opa.decision_logs, dict) and opa.labels == {"app": "shop"}
    bundle = opa.bundle
    assert bundle is not None and (bundle.min_delay, bundle.max_delay) == (10, 20)
    assert bundle.signing_keyid == "global_key"
    assert opa.services["acmecorp"].request_headers() == {"Authorization": "Bearer t0ken"}
    assert "t0ken" not in repr(opa)  # secrets stay out of reprs and messages
    assert opa.warnings == ()


def test_the_opa_file_s_decision_logs_configure_opa_format_logs(
    tmp_path: Path, key: SigningKey
) -> None:
    config = load_config(_write(tmp_path, OPA_ENVOY.format(key=_indent(key.public_pem))), env={})
    logs = config.decision_logs
    assert logs.enabled and logs.console
    assert (logs.min_delay_seconds, logs.max_delay_seconds) == (5, 7)
    assert ("app", "shop") in logs.labels


def test_an_authd_decision_logs_section_wins_over_the_opa_file_s(
    tmp_path: Path, key: SigningKey
) -> None:
    text = OPA_ENVOY.format(key=_indent(key.public_pem))
    config_path = _write(tmp_path, text, '[decision_logs]\nfile = "d.log"\n')
    logs = load_config(config_path, env={}).decision_logs
    assert logs.file == "d.log" and not logs.console


def test_an_opa_decision_logs_section_opa_refuses_is_one_config_error(tmp_path: Path) -> None:
    text = "decision_logs:\n  console: true\n  reporting:\n    min_delay_seconds: 5\n"
    with pytest.raises(ConfigError, match="delay") as raised:
        load_config(_write(tmp_path, text), env={})
    assert raised.value.source == str(tmp_path / "opa.yaml")


def test_authd_s_own_keys_win_over_the_opa_file(tmp_path: Path, key: SigningKey) -> None:
    config_path = _write(
        tmp_path,
        OPA_ENVOY.format(key=_indent(key.public_pem)),
        'dry_run = false\ngrpc_address = "127.0.0.1:9300"\n',
    )
    authz = load_config(config_path, env={}).authz
    assert authz.dry_run is False and authz.grpc_address == "127.0.0.1:9300"


def test_every_unsupported_key_gets_one_warning_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = """\
services:
  s:
    url: http://x
    credentials:
      oauth2: {token_url: http://t}
bundles:
  b:
    service: s
    persist: true
    polling: {long_polling_timeout_seconds: 10}
plugins:
  envoy_ext_authz_grpc:
    query: data.envoy.authz.allow
    path: envoy/authz/allow
  other_plugin: {}
status: {console: true}
"""
    caplog.set_level(logging.WARNING, logger="authd.config")
    load_config(_write(tmp_path, text), env={})
    warned = sorted(r.getMessage().split("OPA config key ")[1] for r in caplog.records)
    assert warned == [
        "'bundles.b.persist' is not supported by authd",
        "'bundles.b.polling.long_polling_timeout_seconds' is not supported by authd",
        "'plugins.envoy_ext_authz_grpc.query' is not supported by authd",
        "'plugins.other_plugin' is not supported by authd",
        "'services.s.credentials.oauth2' is not supported by authd",
        "'status' is not supported by authd",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services: [", "not YAML"),
        ("- a list", "must be a mapping"),
        ("bundles:\n  b: {service: nowhere}\n", "service 'nowhere' is not defined"),
        ("plugins:\n  envoy_ext_authz_grpc:\n    dry-run: maybe\n", "must be true or false"),
        ("bundles:\n  b: {resource: 'file:///x', signing: {keyid: k}}\n", "'k' is not defined"),
        (
            "bundles:\n  a: {resource: 'file:///a'}\n  b: {resource: 'file:///b'}\n",
            "one bundle",
        ),
        ("services:\n  s: {}\n", "has no url"),
    ],
)
def test_an_invalid_file_is_one_config_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(_write(tmp_path, text), env={})
    assert "\n" not in str(raised.value) and "authz.opa_config" in str(raised.value)


def test_an_invalid_file_is_one_cli_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    config = _write(tmp_path, "plugins:\n  envoy_ext_authz_grpc:\n    dry-run: maybe\n")
    result = subprocess.run(
        [*AUTHD, "run", "--data-dir", str(tmp_path / "d"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == Exit.INVALID
    assert len(result.stderr.strip().splitlines()) == 1
    assert "dry-run: must be true or false" in result.stderr


def test_a_file_bundle_with_signing_keys_from_the_opa_file_loads(
    tmp_path: Path, key: SigningKey
) -> None:
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(signed_bundle(policy_files(["/public"]), key))
    text = f"""\
bundles:
  authz:
    resource: file://{bundle}
    signing: {{keyid: global_key}}
keys:
  global_key:
    algorithm: ES256
    key: |
{_indent(key.public_pem)}
"""
    config = load_config(_write(tmp_path, text), env={})
    assert config.authz.rego_bundle == str(bundle)
    source = policy_source(config)
    assert source.files == (bundle,)
    policy = source.load()
    assert isinstance(policy, OffLoopRego)
    document = {"attributes": {"request": {"http": {"path": "/public"}}}}
    assert policy.policy.evaluate_document(document).allowed
    bundle.write_bytes(tar_gz(policy_files(["/public", "/admin"])))  # unsigned now
    with pytest.raises(Exception, match=r"missing \.signatures\.json"):
        source.load()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_is_one_config_error(text: str) -> None:
    try:
        parse_opa_config(text, "opa.yaml", env={})
    except ConfigError as exc:
        assert "\n" not in str(exc)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from(
            ["url", "service", "resource", "polling", "signing", "keyid", "key", "algorithm",
             "min_delay_seconds", "max_delay_seconds", "credentials", "bearer", "token",
             "headers", "path", "dry-run", "addr", "exclude_files", "name", "x"]
        ),
        children,
        max_size=4,
    ),
    max_leaves=15,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["services", "bundles", "keys", "plugins", "decision_logs", "status"]),
        st.dictionaries(st.sampled_from(["s", "b", "k", "envoy_ext_authz_grpc"]), _values)
        | _values,
        max_size=5,
    )
)
def test_any_document_of_opa_keys_parses_or_is_one_config_error(
    document: dict[str, object],
) -> None:
    import json

    try:
        parse_opa_config(json.dumps(document), "opa.yaml", env={})
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_a_bundle_with_another_engine_is_refused_not_ignored(tmp_path: Path) -> None:
    text = "bundles:\n  b: {resource: 'file:///x.tar.gz'}\n"
    with pytest.raises(ConfigError, match="a bundle needs policy_engine = 'rego', not 'rules'"):
        load_config(_write(tmp_path, text, 'policy_engine = "rules"\n'), env={})

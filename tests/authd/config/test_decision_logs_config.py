"""[decision_logs], and the same settings from an OPA config's decision_logs section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from authd.config.decision_logs import DecisionLogSettings, decision_log_settings_from_opa
from authd.config.errors import ConfigError
from authd.config.loader import load_config

SERVICES = {
    "acmecorp": {"url": "https://logs.example.com/v1", "credentials": {"bearer": {"token": "t0k"}}},
    "other": {"url": "http://other:8080"},
}


def test_the_decision_logs_section_loads(tmp_path: Path) -> None:
    path = tmp_path / "authd.toml"
    path.write_text(
        f'data_dir = "{tmp_path}"\n'
        "[decision_logs]\n"
        'file = "opa-decisions.log"\n'
        'service_url = "http://127.0.0.1:9000"\n'
        'resource = "/v1/logs"\n'
        "min_delay_seconds = 5\n"
        "max_delay_seconds = 10\n"
        "upload_size_limit_bytes = 65536\n"
        'mask_decision = "data.system.log.mask"\n'
        'labels = {region = "eu"}\n'
    )
    settings = load_config(path, env={}).decision_logs
    assert settings.enabled
    assert settings.upload_url == "http://127.0.0.1:9000/v1/logs"
    assert (settings.min_delay_seconds, settings.max_delay_seconds) == (5, 10)
    assert settings.mask_decision == "system/log/mask"
    assert settings.labels == (("region", "eu"),)


def test_decision_logs_are_off_by_default(tmp_path: Path) -> None:
    assert not load_config(None, env={"AUTHD_DATA_DIR": str(tmp_path)}).decision_logs.enabled


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("service_url", '"ftp://x"', "http"),
        ("labels", '{id = "mine"}', "set by authd"),
        ("max_delay_seconds", "1", "min_delay_seconds"),
        ("mask_decision", '"a b"', "data path"),
    ],
)
def test_bad_decision_logs_values_name_the_key(
    tmp_path: Path, key: str, value: str, why: str
) -> None:
    path = tmp_path / "authd.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n[decision_logs]\n{key} = {value}\n')
    with pytest.raises(ConfigError, match=why) as raised:
        load_config(path, env={})
    assert raised.value.key == f"decision_logs.{key}"


def test_an_opa_config_with_defaults_uses_the_first_service_as_opa_does() -> None:
    settings = decision_log_settings_from_opa({}, SERVICES)
    assert settings.upload_url == "https://logs.example.com/v1/logs"
    assert ("authorization", "Bearer t0k") in settings.service_headers
    assert (settings.min_delay_seconds, settings.max_delay_seconds) == (300, 600)
    assert settings.upload_size_limit_bytes == 32768
    assert (settings.mask_decision, settings.drop_decision) == (
        "system/log/mask",
        "system/log/drop",
    )


def test_an_opa_config_with_everything_set() -> None:
    settings = decision_log_settings_from_opa(
        {
            "service": "other",
            "partition_name": "p1",
            "console": True,
            "mask_decision": "/custom/mask",
            "drop_decision": "custom/drop",
            "reporting": {
                "min_delay_seconds": 1,
                "max_delay_seconds": 2,
                "upload_size_limit_bytes": 4096,
                "buffer_size_limit_bytes": 8192,
            },
        },
        SERVICES,
        labels={"id": "ignored", "team": "pay"},
    )
    assert settings == DecisionLogSettings(
        console=True,
        service_url="http://other:8080",
        resource="/logs/p1",
        min_delay_seconds=1,
        max_delay_seconds=2,
        upload_size_limit_bytes=4096,
        buffer_size_limit_bytes=8192,
        mask_decision="custom/mask",
        drop_decision="custom/drop",
        labels=(("team", "pay"),),
    )


def test_console_only_uploads_nothing_and_services_may_be_a_list() -> None:
    assert decision_log_settings_from_opa({"console": True}, SERVICES).upload_url == ""
    listed: Any = [{"name": "s", "url": "http://s/"}]
    assert decision_log_settings_from_opa({}, listed).upload_url == "http://s/logs"


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"service": "missing"}, "decision_logs.service"),
        ({"reporting": {"min_delay_seconds": 5}}, "decision_logs.reporting.max_delay_seconds"),
        ({"reporting": {"max_delay_seconds": 5}}, "decision_logs.reporting.min_delay_seconds"),
        (
            {"reporting": {"min_delay_seconds": 5, "max_delay_seconds": 1}},
            "decision_logs.reporting.max_delay_seconds",
        ),
        (
            {"reporting": {"upload_size_limit_bytes": 0}},
            "decision_logs.reporting.upload_size_limit_bytes",
        ),
        ({"reporting": {"trigger": "manual"}}, "decision_logs.reporting.trigger"),
        ({"reporting": {"buffer_type": "disk"}}, "decision_logs.reporting.buffer_type"),
        ({"plugin": "my_plugin"}, "decision_logs.plugin"),
        ({"mask_decision": 7}, "decision_logs.mask_decision"),
    ],
)
def test_what_opa_refuses_or_authd_cannot_do_is_a_config_error(
    mapping: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        decision_log_settings_from_opa(mapping, SERVICES)
    assert raised.value.key == key


def test_credentials_other_than_bearer_are_refused() -> None:
    services = {"s": {"url": "https://s", "credentials": {"client_tls": {"cert": "c"}}}}
    with pytest.raises(ConfigError, match="bearer only"):
        decision_log_settings_from_opa({}, services)

"""``authz.rego_worker_cpus``: CPU lists as Linux writes them, ``auto`` and ``all``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authd.config import ConfigError, load_config
from authd.config.cpus import MAX_CPU, format_cpu_list, parse_cpu_list


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", {0}), ("1,3", {1, 3}), ("2-4", {2, 3, 4}), (" 0-1 , 6 ", {0, 1, 6}), ("3,3", {3})],
)
def test_cpu_lists_read_as_taskset_reads_them(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


@given(st.frozensets(st.integers(0, MAX_CPU), min_size=1, max_size=40))
def test_a_formatted_list_reads_back_as_the_same_cpus(cpus: frozenset[int]) -> None:
    text = format_cpu_list(cpus)
    assert parse_cpu_list(text) == cpus
    assert "--" not in text and not text.startswith(",")


@given(st.text(max_size=30))
def test_any_text_is_a_cpu_list_or_a_value_error(text: str) -> None:
    try:
        cpus = parse_cpu_list(text)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)  # one line for the config error
    else:
        assert cpus and all(0 <= cpu <= MAX_CPU for cpu in cpus)


def test_the_default_is_auto_and_a_list_is_kept_canonical() -> None:
    assert load_config(None, env={}).authz.rego_worker_cpus == "auto"
    env = {"AUTHD_AUTHZ_REGO_WORKER_CPUS": "3,1-2"}
    assert load_config(None, env=env).authz.rego_worker_cpus == "1-3"
    env = {"AUTHD_AUTHZ_REGO_WORKER_CPUS": "all"}
    assert load_config(None, env=env).authz.rego_worker_cpus == "all"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1-0", "'1-0' in '1-0' is a range that ends before it starts"),
        ("one", "'one' is not a CPU list like 0-1,6 (or auto, or all)"),
        ("0,,1", "'0,,1' is not a CPU list like 0-1,6 (or auto, or all)"),
        ("9000", "CPU 9000 in '9000' is beyond the kernel's 8191"),
    ],
)
def test_a_bad_cpu_list_is_one_clear_config_error(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"AUTHD_AUTHZ_REGO_WORKER_CPUS": value})
    assert str(info.value) == (
        f"config key 'authz.rego_worker_cpus' (from AUTHD_AUTHZ_REGO_WORKER_CPUS): {message}"
    )

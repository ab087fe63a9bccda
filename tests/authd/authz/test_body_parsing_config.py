"""The OPA-Envoy body settings from the config: the keys the OPA config mapping also sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from authd.authz.assembly import authz_settings, body_parsing
from authd.config.errors import ConfigError
from authd.config.loader import load_config
from tests.support.protoset import SERVICE, compile_protoset, grpc_frame


def config(tmp_path: Path, **overrides: object) -> Any:
    return load_config(
        None,
        env={"HOME": str(tmp_path)},
        overrides={"data_dir": str(tmp_path), "trust_domain": "corp.test", **overrides},
    )


def test_defaults_parse_bodies_without_a_protoset(tmp_path: Path) -> None:
    parsing = authz_settings(config(tmp_path)).body_parsing
    assert (parsing.skip, parsing.grpc, parsing.max_bytes) == (False, None, 1 << 20)


def test_the_keys_set_skip_protoset_and_cap(tmp_path: Path) -> None:
    protoset = compile_protoset(tmp_path)
    parsing = body_parsing(
        config(
            tmp_path,
            **{
                "authz.skip_request_body_parse": True,
                "authz.opa_envoy_protoset": str(protoset),
                "authz.opa_envoy_max_body_bytes": 4096,
            },
        )
    )
    assert parsing.skip and parsing.max_bytes == 4096
    assert parsing.grpc is not None
    assert parsing.grpc.decode(grpc_frame(b""), [SERVICE, "Place"]).value == {}


def test_a_protoset_that_does_not_load_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.protoset"
    bad.write_bytes(b"\xff\xff not a descriptor set")
    for path in (bad, tmp_path / "missing.protoset"):
        with pytest.raises(ConfigError, match=r"authz\.opa_envoy_protoset"):
            body_parsing(config(tmp_path, **{"authz.opa_envoy_protoset": str(path)}))


def test_a_cap_below_1024_bytes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 1024"):
        config(tmp_path, **{"authz.opa_envoy_max_body_bytes": 10})

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from authd.config import (
    Config,
    ConfigError,
    default_data_dir,
    format_duration,
    load_config,
    parse_duration,
)
from authd.config.model import AdminConfig, CAConfig

NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "authd.toml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str = "", **kwargs: object) -> ConfigError:
    path = write(tmp_path, text)
    kwargs.setdefault("env", NO_ENV)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return info.value


# -- defaults ----------------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    config = load_config(None, env={}, overrides={"data_dir": "/srv/authd"})
    assert config.trust_domain == "example.org"
    assert config.data_dir == Path("/srv/authd")
    assert config.log_level == "info"
    assert config.ca == CAConfig()
    assert config.ca.key_type == "ec-p256"
    assert config.ca.jwt_key_type == "ec-p256"
    assert config.ca.ca_ttl == 24 * 3600
    assert config.ca.x509_svid_ttl == 3600
    assert config.ca.jwt_svid_ttl == 300
    assert config.ca.subject == "O=authd"
    assert config.ca.bundle_refresh_hint == 300
    assert config.ca.rotation_check_interval == 10
    assert config.store.url == "sqlite://authd.db"
    assert config.admin == AdminConfig(socket_path="", allowed_uids=())
    assert not config.upstream
    assert config.upstream_cert_path is None
    assert config.upstream_bundle_path is None


def test_default_data_dir_is_var_lib_for_root() -> None:
    assert default_data_dir({}, euid=0) == Path("/var/lib/authd")


def test_default_data_dir_follows_xdg_data_home_for_other_users() -> None:
    env = {"XDG_DATA_HOME": "/home/u/data", "HOME": "/home/u"}
    assert default_data_dir(env, euid=1000) == Path("/home/u/data/authd")
    assert default_data_dir({"HOME": "/home/u"}, euid=1000) == Path("/home/u/.local/share/authd")


def test_load_config_uses_default_data_dir_when_unset() -> None:
    assert load_config(None, env={}).data_dir == default_data_dir({})


def test_config_is_immutable() -> None:
    config = load_config(None, env={})
    with pytest.raises(AttributeError):
        config.trust_domain = "other.org"  # type: ignore[misc]


# -- resolved paths ----------------------------------------------------------------------


def test_admin_socket_defaults_to_data_dir() -> None:
    config = load_config(None, env={}, overrides={"data_dir": "/srv/authd"})
    assert config.admin_socket_path == Path("/srv/authd/admin.sock")


def test_relative_paths_resolve_against_data_dir() -> None:
    config = load_config(
        None,
        env={},
        overrides={
            "data_dir": "/srv/authd",
            "admin.socket_path": "run/admin.sock",
            "ca.upstream_cert": "up.pem",
            "ca.upstream_key": "/etc/authd/up.key",
        },
    )
    assert config.admin_socket_path == Path("/srv/authd/run/admin.sock")
    assert config.store_url == "sqlite:///srv/authd/authd.db"
    assert config.upstream
    assert config.upstream_cert_path == Path("/srv/authd/up.pem")
    assert config.upstream_key_path == Path("/etc/authd/up.key")
    assert config.upstream_bundle_path == Path("/srv/authd/up.pem")


def test_absolute_sqlite_and_redis_urls_are_kept() -> None:
    for url in ("sqlite:///tmp/x.db", "redis://localhost:6379/0", "sqlite://:memory:"):
        config = load_config(None, env={}, overrides={"store.url": url})
        assert config.store_url == url


def test_relative_data_dir_is_made_absolute() -> None:
    config = load_config(None, env={}, overrides={"data_dir": "state"})
    assert config.data_dir.is_absolute()
    assert config.data_dir.name == "state"


# -- the file and the layers above it ---------------------------------------------------


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        trust_domain = "prod.example.com"
        data_dir = "/srv/authd"
        log_level = "debug"

        [ca]
        key_type = "ec-p384"
        jwt_key_type = "rsa-2048"
        ca_ttl = "7d"
        x509_svid_ttl = "2h30m"
        jwt_svid_ttl = 600
        subject = "O=Example,C=US"
        upstream_cert = "up.pem"
        upstream_key = "up.key"
        upstream_bundle = "roots.pem"
        bundle_refresh_hint = "1m"
        rotation_check_interval = "30s"

        [store]
        url = "redis://redis:6379/0"

        [admin]
        socket_path = "/run/authd/admin.sock"
        allowed_uids = [1000, 1001]
        """,
    )
    config = load_config(path, env={})
    assert config == Config(
        data_dir=Path("/srv/authd"),
        trust_domain="prod.example.com",
        log_level="debug",
        ca=CAConfig(
            key_type="ec-p384",
            jwt_key_type="rsa-2048",
            ca_ttl=7 * 86400,
            x509_svid_ttl=9000,
            jwt_svid_ttl=600,
            subject="O=Example,C=US",
            upstream_cert="up.pem",
            upstream_key="up.key",
            upstream_bundle="roots.pem",
            bundle_refresh_hint=60,
            rotation_check_interval=30,
        ),
        store=config.store,
        admin=AdminConfig(socket_path="/run/authd/admin.sock", allowed_uids=(1000, 1001)),
    )
    assert config.store_url == "redis://redis:6379/0"
    assert config.upstream_bundle_path == Path("/srv/authd/roots.pem")
    assert config.ca.subject_name == x509.Name.from_rfc4514_string("O=Example,C=US")


def test_env_overrides_file_and_overrides_override_env(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        trust_domain = "file.org"
        log_level = "debug"
        [ca]
        key_type = "ec-p384"
        x509_svid_ttl = "2h"
        """,
    )
    env = {
        "AUTHD_TRUST_DOMAIN": "env.org",
        "AUTHD_CA_KEY_TYPE": "rsa-4096",
        "AUTHD_LOG_LEVEL": "WARNING",
    }
    config = load_config(path, env=env, overrides={"trust_domain": "flag.org"})
    assert config.trust_domain == "flag.org"  # overrides > env > file
    assert config.ca.key_type == "rsa-4096"  # env > file
    assert config.log_level == "warning"  # env, case-insensitive
    assert config.ca.x509_svid_ttl == 7200  # file > defaults


def test_env_values_are_parsed_like_file_values() -> None:
    env = {
        "AUTHD_ADMIN_ALLOWED_UIDS": "0, 1000",
        "AUTHD_CA_JWT_SVID_TTL": "90",
        "AUTHD_CA_CA_TTL": "2h",
        "AUTHD_DATA_DIR": "/srv/authd",
        "AUTHD_STORE_URL": "sqlite://db/authd.db",
    }
    config = load_config(None, env=env)
    assert config.admin.allowed_uids == (0, 1000)
    assert config.ca.jwt_svid_ttl == 90
    assert config.ca.ca_ttl == 7200
    assert config.store_url == "sqlite:///srv/authd/db/authd.db"


def test_empty_allowed_uids_from_env() -> None:
    config = load_config(None, env={"AUTHD_ADMIN_ALLOWED_UIDS": ""})
    assert config.admin.allowed_uids == ()


def test_unrelated_env_is_ignored() -> None:
    env = {"HOME": "/root", "AUTHD_CONFIG": "/etc/authd/authd.toml", "AUTHDX": "1"}
    assert load_config(None, env=env).trust_domain == "example.org"


def test_none_override_means_flag_not_given() -> None:
    config = load_config(None, env={"AUTHD_LOG_LEVEL": "error"}, overrides={"log_level": None})
    assert config.log_level == "error"


def test_path_overrides_accept_path_objects() -> None:
    config = load_config(None, env={}, overrides={"data_dir": Path("/srv/a")})
    assert config.data_dir == Path("/srv/a")


def test_spiffe_uri_trust_domain_is_normalised() -> None:
    config = load_config(None, env={}, overrides={"trust_domain": "spiffe://example.com"})
    assert config.trust_domain == "example.com"


def test_admin_allows_root_always_and_listed_uids() -> None:
    admin = AdminConfig(allowed_uids=(1000,))
    assert admin.allows_uid(0)
    assert admin.allows_uid(1000)
    assert not admin.allows_uid(1001)


# -- errors name the key and the source ---------------------------------------------------


def test_unknown_file_key_names_key_and_file(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[ca]\nkey_typ = "ec-p256"\n')
    assert err.key == "ca.key_typ"
    assert err.source == str(tmp_path / "authd.toml")
    assert str(err) == (
        f"config key 'ca.key_typ' (from {tmp_path / 'authd.toml'}): "
        "unknown key; did you mean 'ca.key_type'?"
    )


def test_unknown_top_level_key_and_section(tmp_path: Path) -> None:
    assert error_for(tmp_path, 'trust_domian = "x"').key == "trust_domian"
    assert error_for(tmp_path, "[cas]\nx = 1").key == "cas"


def test_section_must_be_a_table(tmp_path: Path) -> None:
    err = error_for(tmp_path, "ca = 5")
    assert err.key == "ca"
    assert "table" in err.why


def test_unknown_env_key_names_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"AUTHD_CA_KEY_TYP": "ec-p256"})
    assert info.value.key == "ca.key_typ"
    assert info.value.source == "AUTHD_CA_KEY_TYP"
    assert "unknown key" in str(info.value)


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"ca.bogus": 1})
    assert info.value.key == "ca.bogus"
    assert info.value.source == "overrides"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    err = error_for(tmp_path, "trust_domain = ")
    assert err.source == str(tmp_path / "authd.toml")
    assert "invalid TOML" in str(err)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml", env={})


def test_invalid_value_from_env_names_key_and_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"AUTHD_CA_KEY_TYPE": "ed25519"})
    assert str(info.value) == (
        "config key 'ca.key_type' (from AUTHD_CA_KEY_TYPE): "
        "must be one of ec-p256, ec-p384, rsa-2048, rsa-4096; got 'ed25519'"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("trust_domain", ""),
        ("trust_domain", "Example.org"),
        ("trust_domain", "example.org:8443"),
        ("trust_domain", "spiffe://example.org/path"),
        ("trust_domain", "user@example.org"),
        ("trust_domain", "a" * 256),
        ("trust_domain", 5),
        ("log_level", "trace"),
        ("ca.key_type", "ec-p521"),
        ("ca.jwt_key_type", "hs256"),
        ("ca.ca_ttl", "10x"),
        ("ca.ca_ttl", "30s"),
        ("ca.x509_svid_ttl", 0),
        ("ca.jwt_svid_ttl", "-5m"),
        ("ca.bundle_refresh_hint", "0s"),
        ("ca.rotation_check_interval", True),
        ("ca.subject", "not a name"),
        ("store.url", "postgres://db"),
        ("store.url", "authd.db"),
        ("admin.allowed_uids", "root"),
        ("admin.allowed_uids", [-1]),
        ("admin.allowed_uids", 1000),
        ("admin.socket_path", 7),
    ],
)
def test_invalid_values_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={key: value})
    assert info.value.key == key
    assert str(info.value).startswith(f"config key {key!r} (from overrides): ")


def test_svid_ttl_must_not_exceed_half_the_ca_ttl(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[ca]\nca_ttl = "24h"\nx509_svid_ttl = "13h"\n')
    assert err.key == "ca.x509_svid_ttl"
    assert str(err) == (
        f"config key 'ca.x509_svid_ttl' (from {tmp_path / 'authd.toml'}): "
        "must not exceed ca.ca_ttl / 2 (12h)"
    )
    short = {"ca.ca_ttl": 60, "ca.x509_svid_ttl": 30, "ca.jwt_svid_ttl": 31}
    with pytest.raises(ConfigError, match=r"^config key 'ca.jwt_svid_ttl' .*\(30s\)$"):
        load_config(None, env={}, overrides=short)
    config = load_config(None, env={}, overrides={**short, "ca.jwt_svid_ttl": 30})
    assert config.ca.jwt_svid_ttl == 30


def test_svid_ttl_left_at_default_is_named_when_ca_ttl_is_short() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"ca.ca_ttl": "1h"})
    assert str(info.value) == (
        "config key 'ca.x509_svid_ttl': must not exceed ca.ca_ttl / 2 (30m); "
        "its default 1h does not fit, so set it too"
    )


def test_short_ca_ttl_for_tests_is_allowed() -> None:
    config = load_config(
        None,
        env={},
        overrides={"ca.ca_ttl": "60s", "ca.x509_svid_ttl": "30s", "ca.jwt_svid_ttl": "10s"},
    )
    assert config.ca.ca_ttl == 60


def test_upstream_cert_and_key_go_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"ca.upstream_cert": "up.pem"})
    assert info.value.key == "ca.upstream_key"
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"ca.upstream_key": "up.key"})
    assert info.value.key == "ca.upstream_cert"
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"ca.upstream_bundle": "roots.pem"})
    assert info.value.key == "ca.upstream_bundle"


def test_admin_socket_path_must_fit_in_sun_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"data_dir": "/" + "d" * 100})
    assert info.value.key == "admin.socket_path"
    assert info.value.source == "overrides"


# -- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("1h", 3600),
        ("2h30m", 9000),
        ("7d", 604800),
        ("1d2h3m4s", 93784),
        ("120", 120),
        (" 5m ", 300),
        (45, 45),
    ],
)
def test_parse_duration(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5x", "1.5h", "5m1h", "1h 30m", "-5s", True, 1.5])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**9))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_duration() -> None:
    assert format_duration(43200) == "12h"
    assert format_duration(5400) == "1h30m"
    assert format_duration(90) == "1m30s"

"""Store URLs read without opening anything: which backend, shared or not, and shown safely."""

from __future__ import annotations

import pytest

from ca.store import is_shared, redact_url
from ca.store.urls import STORE_URL_SCHEMES, url_scheme


@pytest.mark.parametrize(
    ("url", "scheme", "shared"),
    [
        ("sqlite:///var/lib/authd/authd.db", "sqlite", False),
        ("sqlite://authd.db", "sqlite", False),
        ("authd.db", "sqlite", False),
        ("/abs/authd.db", "sqlite", False),
        ("redis://127.0.0.1:6379/0", "redis", True),
        ("rediss://:pw@redis.example:6380", "rediss", True),
        ("unix:///run/redis.sock?db=1", "unix", True),
        ("redis+sentinel://s1,s2/authd", "redis+sentinel", True),
        ("rediss+sentinel://s1/authd", "rediss+sentinel", True),
        ("redis+cluster://n1:7000,n2:7000", "redis+cluster", True),
        ("rediss+cluster://n1:7000", "rediss+cluster", True),
        ("postgres://db/authd", "postgres", False),
    ],
)
def test_a_url_names_its_backend_and_only_redis_is_shared(
    url: str, scheme: str, shared: bool
) -> None:
    assert url_scheme(url) == scheme
    assert is_shared(url) is shared
    assert (scheme in STORE_URL_SCHEMES) is (scheme != "postgres")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://app:pw@127.0.0.1:6379/0", "redis://app:***@127.0.0.1:6379/0"),
        ("rediss://:p%40ss@redis.example:6380", "rediss://:***@redis.example:6380"),
        ("redis://lonely-secret@host/0", "redis://***@host/0"),
        ("unix:///run/redis.sock?db=1&password=pw", "unix:///run/redis.sock?db=1&password=***"),
        (
            "redis+sentinel://:pw@s1:26379,s2:26379/authd/0?socket_timeout=1",
            "redis+sentinel://:***@s1:26379,s2:26379/authd/0?socket_timeout=1",
        ),
        ("redis+cluster://u:pw@[::1]:7000,h2", "redis+cluster://u:***@[::1]:7000,h2"),
        ("sqlite:///var/lib/authd/authd.db", "sqlite:///var/lib/authd/authd.db"),
        ("authd.db", "authd.db"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown

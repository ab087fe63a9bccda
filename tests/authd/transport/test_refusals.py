"""Refusals are counted by reason, handed to the hook, and logged at most once a second."""

from __future__ import annotations

import logging

import pytest

from authd.transport.refusals import RefusalCounter


def test_each_refusal_is_counted_and_hooked_but_logged_once_a_second_per_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    hooked: list[tuple[str, str]] = []
    refusals = RefusalCounter(
        "ext_authz_grpc", lambda *labels: hooked.append(labels), lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="authd.transport.refusals"):
        for _ in range(5):
            refusals("rapid_reset")
        refusals("max_connections")
        now[0] += 1.0
        refusals("rapid_reset")
    assert refusals.counts == {"rapid_reset": 6, "max_connections": 1}
    assert hooked.count(("ext_authz_grpc", "rapid_reset")) == 6
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [
        "ext_authz_grpc refused a client: rapid_reset (1 so far)",
        "ext_authz_grpc refused a client: max_connections (1 so far)",
        "ext_authz_grpc refused a client: rapid_reset (6 so far)",
    ]

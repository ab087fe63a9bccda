"""Refusals are counted by reason, handed to the callback, and logged at most once a second."""

from __future__ import annotations

import logging

import pytest

from authd.transport.refusals import RefusalReporter


def test_each_refusal_is_counted_and_handed_on_but_logged_once_a_second_per_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    handed: list[str] = []
    refusals = RefusalReporter("ext_authz_grpc", handed.append, monotonic=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="authd.transport.refusals"):
        for _ in range(5):
            refusals("rapid_reset")
        refusals("max_connections")
        now[0] += 1.0
        refusals("rapid_reset")
    assert refusals.counts == {"rapid_reset": 6, "max_connections": 1}
    assert handed.count("rapid_reset") == 6
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [
        "ext_authz_grpc: 1 refused (rapid_reset) since the last report",
        "ext_authz_grpc: 1 refused (max_connections) since the last report",
        "ext_authz_grpc: 5 refused (rapid_reset) since the last report",
    ]

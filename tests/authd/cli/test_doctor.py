"""`authd doctor`'s reading of the authorities at a given time (no daemon, no waiting)."""

from __future__ import annotations

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.doctor import FAIL, OK, WARN, authority_findings

DAY = 86400


def authority(kind: str, state: str, not_before: int, not_after: int) -> admin_pb2.Authority:
    return admin_pb2.Authority(
        authority_id=f"{kind}-{state}-{not_before}",
        kind=kind,
        state=state,
        not_before=not_before,
        not_after=not_after,
    )


def statuses(listed: list[admin_pb2.Authority], now: float) -> dict[str, str]:
    return {f.check: f.status for f in authority_findings(listed, now)}


def test_authorities_with_life_left_and_a_clock_in_step_are_ok() -> None:
    listed = [authority("x509", "active", 0, DAY), authority("jwt", "active", 0, DAY)]
    assert statuses(listed, DAY / 2) == {
        "x509 authority": OK,
        "jwt authority": OK,
        "clock": OK,
    }


def test_little_life_left_without_a_prepared_successor_is_a_warning() -> None:
    listed = [authority("x509", "active", 0, DAY), authority("jwt", "active", 0, DAY)]
    listed.append(authority("jwt", "prepared", DAY // 2, DAY + DAY // 2))
    found = statuses(listed, DAY * 0.9)
    assert (found["x509 authority"], found["jwt authority"]) == (WARN, OK)


def test_an_expired_or_missing_active_authority_fails() -> None:
    found = statuses([authority("x509", "active", 0, DAY)], DAY + 1)
    assert (found["x509 authority"], found["jwt authority"]) == (FAIL, FAIL)


def test_an_authority_starting_in_this_clocks_future_means_clock_skew() -> None:
    listed = [authority("x509", "active", 1000, DAY), authority("jwt", "active", 0, DAY)]
    assert statuses(listed, 100)["clock"] == FAIL

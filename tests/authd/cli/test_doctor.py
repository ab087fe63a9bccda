"""`authd doctor`'s reading of the authorities at a given time (no daemon, no waiting)."""

from __future__ import annotations

from pathlib import Path

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.doctor import FAIL, OK, UNKNOWN, WARN, authority_findings, sds_finding

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


# --- Envoys on SDS ---------------------------------------------------------------------------

SOCKET = Path("/run/authd/workload.sock")


def stream(
    node: str, sent: str, acked: str, nack: str = "", nacked: str = ""
) -> admin_pb2.SdsStream:
    return admin_pb2.SdsStream(
        node_id=node,
        pid=7,
        responses=1,
        sent_version=sent,
        acked_version=acked,
        last_nack=nack,
        nacked_version=nacked,
    )


def sds(*streams: admin_pb2.SdsStream, serving: bool = True) -> tuple[str, str, str]:
    found = sds_finding(admin_pb2.ListSdsStreamsResponse(streams=streams, serving=serving), SOCKET)
    return found.status, found.detail, found.fix


def test_envoys_in_step_on_sds_are_counted_by_node() -> None:
    status, detail, _ = sds(
        stream("web", "v2", "v2"), stream("web", "v1", "v1"), stream("db", "v1", "v1")
    )
    assert status == OK
    assert detail.startswith("2 Envoys (db, web) on 3 streams")


def test_no_envoy_on_sds_is_a_warning_naming_the_socket() -> None:
    status, _, fix = sds()
    assert status == WARN and str(SOCKET) in fix


def test_an_envoy_that_refused_what_it_was_last_sent_fails_with_its_reason() -> None:
    refused = stream("web", "v2", "v1", nack="Failed to load certificate chain", nacked="v2")
    over_it = stream("db", "v3", "v3", nack="old trouble", nacked="v2")
    status, detail, _ = sds(refused, over_it)
    assert status == FAIL
    assert "1 of 2 streams" in detail and "web: Failed to load certificate chain" in detail


def test_a_daemon_without_a_workload_socket_has_nothing_to_report() -> None:
    assert sds(serving=False)[0] == UNKNOWN

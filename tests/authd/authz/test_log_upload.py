"""Uploading decision events to a log service as OPA does, against an in-test collector."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from authd.authz.log_upload import ChunkBuffer, ChunkEncoder, LogCounters, backoff_delay
from authd.authz.opa_log_sink import OpaDecisionLog, build_opa_decision_log, open_log_file
from authd.authz.pipeline import Authorizer, AuthzSettings
from authd.check.model import CheckContext, Identities
from authd.config.decision_logs import DecisionLogSettings
from authd.config.loader import load_config
from tests.support.authz import PathPolicy
from tests.support.log_collector import LogCollector


class _Nobody:
    async def resolve(self, ctx: CheckContext) -> Identities:
        return Identities()


@pytest.fixture
def collector() -> Iterator[LogCollector]:
    server = LogCollector()
    yield server
    server.close()


def start_sink(collector: LogCollector, tmp_path: Path, **overrides: object) -> OpaDecisionLog:
    values: dict[str, object] = {"min_delay_seconds": 0.05, "max_delay_seconds": 0.2}
    settings = DecisionLogSettings(
        file=str(tmp_path / "decisions.log"),
        service_url=collector.url,
        service_headers=(("authorization", "Bearer log-token"),),
        **(values | overrides),  # type: ignore[arg-type]
    )
    sink = OpaDecisionLog(settings, file=open_log_file(tmp_path / "decisions.log"))
    sink.start()
    return sink


async def _checks(sink: OpaDecisionLog, count: int) -> list[str]:
    authorizer = Authorizer(
        resolver=_Nobody(),
        policy=PathPolicy,
        settings=AuthzSettings(compat="opa-envoy"),
        decision_log=sink,
    )
    ids = []
    for i in range(count):
        ctx = CheckContext(method="GET", host="h", path=f"/public/{i}", headers={"x-n": str(i)})
        ids.append((await authorizer.check(ctx)).decision_id)
    return ids


def run_checks(sink: OpaDecisionLog, count: int) -> list[str]:
    return asyncio.run(_checks(sink, count))


def test_events_arrive_as_gzip_json_arrays_posted_to_logs(
    collector: LogCollector, tmp_path: Path
) -> None:
    sink = start_sink(collector, tmp_path)
    ids = run_checks(sink, 3)
    events = collector.wait_for_events(3)
    sink.close()
    assert [e["decision_id"] for e in events] == ids
    path, headers, body = collector.requests[0]
    assert path == "/logs"
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["content-type"] == "application/json"
    assert lowered["content-encoding"] == "gzip"
    assert lowered["authorization"] == "Bearer log-token"
    assert isinstance(json.loads(gzip.decompress(body)), list)
    assert sink.counters.snapshot()["uploaded"] == 3


def test_no_upload_is_larger_than_the_limit_and_nothing_is_lost(
    collector: LogCollector, tmp_path: Path
) -> None:
    sink = start_sink(collector, tmp_path, upload_size_limit_bytes=2048)
    ids = run_checks(sink, 60)
    events = collector.wait_for_events(60)
    sink.close()
    assert sorted(e["decision_id"] for e in events) == sorted(ids)
    assert len(collector.requests) > 1
    assert all(len(body) <= 2048 for _, _, body in collector.requests)


def test_a_500_is_retried_until_the_service_takes_the_batch(
    collector: LogCollector, tmp_path: Path
) -> None:
    collector.fail(2)
    sink = start_sink(collector, tmp_path)
    ids = run_checks(sink, 2)
    events = collector.wait_for_events(2)
    sink.close()
    assert [e["decision_id"] for e in events] == ids
    # The first batch was refused twice and sent again as it was (the writer may have cut the
    # two events into two batches on a slow machine: then the second follows).
    assert collector.requests[0][2] == collector.requests[1][2] == collector.requests[2][2]
    counts = sink.counters.snapshot()
    assert (counts["upload_failures"], counts["uploaded"]) == (2, 2)


def test_a_stalled_collector_never_stalls_checks_or_the_file(
    collector: LogCollector, tmp_path: Path
) -> None:
    collector.hold()
    sink = start_sink(collector, tmp_path, upload_size_limit_bytes=1024)
    run_checks(sink, 5)
    collector.wait_for_requests(1)  # the uploader is now stuck in a POST
    ids = run_checks(sink, 200)  # every check still decides...
    assert sink.wait_written()  # ...and every event reaches the file meanwhile
    lines = (tmp_path / "decisions.log").read_text().splitlines()
    assert len(lines) == 205
    assert len(collector.requests) == 1
    collector.release.set()
    events = collector.wait_for_events(205)
    sink.close()
    assert {e["decision_id"] for e in events} >= set(ids)


def test_the_buffer_drops_its_oldest_chunks_and_counts_their_events() -> None:
    counters = LogCounters()
    buffer = ChunkBuffer(250, counters)
    for n in range(4):
        buffer.push((bytes([n]) * 100, 3))
    assert counters.snapshot()["dropped_buffer_size_limit_bytes_exceeded"] == 6
    kept = [buffer.pop(), buffer.pop(), buffer.pop()]
    assert [c[0][:1] for c in kept if c] == [b"\x02", b"\x03"]
    assert buffer.size == 0


def test_an_event_bigger_than_the_upload_limit_is_dropped_and_counted() -> None:
    counters = LogCounters()
    encoder = ChunkEncoder(1024, counters)
    incompressible = os.urandom(2000).hex().encode()
    assert encoder.write(b'{"a":"' + incompressible + b'"}') == []
    assert counters.snapshot()["encoding_failure"] == 1
    assert encoder.flush_chunk() == (b"", 0)


def test_retry_backoff_doubles_from_100ms_up_to_max_delay() -> None:
    middle = [backoff_delay(n, 10.0, rand=lambda: 0.5) for n in range(8)]
    assert middle == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0])
    assert backoff_delay(100, 10.0, rand=lambda: 0.999) <= 12.0


def test_what_is_buffered_is_uploaded_at_shutdown_as_opa_flushes(
    collector: LogCollector, tmp_path: Path
) -> None:
    sink = start_sink(collector, tmp_path, min_delay_seconds=300, max_delay_seconds=600)
    ids = run_checks(sink, 4)
    assert sink.wait_written()
    assert collector.requests == []  # the next round is minutes away
    sink.close()
    assert [e["decision_id"] for e in collector.wait_for_events(4)] == ids


def test_max_decisions_per_second_drops_and_counts_the_rest(tmp_path: Path) -> None:
    now = [0.0]
    settings = DecisionLogSettings(file=str(tmp_path / "d.log"), max_decisions_per_second=2)
    sink = OpaDecisionLog(
        settings, file=open_log_file(tmp_path / "d.log"), monotonic=lambda: now[0]
    )
    sink.start()
    run_checks(sink, 5)  # a burst of 5 at one instant: 2 pass
    assert sink.wait_written()
    now[0] = 1.0  # a second later, 2 more may
    run_checks(sink, 3)
    sink.close()
    counts = sink.counters.snapshot()
    assert (counts["logged"], counts["dropped_rate_limit"]) == (4, 4)
    assert len((tmp_path / "d.log").read_text().splitlines()) == 4


def test_the_config_builds_the_log_with_the_services_bearer_token(
    collector: LogCollector, tmp_path: Path
) -> None:
    (tmp_path / "log.token").write_text("s3cret\n")
    path = tmp_path / "authd.toml"
    path.write_text(
        f'data_dir = "{tmp_path}"\n'
        "[decision_logs]\n"
        'file = "opa.log"\n'
        f'service_url = "{collector.url}/"\n'
        'resource = "/v1/decisions"\n'
        'service_token_path = "log.token"\n'
    )
    sink = build_opa_decision_log(load_config(path, env={}))
    assert sink is not None
    sink.start()
    run_checks(sink, 1)
    sink.close()
    collector.wait_for_events(1)
    where, headers, _ = collector.requests[0]
    assert where == "/v1/decisions"
    assert {k.lower(): v for k, v in headers.items()}["authorization"] == "Bearer s3cret"
    assert stat.S_IMODE((tmp_path / "opa.log").stat().st_mode) == 0o600
    assert "s3cret" not in (tmp_path / "opa.log").read_text()

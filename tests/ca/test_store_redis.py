"""The Redis backend's own promises, beyond the store contract it shares with SQLite.

Several replicas on one Redis (standalone and Cluster), the change feed, failures of the
server, URLs and their secrets, and the key layout. Every server here is a private
``redis-server`` the tests start; each test keeps its data apart with a fresh key prefix.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from redis.client import Pipeline
from redis.crc import key_slot

from ca.store import (
    AUDIT_GENESIS_HASH,
    AlreadyExists,
    AuthorityRecord,
    Change,
    ChangeFeedGap,
    Conflict,
    IssuanceRecord,
    NotFound,
    RedisStore,
    RegistrationEntry,
    Revocation,
    SchemaError,
    Selector,
    StoreError,
    audit_record_hash,
    open_store,
)
from tests.support.redis_server import RedisServer, free_port

OpenReplica = Callable[[], RedisStore]

WEB = "spiffe://example.org/web"
NODE = "spiffe://example.org/node/1"
UID_1000 = Selector("unix", "uid:1000")


def entry(entry_id: str, **changes: object) -> RegistrationEntry:
    record = RegistrationEntry(
        entry_id=entry_id, spiffe_id=WEB, parent_id=NODE, selectors=(UID_1000,), created_at=1
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def revocation(target: str, **changes: object) -> Revocation:
    record = Revocation("serial", target, 1, "key compromised", 1_000, "admin")
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def authority(authority_id: str, **changes: object) -> AuthorityRecord:
    record = AuthorityRecord(
        authority_id=authority_id,
        kind="x509",
        state="active",
        key_type="ec-p256",
        key_ref=f"x509-{authority_id}",
        public_key_der=b"\x30\x59",
        certificate_der=b"\x30\x82",
        upstream_chain_der=(),
        not_before=1_000,
        not_after=2_000,
        created_at=900,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def fresh_prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


def tagged(prefix: str) -> str:
    """The key prefix as the store writes it: ``test-x:`` -> ``{test-x}:``."""
    return "{" + prefix.rstrip(":") + "}:"


def events(changes: Sequence[Change]) -> list[tuple[str, str, str]]:
    return [(c["kind"], c["op"], c["key"]) for c in changes]


@pytest.fixture(params=["standalone", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """The URL of the session's standalone server, or of its three-node Cluster."""
    deployment = "redis_server" if request.param == "standalone" else "redis_cluster"
    url: str = request.getfixturevalue(deployment).url
    return url


@pytest.fixture
def open_replica(redis_url: str) -> Iterator[OpenReplica]:
    """Opens "replicas": RedisStores on the same Redis and key prefix; closed afterwards."""
    prefix = fresh_prefix()
    opened: list[RedisStore] = []

    def open_one() -> RedisStore:
        opened.append(RedisStore(redis_url, key_prefix=prefix))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, which it may stop, freeze and restart (data in an AOF)."""
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        yield server


# -- several replicas --------------------------------------------------------------------


def test_two_replicas_see_each_others_writes(open_replica: OpenReplica) -> None:
    first, second = open_replica(), open_replica()

    created = first.create_entry(entry("e1"))
    first.add_revocation(revocation("0a"))
    second.save_authorities([authority("a1")])
    audited = second.append_audit(time=1, actor="a", action="x", subject="s", details={})

    assert second.get_entry("e1") == created
    assert second.list_revocations() == [revocation("0a")]
    assert first.list_authorities() == [authority("a1")]
    assert first.list_audit() == [audited]

    second.update_entry(dataclasses.replace(created, hint="moved"), expected_revision=0)
    second.remove_revocation("serial", "0a")

    assert first.get_entry("e1").hint == "moved"
    assert first.list_revocations() == []


def test_concurrent_audit_appends_from_two_replicas_form_one_chain(
    open_replica: OpenReplica,
) -> None:
    replicas = [open_replica(), open_replica()]
    threads, per_thread = 8, 40
    start = threading.Barrier(threads)

    def append(worker: int) -> None:
        store = replicas[worker % 2]
        start.wait()
        for n in range(per_thread):
            store.append_audit(
                time=n, actor=f"t{worker}", action="x", subject="s", details={"n": n}
            )

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(append, range(threads)))

    records = replicas[0].list_audit()
    assert [r.seq for r in records] == list(range(1, threads * per_thread + 1))
    assert [r.prev_hash for r in records] == [AUDIT_GENESIS_HASH] + [r.hash for r in records[:-1]]
    for r in records:
        assert r.hash == audit_record_hash(
            seq=r.seq,
            time=r.time,
            actor=r.actor,
            action=r.action,
            subject=r.subject,
            details=r.details,
            prev_hash=r.prev_hash,
        )
    appended = sorted((r.actor, r.details["n"]) for r in records)
    assert appended == sorted((f"t{w}", n) for w in range(threads) for n in range(per_thread))


def test_concurrent_updates_with_the_same_revision_let_exactly_one_win(
    open_replica: OpenReplica,
) -> None:
    replicas = [open_replica(), open_replica()]
    current = replicas[0].create_entry(entry("e1"))
    contenders = 8

    for revision in range(5):
        start = threading.Barrier(contenders)

        def update(
            n: int,
            revision: int = revision,
            start: threading.Barrier = start,
            current: RegistrationEntry = current,
        ) -> str:
            changed = dataclasses.replace(current, hint=f"round {revision} writer {n}")
            start.wait()
            try:
                replicas[n % 2].update_entry(changed, expected_revision=revision)
            except Conflict:
                return "conflict"
            return changed.hint

        with ThreadPoolExecutor(max_workers=contenders) as pool:
            outcomes = list(pool.map(update, range(contenders)))

        winners = [o for o in outcomes if o != "conflict"]
        assert len(winners) == 1, outcomes
        current = replicas[1].get_entry("e1")
        assert (current.revision, current.hint) == (revision + 1, winners[0])


def test_concurrent_creates_with_the_same_selectors_let_exactly_one_win(
    open_replica: OpenReplica,
) -> None:
    replicas = [open_replica(), open_replica()]
    contenders = 8
    start = threading.Barrier(contenders)

    def create(n: int) -> bool:
        start.wait()
        try:
            replicas[n % 2].create_entry(entry(f"e{n}"))
        except AlreadyExists:
            return False
        return True

    with ThreadPoolExecutor(max_workers=contenders) as pool:
        created = list(pool.map(create, range(contenders)))

    assert created.count(True) == 1
    assert [e.entry_id for e in replicas[0].list_entries()] == [f"e{created.index(True)}"]


# -- the change feed ---------------------------------------------------------------------


def test_change_feed_delivers_revocation_adds_and_removes_in_order(
    open_replica: OpenReplica,
) -> None:
    writer, reader = open_replica(), open_replica()
    feed = reader.change_feed()
    start = feed.latest_change_id()

    writer.add_revocation(revocation("01"))
    writer.add_revocation(revocation(WEB, target_kind="spiffe_id"))
    writer.remove_revocation("serial", "01")
    last, changes = feed.changes_since(start)

    assert events(changes) == [
        ("revocation", "add", "serial:01"),
        ("revocation", "add", f"spiffe_id:{WEB}"),
        ("revocation", "remove", "serial:01"),
    ]
    ids = [c["id"] for c in changes]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert last == ids[-1] == feed.latest_change_id()
    assert feed.changes_since(last) == (last, [])


def test_change_feed_records_entry_and_authority_changes(open_replica: OpenReplica) -> None:
    store = open_replica()
    feed = store.change_feed()
    start = feed.latest_change_id()

    created = store.create_entry(entry("e1"))
    store.update_entry(dataclasses.replace(created, hint="x"), expected_revision=0)
    store.delete_entry("e1")
    store.save_authorities([authority("a1")])
    store.save_authorities([authority("a1", state="retired"), authority("a2")])
    store.delete_authority("a1")
    _, changes = feed.changes_since(start)

    assert events(changes) == [
        ("entry", "add", "e1"),
        ("entry", "update", "e1"),
        ("entry", "remove", "e1"),
        ("authority", "add", "a1"),
        ("authority", "update", "a1"),
        ("authority", "add", "a2"),
        ("authority", "remove", "a1"),
    ]


def test_refused_writes_add_no_change(open_replica: OpenReplica) -> None:
    store = open_replica()
    feed = store.change_feed()
    created = store.create_entry(entry("e1"))
    store.add_revocation(revocation("01"))
    store.save_authorities([authority("a1")])
    start = feed.latest_change_id()

    with pytest.raises(AlreadyExists):
        store.add_revocation(revocation("01"))
    with pytest.raises(NotFound):
        store.remove_revocation("serial", "02")
    with pytest.raises(AlreadyExists):
        store.create_entry(entry("e2"))  # the same selectors as e1
    with pytest.raises(Conflict):
        store.update_entry(created, expected_revision=3)
    with pytest.raises(NotFound):
        store.delete_entry("e2")
    with pytest.raises(StoreError):
        store.save_authorities([authority("a2"), authority("a3", not_after="never")])
    with pytest.raises(NotFound):
        store.delete_authority("a9")

    assert feed.changes_since(start) == (start, [])
    assert feed.latest_change_id() == start


def test_changes_since_waits_for_the_next_change(open_replica: OpenReplica) -> None:
    writer, reader = open_replica(), open_replica()
    feed = reader.change_feed()
    start = feed.latest_change_id()
    timer = threading.Timer(0.3, writer.add_revocation, args=(revocation("01"),))

    began = time.monotonic()
    timer.start()
    try:
        last, changes = feed.changes_since(start, block_ms=10_000)
    finally:
        timer.join(timeout=5)
    waited = time.monotonic() - began

    assert events(changes) == [("revocation", "add", "serial:01")]
    assert last == changes[0]["id"]
    assert 0.25 <= waited < 5


def test_changes_since_returns_nothing_when_block_ms_passes(open_replica: OpenReplica) -> None:
    store = open_replica()
    feed = store.change_feed()
    store.add_revocation(revocation("01"))
    last = feed.latest_change_id()

    began = time.monotonic()
    assert feed.changes_since(last, block_ms=400) == (last, [])
    assert 0.35 <= time.monotonic() - began < 3


def test_a_wait_longer_than_the_socket_timeout_is_not_an_error(redis_url: str) -> None:
    with RedisStore(f"{redis_url}?socket_timeout=0.3", key_prefix=fresh_prefix()) as store:
        feed = store.change_feed()
        last = feed.latest_change_id()
        began = time.monotonic()

        assert feed.changes_since(last, block_ms=1_000) == (last, [])
        assert 0.95 <= time.monotonic() - began < 4


def test_changes_since_without_a_wait_returns_at_once_and_checks_its_arguments(
    open_replica: OpenReplica,
) -> None:
    store = open_replica()
    feed = store.change_feed()

    assert feed.latest_change_id() == "0-0"
    assert feed.changes_since("0-0") == ("0-0", [])
    assert feed.changes_since("0") == ("0", [])
    with pytest.raises(ValueError, match="not a stream entry id"):
        feed.changes_since("latest")
    with pytest.raises(ValueError, match="block_ms"):
        feed.changes_since("0-0", block_ms=0)


def test_changes_since_reports_changes_trimmed_away(redis_server: RedisServer) -> None:
    prefix = fresh_prefix()
    with RedisStore(redis_server.url, key_prefix=prefix) as store:
        feed = store.change_feed()
        ids = []
        for n in range(5):
            store.add_revocation(revocation(f"0{n}"))
            ids.append(feed.latest_change_id())
        # What CHANGES_MAXLEN does to a feed that outgrew it, on a scale a test can afford.
        redis_server.client().xtrim(tagged(prefix) + "changes", maxlen=2, approximate=False)

        with pytest.raises(ChangeFeedGap, match="no longer in the feed: rebuild the view"):
            feed.changes_since(ids[0])
        with pytest.raises(ChangeFeedGap):
            feed.changes_since("0-0")
        last, changes = feed.changes_since(ids[3])
        assert events(changes) == [("revocation", "add", "serial:04")]
        assert feed.changes_since(last) == (last, [])


def test_changes_since_reports_a_reset_feed(redis_server: RedisServer) -> None:
    prefix = fresh_prefix()
    with RedisStore(redis_server.url, key_prefix=prefix) as store:
        feed = store.change_feed()
        store.add_revocation(revocation("01"))
        seen = feed.latest_change_id()
        redis_server.client().delete(tagged(prefix) + "changes")

        with pytest.raises(ChangeFeedGap, match="gone"):
            feed.changes_since(seen)

        store.add_revocation(revocation("02"))  # a new feed, whose ids all follow `seen`
        with pytest.raises(ChangeFeedGap, match="no longer in the feed"):
            feed.changes_since(seen)
        with pytest.raises(ChangeFeedGap, match="newer than the feed's newest"):
            feed.changes_since("99999999999999-0")
        assert events(feed.changes_since("0-0")[1]) == [("revocation", "add", "serial:02")]


# -- a server that stops, freezes or refuses ---------------------------------------------


def test_a_stopped_server_fails_calls_and_a_restarted_one_serves_the_same_data(
    private_server: RedisServer,
) -> None:
    store = RedisStore(private_server.url)
    feed = store.change_feed()
    created = store.create_entry(entry("e1"))
    store.add_revocation(revocation("01"))
    feed_position = feed.latest_change_id()

    private_server.stop()
    began = time.monotonic()
    with pytest.raises(StoreError, match=r"cannot reach redis store redis://127\.0\.0\.1"):
        store.get_entry("e1")
    with pytest.raises(StoreError, match="cannot reach redis store"):
        store.add_revocation(revocation("02"))
    with pytest.raises(StoreError, match="cannot reach redis store"):
        RedisStore(private_server.url)
    assert time.monotonic() - began < 3

    private_server.start()  # the same port; the append-only file brings the data back
    assert store.get_entry("e1") == created
    assert store.list_revocations() == [revocation("01")]
    assert feed.latest_change_id() == feed_position
    store.add_revocation(revocation("02"))
    assert [r.target for r in RedisStore(private_server.url).list_revocations()] == ["01", "02"]
    store.close()


def test_a_frozen_server_times_out_instead_of_hanging(private_server: RedisServer) -> None:
    quick = RedisStore(f"{private_server.url}?socket_timeout=0.5&socket_connect_timeout=0.5")
    default = RedisStore(private_server.url)
    quick.create_entry(entry("e1"))

    private_server.freeze()
    try:
        began = time.monotonic()
        with pytest.raises(StoreError, match=r"cannot reach redis store.*Timeout"):
            quick.get_entry("e1")
        with pytest.raises(StoreError, match="cannot reach redis store"):
            quick.update_entry(entry("e1", hint="x"), expected_revision=0)
        assert time.monotonic() - began < 4

        began = time.monotonic()
        with pytest.raises(StoreError, match=r"cannot reach redis store.*Timeout"):
            default.get_entry("e1")  # the default socket timeout is 5 s
        assert 4 < time.monotonic() - began < 10
    finally:
        private_server.thaw()

    assert quick.get_entry("e1").revision == 0  # the timed-out update never ran
    assert default.update_entry(entry("e1", hint="x"), expected_revision=0).revision == 1
    quick.close()
    default.close()


def test_a_connection_lost_at_exec_says_the_write_may_have_applied(
    private_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two connections only: a failure that kept its connection checked out would use them up.
    store = RedisStore(f"{private_server.url}?socket_timeout=0.2&max_connections=2")
    execute = Pipeline.execute

    def freeze_then_execute(pipe: Pipeline, raise_on_error: bool = True) -> list[object]:
        private_server.freeze()  # MULTI ... EXEC is sent, and no reply ever comes back
        return execute(pipe, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", freeze_then_execute)
    for target in ("01", "02", "03"):
        with pytest.raises(StoreError, match="connection dropped after the write was sent"):
            store.add_revocation(revocation(target))
        private_server.thaw()
    monkeypatch.undo()

    # The server ran each transaction once it woke, so a caller must look before repeating.
    assert [r.target for r in store.list_revocations()] == ["01", "02", "03"]
    store.add_revocation(revocation("04"))
    store.close()


# -- URLs and secrets --------------------------------------------------------------------

SECRET = "s3cret/pw"
SECRET_IN_URL = "s3cret%2Fpw"


def _assert_secret_hidden(error: BaseException) -> None:
    shown = "".join(traceback.format_exception(error))
    assert SECRET not in shown
    assert SECRET_IN_URL not in shown


def test_the_url_password_never_appears_in_errors(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", password=SECRET) as server:
        base = f"127.0.0.1:{server.port}"
        url = f"redis://:{SECRET_IN_URL}@{base}/0"
        store = RedisStore(url)
        store.next_sequence("n")  # the password is right, and used
        assert RedisStore(f"redis://{base}/0?password={SECRET_IN_URL}").current_sequence("n") == 1

        with pytest.raises(StoreError, match=r"redis://:\*\*\*@127") as wrong:
            RedisStore(f"redis://:wrong-{SECRET_IN_URL}@{base}/0")
        _assert_secret_hidden(wrong.value)
        with pytest.raises(StoreError, match="invalid redis store URL") as invalid:
            RedisStore(f"{url}?socket_timeout=soon")
        _assert_secret_hidden(invalid.value)
        with pytest.raises(StoreError, match="invalid redis store URL") as unknown:
            RedisStore(f"{url}?no_such_option=1")
        _assert_secret_hidden(unknown.value)
        with pytest.raises(StoreError, match="unknown store backend") as backend:
            open_store(f"redis+nope://:{SECRET_IN_URL}@{base}/0", data_dir=tmp_path)
        _assert_secret_hidden(backend.value)

        server.stop()
        for failing in (url, f"redis://{base}/0?password={SECRET_IN_URL}"):
            with pytest.raises(StoreError, match="cannot reach") as unreachable:
                RedisStore(failing)
            _assert_secret_hidden(unreachable.value)
        with pytest.raises(StoreError, match="cannot reach") as stopped:
            store.next_sequence("n")
        _assert_secret_hidden(stopped.value)
        store.close()
        with pytest.raises(StoreError, match="closed") as closed:
            store.next_sequence("n")
        _assert_secret_hidden(closed.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://127.0.0.1:26379", "path is /service_name"),
        ("redis+sentinel://127.0.0.1:26379/a/b/c", "path is /service_name"),
        ("redis+cluster://127.0.0.1:7000/2", "only db 0"),
        ("redis+cluster://127.0.0.1:7000?db=3", "only db 0"),
        ("redis+cluster://127.0.0.1:port", "not host"),
        ("redis://127.0.0.1:1/0?socket_connect_timeout=later", "socket_connect_timeout"),
        ("memcached://127.0.0.1:11211", "scheme must be one of"),
    ],
)
def test_malformed_urls_are_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(StoreError, match=f"invalid redis store URL .*{problem}"):
        RedisStore(url)


@pytest.mark.parametrize(
    "form",
    [
        "redis://127.0.0.1:{port}/0",
        "redis+sentinel://127.0.0.1:{port}/authd",
        "redis+cluster://127.0.0.1:{port}",
        "unix:///nonexistent/redis-{port}.sock",
    ],
)
def test_no_server_at_the_url_is_reported_at_once_for_every_form(form: str) -> None:
    url = form.format(port=free_port())
    began = time.monotonic()

    with pytest.raises(StoreError, match=f"^cannot reach redis store {re.escape(url)}: .+"):
        RedisStore(url)
    assert time.monotonic() - began < 3


def test_open_store_opens_a_redis_store_for_redis_urls(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with open_store(redis_server.url, data_dir=tmp_path) as store:
        assert isinstance(store, RedisStore)
        assert store.schema_version() == 1
    assert not list(tmp_path.iterdir())  # and no SQLite file


def test_a_unix_socket_url_reaches_the_server(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    extra = ["--unixsocket", str(socket_path), "--unixsocketperm", "700"]
    with RedisServer(tmp_path / "redis", extra_args=extra) as server:
        with open_store(f"unix://{socket_path}?db=2", data_dir=tmp_path) as store:
            store.create_entry(entry("e1"))
        with RedisStore(f"redis://127.0.0.1:{server.port}/2", key_prefix="authd:") as tcp:
            assert tcp.get_entry("e1") == entry("e1")


def test_a_sentinel_url_reaches_the_master_it_names(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    assert redis_server.port is not None
    service = "authd-master"
    with RedisServer(tmp_path / "sentinel", sentinel_of=(service, redis_server.port)) as sentinel:
        prefix = fresh_prefix()
        sentinels = f"127.0.0.1:{free_port()},127.0.0.1:{sentinel.port}"  # the first is down
        with (
            RedisStore(f"redis+sentinel://{sentinels}/{service}/0", key_prefix=prefix) as found,
            RedisStore(redis_server.url, key_prefix=prefix) as direct,
        ):
            found.create_entry(entry("e1"))
            direct.add_revocation(revocation("01"))

            assert direct.get_entry("e1") == entry("e1")
            assert found.list_revocations() == [revocation("01")]
        with pytest.raises(StoreError, match=r"cannot reach redis store.*No master found"):
            RedisStore(f"redis+sentinel://127.0.0.1:{sentinel.port}/no-such-service")


# -- keys, schema, validation ------------------------------------------------------------


def test_every_key_of_a_store_shares_its_prefix_and_one_cluster_slot(
    redis_server: RedisServer,
) -> None:
    prefix = fresh_prefix()
    with RedisStore(redis_server.url, key_prefix=prefix) as store:
        store.save_authorities([authority("a1")])
        store.next_sequence("serial")
        store.record_issuance(IssuanceRecord("0a", "x509", WEB, "a1", 1, 2, "r", 1))
        store.create_entry(entry("e1", selectors=(UID_1000, Selector("k8s", "ns:x"))))
        store.add_revocation(revocation("01"))
        store.append_audit(time=1, actor="a", action="x", subject="s", details={})

    keys = set(redis_server.client().scan_iter(match=tagged(prefix).replace("{", "\\{") + "*"))
    assert {key.removeprefix(tagged(prefix)) for key in keys} >= {
        "schema",
        "authorities",
        "seq:serial",
        "issuance:0a",
        "issuances",
        "entry:e1",
        "entries",
        f"entries:by-spiffe-id:{WEB}",
        'entries:by-selector:["k8s","ns:x"]',
        "revocations",
        "audit",
        "audit:by-subject:s",
        "changes",
    }
    assert len({key_slot(key.encode()) for key in keys}) == 1


def test_key_prefixes_keep_stores_apart(redis_server: RedisServer) -> None:
    with (
        RedisStore(redis_server.url, key_prefix=fresh_prefix()) as one,
        RedisStore(redis_server.url, key_prefix=fresh_prefix()) as other,
    ):
        one.create_entry(entry("e1"))
        other.create_entry(entry("e1", hint="other"))  # no duplicate: another store

        assert one.get_entry("e1").hint == ""
        assert other.list_entries() == [entry("e1", hint="other")]


def test_a_prefix_with_its_own_hash_tag_is_used_as_given(redis_server: RedisServer) -> None:
    prefix = f"{{tenant-{uuid.uuid4().hex}}}:authd:"
    with RedisStore(redis_server.url, key_prefix=prefix) as store:
        store.next_sequence("serial")

    assert redis_server.client().get(prefix + "seq:serial") == "1"


@pytest.mark.parametrize("prefix", ["", ":", "}authd:"])
def test_a_prefix_that_cannot_be_a_hash_tag_is_refused(
    redis_server: RedisServer, prefix: str
) -> None:
    with pytest.raises(ValueError, match="cannot be made into a Cluster hash tag"):
        RedisStore(redis_server.url, key_prefix=prefix)


@pytest.mark.parametrize("shape", ["{{}}authd-{id}:", "{{}}{{{id}}}:", "a{{{id}:", "{id}}}y:"])
def test_odd_braces_in_a_prefix_still_keep_every_key_in_one_slot(
    redis_server: RedisServer, shape: str
) -> None:
    unique = uuid.uuid4().hex
    with RedisStore(redis_server.url, key_prefix=shape.format(id=unique)) as store:
        store.create_entry(entry("}e{1}", selectors=(Selector("}", "{"),)))
        store.add_revocation(revocation("}{"))

    keys = [key for key in redis_server.client().scan_iter(count=1000) if unique in key]
    assert len(keys) >= 8
    assert len({key_slot(key.encode()) for key in keys}) == 1


def test_a_newer_schema_is_refused_and_left_as_it_is(redis_server: RedisServer) -> None:
    prefix = fresh_prefix()
    RedisStore(redis_server.url, key_prefix=prefix).close()
    raw = redis_server.client()
    assert raw.get(tagged(prefix) + "schema") == "1"

    raw.set(tagged(prefix) + "schema", "2")
    with pytest.raises(SchemaError, match="has schema version 2, but this authd only knows"):
        RedisStore(redis_server.url, key_prefix=prefix)
    assert raw.get(tagged(prefix) + "schema") == "2"

    raw.set(tagged(prefix) + "schema", "two")
    with pytest.raises(StoreError, match="unreadable schema version"):
        RedisStore(redis_server.url, key_prefix=prefix)


def test_fields_of_the_wrong_type_are_refused_before_anything_is_written(
    open_replica: OpenReplica,
) -> None:
    store = open_replica()
    feed = store.change_feed()
    start = feed.latest_change_id()

    with pytest.raises(StoreError, match="x509_svid_ttl must be a 64-bit integer, not '1h'"):
        store.create_entry(entry("e1", x509_svid_ttl="1h"))
    with pytest.raises(StoreError, match="selectors must be a tuple of Selectors"):
        store.create_entry(entry("e1", selectors=("unix:uid:0",)))
    with pytest.raises(StoreError, match="revoked_at must be a 64-bit integer"):
        store.add_revocation(revocation("01", revoked_at=2**63))
    with pytest.raises(StoreError, match="issued_at must be a 64-bit integer, not True"):
        store.record_issuance(IssuanceRecord("0a", "x509", WEB, "a1", 1, 2, "r", True))
    with pytest.raises(StoreError, match="tainted must be a bool"):
        store.save_authorities([authority("a1", tainted=1)])
    with pytest.raises(StoreError, match="spiffe_id must be a string"):
        store.create_entry(entry("e1", spiffe_id="spiffe://example.org/\ud800"))

    assert store.list_entries() == []
    assert store.list_revocations() == []
    assert store.list_issuances() == []
    assert store.list_authorities() == []
    assert feed.changes_since(start) == (start, [])


def test_a_batch_repeating_a_serial_records_nothing(open_replica: OpenReplica) -> None:
    store = open_replica()
    record = IssuanceRecord("0a", "x509", WEB, "a1", 1, 2, "r", 1)

    with pytest.raises(AlreadyExists, match="'0a'"):
        store.record_issuances([record, dataclasses.replace(record, issued_at=2)])

    assert store.list_issuances() == []

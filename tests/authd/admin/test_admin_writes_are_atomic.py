"""An admin change that was refused changed nothing; one that was acknowledged is audited.

Entry and revocation operations on a real CA over SQLite and Redis whose next write fails
before its commit, and over SQLite on a file system that fills up: the refusal is UNAVAILABLE
naming the store, the store holds neither the change nor an audit record of it, the in-memory
views did not move, and the retry succeeds as the first time it happens.
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authd.admin.callers import AdminCaller
from authd.admin.entries import EntryOperations
from authd.admin.errors import StoreUnavailable
from authd.admin.revocations import RevocationOperations
from authd.workload.registry import EntryRegistry
from ca.audit import verify_chain
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.keys import KeyStore
from ca.revoker import Revoker
from ca.spiffe_id import TrustDomain
from ca.store import RedisStore, RegistrationEntry, Selector, SQLiteStore, Store
from tests.support.redis_server import RedisServer
from tests.support.store_faults import fail_writes

ADMIN = AdminCaller("uid=0")
WEB = "spiffe://example.org/web"
NODE = "spiffe://example.org/node"


@dataclass
class Admin:
    """The admin operations of one daemon, over a real CA and store."""

    store: Store
    store_name: str  # how a refusal names the store
    ca: CertificateAuthority
    registry: EntryRegistry
    revoker: Revoker
    entries: EntryOperations
    revocations: RevocationOperations

    def state(self) -> tuple[object, ...]:
        return (
            self.store.list_entries(),
            self.store.list_revocations(),
            self.store.list_audit(),
            [self.registry.get(e.entry_id) for e in self.store.list_entries()],
        )


def _admin(store: Store, store_name: str, keys: Path) -> Admin:
    clock = FakeClock()
    ca = CertificateAuthority(
        trust_domain=TrustDomain("example.org"), store=store, keystore=KeyStore(keys), clock=clock
    )
    registry = EntryRegistry(store, clock)
    revoker = Revoker(ca, store, clock)
    return Admin(
        store,
        store_name,
        ca,
        registry,
        revoker,
        EntryOperations(ca, registry),
        RevocationOperations(revoker, store),
    )


@pytest.fixture(params=["sqlite", "redis"])
def admin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Admin]:
    if request.param == "sqlite":
        path = tmp_path / "store.db"
        store: Store = SQLiteStore(path)
        name = str(path)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisStore(server.url, key_prefix=f"atomic-{uuid.uuid4().hex}:")
        name = server.url
    made = _admin(store, name, tmp_path / "keys")
    # The CA's own first authorities are audited; the operations below start from there.
    yield made
    made.ca.close()
    store.close()


def _entry(entry_id: str = "", **changes: object) -> RegistrationEntry:
    fields: dict[str, object] = {
        "entry_id": entry_id or uuid.uuid4().hex,
        "spiffe_id": WEB,
        "parent_id": NODE,
        "selectors": (Selector("unix", "uid:1000"),),
        "x509_svid_ttl": 3600,
        "jwt_svid_ttl": 300,
    }
    return RegistrationEntry(**{**fields, **changes})  # type: ignore[arg-type]


def _audit_actions(admin: Admin, subject: str) -> list[str]:
    return [r.action for r in admin.store.list_audit(subject=subject)]


OPERATIONS: dict[str, Callable[[Admin, RegistrationEntry], object]] = {
    "create": lambda a, e: a.entries.create(ADMIN, _entry("e2", spiffe_id=f"{WEB}/2")),
    "update": lambda a, e: a.entries.update(ADMIN, _entry(e.entry_id, hint="new")),
    "delete": lambda a, e: a.entries.delete(ADMIN, e.entry_id),
    "revoke": lambda a, e: a.revocations.revoke(
        ADMIN, "spiffe_id", f"{WEB}/3", reason="keyCompromise", note=""
    ),
    "unrevoke": lambda a, e: a.revocations.unrevoke(ADMIN, "entry", e.entry_id),
}


@pytest.mark.parametrize("failing_write", [1, 2, 3])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_an_operation_refused_as_unavailable_changed_nothing_and_its_retry_succeeds(
    admin: Admin, operation: str, failing_write: int
) -> None:
    existing = admin.entries.create(ADMIN, _entry("e1"))
    admin.revocations.revoke(ADMIN, "entry", "e1", reason="certificateHold", note="")
    before = admin.state()
    audited = len(admin.store.list_audit())
    view_before = admin.revoker.view.contains("spiffe_id", f"{WEB}/3")
    fault = fail_writes(admin.store, at=failing_write)
    try:
        OPERATIONS[operation](admin, existing)
    except StoreUnavailable as refused:
        assert fault.failed == [failing_write]
        assert admin.store_name in str(refused)
        assert admin.state() == before
        assert admin.revoker.view.contains("spiffe_id", f"{WEB}/3") == view_before
        assert admin.revoker.view.contains("entry", "e1")
        OPERATIONS[operation](admin, existing)  # not "already revoked", not "exists"
    else:
        assert failing_write > 1  # the first write is always the operation's own
    records = admin.store.list_audit()
    assert verify_chain(records).intact
    assert len(records) == audited + 1


def test_each_acknowledged_entry_change_has_its_audit_record(admin: Admin) -> None:
    created = admin.entries.create(ADMIN, _entry("e1"))
    admin.entries.update(ADMIN, _entry("e1", hint="h", revision=created.revision))
    admin.entries.delete(ADMIN, "e1")
    assert _audit_actions(admin, "e1") == ["entry.create", "entry.update", "entry.delete"]
    revisions = [r.details["revision"] for r in admin.store.list_audit(subject="e1")]
    assert revisions == [0, 1, 1]


# -- a full file system under SQLite -----------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, mounted for the test and unmounted after it."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount_point)],
        check=True,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def _fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its file system has no room left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_refuses_a_revocation_cleanly_and_keeps_every_acknowledged_one(
    small_disk: Path, tmp_path: Path
) -> None:
    path = small_disk / "store.db"
    admin = _admin(SQLiteStore(path), str(path), tmp_path / "keys")
    try:
        filler = _fill(small_disk)
        acknowledged: list[str] = []
        refused: str | None = None
        for n in range(2000):
            target = f"{WEB}/{n}"
            try:
                admin.revocations.revoke(
                    ADMIN, "spiffe_id", target, reason="keyCompromise", note="x" * 500
                )
            except StoreUnavailable as exc:
                assert str(path) in str(exc)
                refused = target
                break
            acknowledged.append(target)
        assert refused is not None, "the disk never filled up"
        stored = {r.target for r in admin.store.list_revocations("spiffe_id")}
        assert stored == set(acknowledged)
        assert not admin.revoker.view.contains("spiffe_id", refused)
        records = admin.store.list_audit()
        assert verify_chain(records).intact
        revoked = [r.subject for r in records if r.action == "revoke"]
        assert revoked == [f"spiffe_id:{t}" for t in acknowledged]

        filler.unlink()
        admin.revocations.revoke(ADMIN, "spiffe_id", refused, reason="keyCompromise", note="")
        assert admin.revoker.view.contains("spiffe_id", refused)
        assert _audit_actions(admin, f"spiffe_id:{refused}") == ["revoke"]
        assert verify_chain(admin.store.list_audit()).intact
    finally:
        admin.ca.close()
        admin.store.close()

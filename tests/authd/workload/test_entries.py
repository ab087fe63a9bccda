"""Registration entries: what makes one valid (pure), and the admin API over the store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from authd.admin.servicer import AdminService
from authd.api.authd.admin.v1 import admin_pb2
from authd.transport.peercred import PeerCredentials
from authd.workload.entries import EntryError, EntryRules, parse_selector
from authd.workload.registry import EntryRegistry
from ca.certificate_authority import CASettings, CertificateAuthority
from ca.clock import FakeClock
from ca.keys import KeyStore
from ca.spiffe_id import TrustDomain
from ca.store import RegistrationEntry, Selector, SQLiteStore

EXAMPLE = TrustDomain("example.org")
NOW = 1_790_000_000.0
RULES = EntryRules(EXAMPLE, max_svid_ttl=12 * 3600)
UID_1000 = Selector("unix", "uid:1000")


def entry(**fields: Any) -> RegistrationEntry:
    values: dict[str, Any] = {
        "entry_id": "",
        "spiffe_id": "spiffe://example.org/web",
        "parent_id": "",
        "selectors": (UID_1000,),
    }
    values.update(fields)
    return RegistrationEntry(**values)


def refused(candidate: RegistrationEntry) -> EntryError:
    with pytest.raises(EntryError) as caught:
        RULES.check(candidate, now=NOW)
    return caught.value


# --- validation ------------------------------------------------------------------------------


def test_valid_entry_gets_a_generated_id_and_the_builtin_agent_as_parent() -> None:
    checked = RULES.check(entry(), now=NOW)
    assert len(checked.entry_id) == 32
    int(checked.entry_id, 16)
    assert checked.parent_id == "spiffe://example.org/authd"
    assert checked.selectors == (UID_1000,)
    assert RULES.check(entry(), now=NOW).entry_id != checked.entry_id


def test_given_entry_id_and_parent_are_kept() -> None:
    checked = RULES.check(entry(entry_id="web-1", parent_id="spiffe://example.org/node/a"), now=NOW)
    assert (checked.entry_id, checked.parent_id) == ("web-1", "spiffe://example.org/node/a")


def test_every_field_within_limits_is_accepted_as_given() -> None:
    full = entry(
        entry_id="full",
        parent_id="spiffe://example.org/authd",
        selectors=(UID_1000, Selector("unix", "path:/usr/bin/web")),
        x509_svid_ttl=12 * 3600,
        jwt_svid_ttl=300,
        dns_names=("web.local", "*.web.example.org"),
        federates_with=("other.org",),
        admin=True,
        downstream=True,
        hint="h" * 1024,
        expires_at=int(NOW) + 1,
    )
    assert RULES.check(full, now=NOW) == full


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("unix:uid:0", "uid:0"),
        ("unix:user:www-data", "user:www-data"),
        ("unix:gid:50", "gid:50"),
        ("unix:group:staff", "group:staff"),
        ("unix:supplementary_gid:27", "supplementary_gid:27"),
        ("unix:path:/usr/bin/web:v2", "path:/usr/bin/web:v2"),
        ("unix:sha256:" + "ab" * 32, "sha256:" + "ab" * 32),
    ],
)
def test_parse_selector_splits_at_the_type_and_accepts_each_unix_key(text: str, value: str) -> None:
    assert parse_selector(text) == Selector("unix", value)


@pytest.mark.parametrize(
    ("selector", "why"),
    [
        (Selector("k8s", "ns:default"), "unknown selector type 'k8s'; supported: unix"),
        (Selector("unix", "pid:1"), "unknown unix selector key 'pid'; supported: uid, user"),
        (Selector("unix", ""), "unix selector has no KEY:VALUE"),
        (Selector("uid1000", ""), "'uid1000' is not TYPE:KEY:VALUE"),
        (Selector("unix", "uid"), "unix:uid has no value"),
        (Selector("unix", "uid:web"), "unix:uid value 'web' must be a number"),
        (Selector("unix", "uid:-1"), "must be a number"),
        (Selector("unix", "uid:4294967296"), "out of range"),
        (Selector("unix", "gid:x"), "unix:gid value 'x' must be a number"),
        (Selector("unix", "supplementary_gid:"), "unix:supplementary_gid value '' must be"),
        (Selector("unix", "user:"), "unix:user value '' must be a name"),
        (Selector("unix", "group:a b"), "unix:group value 'a b' must be a name"),
        (Selector("unix", "path:usr/bin/web"), "must be an absolute path"),
        (Selector("unix", "sha256:" + "AB" * 32), "must be 64 lowercase hex digits"),
        (Selector("unix", "sha256:abc"), "must be 64 lowercase hex digits"),
    ],
)
def test_bad_selector_is_refused_naming_its_position(selector: Selector, why: str) -> None:
    error = refused(entry(selectors=(UID_1000, selector)))
    assert error.field == "selectors[1]"
    assert why in str(error)


def test_unknown_selector_type_message_names_field_and_supported_types() -> None:
    error = refused(entry(selectors=(UID_1000, Selector("k8s", "ns:default"))))
    assert str(error) == (
        "entry field 'selectors[1]': unknown selector type 'k8s'; supported: unix"
    )


def test_entry_needs_at_least_one_selector() -> None:
    error = refused(entry(selectors=()))
    assert error.field == "selectors"
    assert "at least one selector" in error.why


def test_repeated_selector_is_refused() -> None:
    error = refused(entry(selectors=(UID_1000, Selector("unix", "gid:1"), UID_1000)))
    assert (error.field, error.why) == ("selectors[2]", "repeats selectors[0]")


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("spiffe_id", "", "is required"),
        ("spiffe_id", "spiffe://Example.org/web", "trust domain character 'E'"),
        ("spiffe_id", "https://example.org/web", "scheme must be 'spiffe'"),
        ("spiffe_id", "spiffe://other.org/web", "not in this CA's trust domain example.org"),
        ("spiffe_id", "spiffe://example.org", "has no path"),
        ("parent_id", "spiffe://example.org//a", "empty segment"),
        ("parent_id", "spiffe://other.org/agent", "not in this CA's trust domain"),
        ("entry_id", "has space", "letters, digits"),
        ("entry_id", "x" * 256, "1 to 255"),
        ("x509_svid_ttl", -1, "must not be negative"),
        ("jwt_svid_ttl", -5, "must not be negative"),
        ("hint", "h" * 1025, "1025 characters; at most 1024"),
        ("expires_at", -1, "must not be negative"),
        ("expires_at", int(NOW) - 60, "is in the past"),
        ("expires_at", int(NOW), "is in the past"),
        ("expires_at", 253_402_300_800, "is after the year 9999"),
    ],
)
def test_bad_field_is_refused_by_name(field: str, value: Any, why: str) -> None:
    error = refused(entry(**{field: value}))
    assert error.field == field
    assert why in error.why
    assert str(error).startswith(f"entry field {field!r}: ")


@pytest.mark.parametrize("field", ["x509_svid_ttl", "jwt_svid_ttl"])
def test_ttl_above_the_cas_limit_is_refused_in_durations(field: str) -> None:
    assert RULES.check(entry(**{field: 12 * 3600}), now=NOW)
    error = refused(entry(**{field: 2 * 86400}))
    assert str(error) == f"entry field {field!r}: 2d exceeds the CA's limit of 12h"


def test_bad_dns_name_is_refused_naming_its_position() -> None:
    error = refused(entry(dns_names=("web.local", "bad_name!")))
    assert error.field == "dns_names[1]"
    assert "invalid DNS name 'bad_name!'" in error.why


def test_too_many_dns_names_are_refused() -> None:
    error = refused(entry(dns_names=tuple(f"h{i}.local" for i in range(33))))
    assert error.field == "dns_names"


def test_federated_trust_domains_are_checked_and_normalised() -> None:
    checked = RULES.check(entry(federates_with=("spiffe://other.org", "third.org")), now=NOW)
    assert checked.federates_with == ("other.org", "third.org")
    bad = refused(entry(federates_with=("other.org", "Bad.org")))
    assert bad.field == "federates_with[1]"
    assert "trust domain character 'B'" in bad.why
    own = refused(entry(federates_with=("example.org",)))
    assert (own.field, own.why) == (
        "federates_with[0]",
        "example.org is this CA's own trust domain",
    )


def test_first_bad_field_in_reading_order_is_reported() -> None:
    error = refused(entry(spiffe_id="spiffe://other.org/x", selectors=(), x509_svid_ttl=-1))
    assert error.field == "spiffe_id"


# --- the admin API over a real store ---------------------------------------------------------


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    """What the servicer uses of a grpc.aio context: abort() raises, as grpc's does."""

    def __init__(self, uid: int) -> None:
        self.uid = uid

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class FakeGateway:
    def peer_credentials(self, context: FakeContext) -> PeerCredentials:
        return PeerCredentials(pid=1, uid=context.uid, gid=context.uid)


class Admin:
    """An AdminService on a real CA and SQLite store, called as uid 0 unless told otherwise."""

    def __init__(self, directory: Path) -> None:
        self.clock = FakeClock(NOW)
        self.store = SQLiteStore(directory / "authd.db")
        self.ca = CertificateAuthority(
            trust_domain=EXAMPLE,
            store=self.store,
            keystore=KeyStore(directory / "keys"),
            clock=self.clock,
            settings=CASettings(),
        )
        self.registry = EntryRegistry(self.store, self.clock)
        self.service = AdminService(
            self.ca,
            FakeGateway(),  # type: ignore[arg-type]
            lambda uid: uid == 0,
            self.registry,
        )

    def call(self, method: str, request: Any, *, uid: int = 0) -> Any:
        rpc = getattr(self.service, method)
        return asyncio.run(rpc(request, FakeContext(uid)))

    def refused(self, method: str, request: Any, *, uid: int = 0) -> Aborted:
        with pytest.raises(Aborted) as caught:
            self.call(method, request, uid=uid)
        return caught.value

    def create(self, **fields: Any) -> admin_pb2.Entry:
        fields.setdefault("spiffe_id", "spiffe://example.org/web")
        fields.setdefault("selectors", [admin_pb2.Selector(type="unix", value="uid:1000")])
        request = admin_pb2.CreateEntryRequest(entry=admin_pb2.Entry(**fields))
        reply: admin_pb2.CreateEntryResponse = self.call("CreateEntry", request)
        return reply.entry

    def audit(self, action_prefix: str) -> list[Any]:
        return [r for r in self.store.list_audit() if r.action.startswith(action_prefix)]


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    running = Admin(tmp_path)
    yield running
    running.ca.close()
    running.store.close()


def test_create_stores_reloads_the_registry_and_audits(admin: Admin) -> None:
    created = admin.create(dns_names=["web.local"], hint="web")
    assert created.parent_id == "spiffe://example.org/authd"
    assert (created.revision, created.created_at) == (0, int(NOW))
    stored = admin.store.get_entry(created.id)
    assert stored.dns_names == ("web.local",)
    assert admin.registry.get(created.id) == stored
    assert admin.registry.match([UID_1000]) == [stored]
    [record] = admin.audit("entry.")
    assert (record.actor, record.action, record.subject) == (
        "admin:uid=0",
        "entry.create",
        created.id,
    )
    assert record.details["selectors"] == ["unix:uid:1000"]


def test_invalid_entry_is_invalid_argument_and_nothing_is_stored(admin: Admin) -> None:
    error = admin.refused(
        "CreateEntry",
        admin_pb2.CreateEntryRequest(
            entry=admin_pb2.Entry(
                spiffe_id="spiffe://example.org/web",
                selectors=[admin_pb2.Selector(type="k8s", value="ns:default")],
            )
        ),
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "entry field 'selectors[0]': unknown selector type 'k8s'" in error.details
    assert admin.store.list_entries() == []
    assert admin.audit("entry.") == []


def test_duplicate_entry_is_already_exists_naming_the_existing_one(admin: Admin) -> None:
    first = admin.create()
    error = admin.refused(
        "CreateEntry",
        admin_pb2.CreateEntryRequest(
            entry=admin_pb2.Entry(
                spiffe_id="spiffe://example.org/web",
                selectors=[admin_pb2.Selector(type="unix", value="uid:1000")],
            )
        ),
    )
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert first.id in error.details
    assert [e.entry_id for e in admin.store.list_entries()] == [first.id]


def test_update_replaces_the_entry_and_a_stale_revision_is_refused(admin: Admin) -> None:
    created = admin.create(dns_names=["web.local"])
    new = admin_pb2.Entry()
    new.CopyFrom(created)
    new.spiffe_id = "spiffe://example.org/api"
    del new.dns_names[:]
    reply = admin.call("UpdateEntry", admin_pb2.UpdateEntryRequest(entry=new))
    assert reply.entry.revision == 1
    assert reply.entry.created_at == created.created_at
    stored = admin.store.get_entry(created.id)
    assert (stored.spiffe_id, stored.dns_names) == ("spiffe://example.org/api", ())
    assert admin.registry.get(created.id) == stored

    stale = admin.refused("UpdateEntry", admin_pb2.UpdateEntryRequest(entry=new))  # revision 0
    assert stale.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "is at revision 1, not 0" in stale.details
    assert admin.store.get_entry(created.id) == stored
    assert [r.action for r in admin.audit("entry.")] == ["entry.create", "entry.update"]


def test_update_of_a_missing_entry_is_not_found_and_needs_an_id(admin: Admin) -> None:
    entry = admin_pb2.Entry(
        id="missing",
        spiffe_id="spiffe://example.org/web",
        selectors=[admin_pb2.Selector(type="unix", value="uid:1")],
    )
    missing = admin.refused("UpdateEntry", admin_pb2.UpdateEntryRequest(entry=entry))
    assert missing.code == grpc.StatusCode.NOT_FOUND
    entry.id = ""
    no_id = admin.refused("UpdateEntry", admin_pb2.UpdateEntryRequest(entry=entry))
    assert no_id.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "entry field 'entry_id': is required" in no_id.details
    assert admin.store.list_entries() == []


def test_delete_removes_from_store_and_registry_then_not_found(admin: Admin) -> None:
    created = admin.create()
    admin.call("DeleteEntry", admin_pb2.DeleteEntryRequest(id=created.id))
    assert admin.store.list_entries() == []
    assert admin.registry.get(created.id) is None
    assert admin.audit("entry.delete")[0].subject == created.id
    again = admin.refused("DeleteEntry", admin_pb2.DeleteEntryRequest(id=created.id))
    assert again.code == grpc.StatusCode.NOT_FOUND
    gone = admin.refused("GetEntry", admin_pb2.GetEntryRequest(id=created.id))
    assert gone.code == grpc.StatusCode.NOT_FOUND


def test_list_filters_by_spiffe_id_parent_and_selector(admin: Admin) -> None:
    web = admin.create()
    admin.clock.advance(1)  # list order is creation order
    api = admin.create(
        spiffe_id="spiffe://example.org/api",
        parent_id="spiffe://example.org/node/a",
        selectors=[admin_pb2.Selector(type="unix", value="uid:2000")],
    )

    def ids(**filters: str) -> list[str]:
        reply = admin.call("ListEntries", admin_pb2.ListEntriesRequest(**filters))
        return [e.id for e in reply.entries]

    assert ids() == [web.id, api.id]
    assert ids(spiffe_id="spiffe://example.org/api") == [api.id]
    assert ids(parent_id="spiffe://example.org/authd") == [web.id]
    assert ids(selector="unix:uid:1000") == [web.id]
    assert ids(selector="unix:uid:1000", spiffe_id="spiffe://example.org/api") == []
    bad = admin.refused("ListEntries", admin_pb2.ListEntriesRequest(selector="unix:pid:1"))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.details.startswith("filter 'selector': unknown unix selector key 'pid'")
    bad_id = admin.refused("ListEntries", admin_pb2.ListEntriesRequest(parent_id="spiffe://X"))
    assert bad_id.details.startswith("filter 'parent_id': ")


def test_entry_rpcs_refuse_a_non_admin_uid(admin: Admin) -> None:
    created = admin.create()
    for method, request in (
        ("CreateEntry", admin_pb2.CreateEntryRequest()),
        ("GetEntry", admin_pb2.GetEntryRequest(id=created.id)),
        ("ListEntries", admin_pb2.ListEntriesRequest()),
        ("UpdateEntry", admin_pb2.UpdateEntryRequest(entry=created)),
        ("DeleteEntry", admin_pb2.DeleteEntryRequest(id=created.id)),
    ):
        error = admin.refused(method, request, uid=1000)
        assert error.code == grpc.StatusCode.PERMISSION_DENIED, method
        assert "uid 1000 is not an authd admin" in error.details
    assert [e.entry_id for e in admin.store.list_entries()] == [created.id]


# --- authority rotation through the admin API ------------------------------------------------


def authority_of(admin: Admin, kind: str, state: str) -> str:
    [record] = [r for r in admin.ca.authorities() if r.kind == kind and r.state == state]
    return record.authority_id


def test_authority_rotation_steps_through_the_admin_api(admin: Admin) -> None:
    old = authority_of(admin, "x509", "active")
    sequence = admin.ca.bundle.sequence
    prepared = admin.call("PrepareAuthority", admin_pb2.PrepareAuthorityRequest(kind="x509"))
    assert prepared.authority.state == "prepared"
    assert prepared.bundle_sequence == sequence + 1
    activated = admin.call("ActivateAuthority", admin_pb2.ActivateAuthorityRequest(kind="x509"))
    assert activated.authority.authority_id == prepared.authority.authority_id
    assert admin.ca.x509_authority.authority_id == prepared.authority.authority_id
    tainted = admin.call(
        "TaintAuthority", admin_pb2.TaintAuthorityRequest(kind="x509", authority_id=old)
    )
    assert tainted.authority.tainted
    revoked = admin.call(
        "RevokeAuthority", admin_pb2.RevokeAuthorityRequest(kind="x509", authority_id=old)
    )
    assert revoked.authority.revoked
    assert old not in {r.authority_id for r in admin.ca.authorities() if not r.revoked}
    again = admin.refused(
        "RevokeAuthority", admin_pb2.RevokeAuthorityRequest(kind="x509", authority_id=old)
    )
    assert again.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already revoked" in again.details


def test_authority_steps_out_of_order_or_mismatched_are_refused(admin: Admin) -> None:
    active = authority_of(admin, "x509", "active")
    sequence = admin.ca.bundle.sequence
    cases: list[tuple[str, Any, grpc.StatusCode, str]] = [
        ("ActivateAuthority", admin_pb2.ActivateAuthorityRequest(kind="jwt"),
         grpc.StatusCode.FAILED_PRECONDITION, "no prepared jwt authority to activate"),
        ("TaintAuthority", admin_pb2.TaintAuthorityRequest(kind="x509", authority_id=active),
         grpc.StatusCode.FAILED_PRECONDITION, "only a retired authority can be tainted"),
        ("RevokeAuthority", admin_pb2.RevokeAuthorityRequest(kind="x509", authority_id=active),
         grpc.StatusCode.FAILED_PRECONDITION, "must be tainted before it is revoked"),
        ("TaintAuthority", admin_pb2.TaintAuthorityRequest(kind="jwt", authority_id=active),
         grpc.StatusCode.INVALID_ARGUMENT, f"authority {active} is of kind x509, not jwt"),
        ("TaintAuthority", admin_pb2.TaintAuthorityRequest(kind="x509", authority_id="ab"),
         grpc.StatusCode.NOT_FOUND, "no authority 'ab'"),
        ("TaintAuthority", admin_pb2.TaintAuthorityRequest(kind="x509"),
         grpc.StatusCode.INVALID_ARGUMENT, "authority_id is required"),
        ("PrepareAuthority", admin_pb2.PrepareAuthorityRequest(kind="rsa"),
         grpc.StatusCode.INVALID_ARGUMENT, "authority kind must be x509 or jwt, not 'rsa'"),
        ("PrepareAuthority", admin_pb2.PrepareAuthorityRequest(kind="x509"),
         grpc.StatusCode.PERMISSION_DENIED, "uid 1000 is not an authd admin"),
    ]  # fmt: skip
    for method, request, code, message in cases:
        uid = 1000 if code == grpc.StatusCode.PERMISSION_DENIED else 0
        error = admin.refused(method, request, uid=uid)
        assert (error.code, message in error.details) == (code, True), (method, error)
    assert admin.ca.bundle.sequence == sequence  # nothing changed
    admin.call("PrepareAuthority", admin_pb2.PrepareAuthorityRequest(kind="x509"))
    twice = admin.refused("PrepareAuthority", admin_pb2.PrepareAuthorityRequest(kind="x509"))
    assert twice.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "a prepared x509 authority already exists" in twice.details

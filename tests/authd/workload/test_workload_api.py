"""The SPIFFE Workload API, spoken to by py-spiffe (the real client) and by a raw stub.

The server is the real stack: a CA on SQLite with a FakeClock started at the real time
(py-spiffe checks JWT expiry against the real clock), an EntryRegistry over the same store,
an SvidProvider, a PeerCredGateway, and a grpc.aio server running in a background thread's
event loop. Everything that touches the provider runs on that loop (``WorkloadApi.on_loop``),
as it would in the daemon. Rotation is driven by advancing the clock and calling
``provider.rotate_due()``; nothing sleeps waiting for time to pass.

The callers of another uid start as root and drop to that uid before connecting (see
tests/authd/test_peercred.py for why), so the kernel reports them as that uid.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import spiffe
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from authd.api.spiffe.workload import workload_pb2, workload_pb2_grpc
from authd.transport.peercred import PeerCredentials, PeerCredGateway
from authd.workload.registry import EntryRegistry
from authd.workload.svids import SvidProvider
from authd.workload.workload_api import WorkloadApiService
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.jwtsvid import b64url
from ca.keys import KeyStore
from ca.spiffe_id import TrustDomain
from ca.store import RegistrationEntry, Selector, SQLiteStore

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = TrustDomain("example.org")
TRUST_DOMAIN_ID = "spiffe://example.org"
PARENT_ID = "spiffe://example.org/authd"
ME = os.getuid()
NOBODY = 65534
MY_ID = "spiffe://example.org/me"
OTHER_ID = "spiffe://example.org/me-too"
NOBODY_ID = "spiffe://example.org/nobody"
HEADER = (("workload.spiffe.io", "true"),)
WAIT = 30.0  # every wait below is bounded by this (RPC deadlines, polls)
# Past the half-life of the default 1 h X.509-SVID: its rotation is due.
PAST_HALF_LIFE = 3600 / 2 + 1
SHUTTING_DOWN = "the Workload API is shutting down"


def uid_selectors(creds: PeerCredentials) -> frozenset[Selector]:
    return frozenset({Selector("unix", f"uid:{creds.uid}")})


class ObservedProvider(SvidProvider):
    """The real provider, noting each version a stream waits past (to know it has caught up)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waited_on: list[int] = []

    async def wait_for_change(self, version: int) -> int:
        self.waited_on.append(version)
        return await super().wait_for_change(version)


class WorkloadApi:
    """The Workload API served on ``socket_url`` from a loop in a background thread."""

    def __init__(
        self,
        workdir: Path,
        attest: Callable[[PeerCredentials], frozenset[Selector]] = uid_selectors,
    ) -> None:
        self.clock = FakeClock(start=time.time())
        data = workdir / "data"
        data.mkdir(mode=0o700)
        self.store = SQLiteStore(data / "authd.db")
        self.ca = CertificateAuthority(
            trust_domain=EXAMPLE,
            store=self.store,
            keystore=KeyStore(data / "keys"),
            clock=self.clock,
        )
        self.registry = EntryRegistry(self.store, self.clock)
        self.provider = ObservedProvider(self.ca, self.registry, self.clock)
        self.gateway = PeerCredGateway(workdir / "api.sock", workdir / "private", public_mode=0o666)
        self.service = WorkloadApiService(
            identities=self.provider, gateway=self.gateway, attest=attest
        )
        self.socket_url = f"unix://{self.gateway.public_path}"  # unix:///abs/path
        self._created = 0
        self._stopped = False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = self.run(self._start())

    async def _start(self) -> grpc.aio.Server:
        await self.gateway.start()
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self.service, server)
        server.add_insecure_port(self.gateway.internal_address)
        await server.start()
        return server

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def on_loop(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return self.run(call())

    # --- what an operator does ----------------------------------------------------------

    def add_entry(self, entry_id: str, spiffe_id: str, uid: int, hint: str = "") -> None:
        self._created += 1  # entries match oldest first
        entry = RegistrationEntry(
            entry_id=entry_id,
            spiffe_id=spiffe_id,
            parent_id=PARENT_ID,
            selectors=(Selector("unix", f"uid:{uid}"),),
            hint=hint,
            created_at=self._created,
        )
        self.on_loop(lambda: (self.store.create_entry(entry), self.registry.reload()))

    def remove_entry(self, entry_id: str) -> None:
        self.on_loop(lambda: (self.store.delete_entry(entry_id), self.registry.reload()))

    def rotate_past_half_life(self) -> int:
        def rotate() -> int:
            self.clock.advance(PAST_HALF_LIFE)
            return self.provider.rotate_due()

        return self.on_loop(rotate)

    def current_serial(self, entry_id: str) -> int:
        def serial() -> int:
            entry = self.registry.get(entry_id)
            assert entry is not None
            return self.provider.x509_svid(entry).chain[0].serial_number

        return self.on_loop(serial)

    # --- what the tests watch -----------------------------------------------------------

    def streams_caught_up(self) -> None:
        """Wait until a stream has seen the provider's current version and waits past it."""
        version = self.on_loop(lambda: self.provider.version)
        eventually(lambda: self.on_loop(lambda: version in self.provider.waited_on))

    def open_streams(self) -> int:
        return self.on_loop(lambda: self.service.open_streams)

    def waiting_tasks(self) -> list[str]:
        """Tasks on the server loop still waiting for a change or for the service to close."""

        def waiting() -> list[str]:
            tasks = asyncio.all_tasks(self.loop)
            names = [getattr(t.get_coro(), "__qualname__", "") for t in tasks]
            return [n for n in names if n.endswith(("wait_for_change", "Event.wait"))]

        return self.on_loop(waiting)

    def stop(self, *, close_service: bool = True, grace: float | None = WAIT) -> list[str]:
        """Stop serving; returns the tasks left on the loop afterwards (there should be none)."""

        async def stop() -> list[str]:
            if close_service:
                self.service.close()
            await self.server.stop(grace)
            await self.gateway.close()
            current = asyncio.current_task()
            # grpc finishes its cancelled RPC tasks a few loop turns after stop() returns.
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                left = [t for t in asyncio.all_tasks() if t is not current]
                if not left:
                    break
                await asyncio.sleep(0.01)
            return [repr(t) for t in asyncio.all_tasks() if t is not current]

        self._stopped = True
        return self.run(stop())

    def close(self) -> None:
        if not self._stopped:
            self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)
        self.loop.close()
        self.ca.close()
        self.store.close()


def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def make_api(workdir: Path) -> Iterator[Callable[..., WorkloadApi]]:
    made: list[WorkloadApi] = []

    def make(**kwargs: Any) -> WorkloadApi:
        api = WorkloadApi(workdir, **kwargs)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def api(make_api: Callable[..., WorkloadApi]) -> WorkloadApi:
    """The Workload API with one entry, ``MY_ID``, for this test process's uid."""
    api = make_api()
    api.add_entry("mine", MY_ID, uid=ME)
    return api


@pytest.fixture
def stub(api: WorkloadApi) -> Iterator[workload_pb2_grpc.SpiffeWorkloadAPIStub]:
    with grpc.insecure_channel(f"unix:{api.gateway.public_path}") as channel:
        yield workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


def first_svids(stub: workload_pb2_grpc.SpiffeWorkloadAPIStub) -> list[workload_pb2.X509SVID]:
    stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=WAIT)
    try:
        return list(next(stream).svids)
    finally:
        stream.cancel()


def rpc_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error: Any = raised.value
    return error.code(), error.details()


def der_certificates(data: bytes) -> list[x509.Certificate]:
    """Split concatenated DER certificates (each a SEQUENCE with a long-form length)."""
    certificates = []
    while data:
        assert data[0] == 0x30 and data[1] & 0x80, "not a DER SEQUENCE"
        size_bytes = data[1] & 0x7F
        end = 2 + size_bytes + int.from_bytes(data[2 : 2 + size_bytes], "big")
        certificates.append(x509.load_der_x509_certificate(data[:end]))
        data = data[end:]
    return certificates


def leaf_serials(response: workload_pb2.X509SVIDResponse) -> list[int]:
    return [der_certificates(s.x509_svid)[0].serial_number for s in response.svids]


# --- X.509-SVIDs ------------------------------------------------------------------------


def test_x509_svid_is_the_callers_identity_and_verifies_against_the_bundle(
    api: WorkloadApi, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", api.socket_url)  # the unix:///abs/path form
    with spiffe.WorkloadApiClient() as client:
        context = client.fetch_x509_context(timeout=WAIT)
    (svid,) = context.x509_svids
    assert str(svid.spiffe_id) == MY_ID
    assert svid.leaf.serial_number == api.current_serial("mine")
    public = svid.leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert svid.private_key.public_key().public_numbers() == public.public_numbers()
    bundle = context.x509_bundle_set.get_bundle_for_trust_domain(spiffe.TrustDomain("example.org"))
    assert bundle is not None
    assert set(bundle.x509_authorities) == set(api.ca.bundle.x509_authorities)

    # An independent verifier: openssl, the leaf against the bundle the API handed out.
    (leaf_pem, roots_pem) = (workdir / "leaf.pem", workdir / "roots.pem")
    leaf_pem.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
    )
    roots_pem.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in bundle.x509_authorities)
    )
    verify = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", roots_pem, leaf_pem],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_x509_svid_message_carries_leaf_first_pkcs8_key_and_the_der_bundle(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    (svid,) = first_svids(stub)
    assert svid.spiffe_id == MY_ID
    chain = der_certificates(svid.x509_svid)
    basic = chain[0].extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False  # the leaf comes first
    key = serialization.load_der_private_key(svid.x509_svid_key, password=None)  # unencrypted
    assert svid.x509_svid_key == key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert key.public_key() == chain[0].public_key()
    assert der_certificates(svid.bundle) == list(api.ca.bundle.x509_authorities)


def test_every_entry_of_the_caller_is_sent_and_a_repeated_hint_keeps_the_first(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    api.remove_entry("mine")
    api.add_entry("web-1", MY_ID, uid=ME, hint="web")
    api.add_entry("web-2", OTHER_ID, uid=ME, hint="web")
    api.add_entry("plain-1", "spiffe://example.org/plain-1", uid=ME)
    api.add_entry("plain-2", "spiffe://example.org/plain-2", uid=ME)

    svids = first_svids(stub)
    assert [(s.spiffe_id, s.hint) for s in svids] == [
        (MY_ID, "web"),  # not web-2's OTHER_ID: a hint is sent once
        ("spiffe://example.org/plain-1", ""),  # an empty hint is no hint
        ("spiffe://example.org/plain-2", ""),
    ]
    for svid in svids:
        key = serialization.load_der_private_key(svid.x509_svid_key, password=None)
        assert key.public_key() == der_certificates(svid.x509_svid)[0].public_key()

    jwt = stub.FetchJWTSVID(
        workload_pb2.JWTSVIDRequest(audience=["db"]), metadata=HEADER, timeout=WAIT
    )
    assert [(s.spiffe_id, s.hint) for s in jwt.svids] == [(s.spiffe_id, s.hint) for s in svids]


def test_rotated_svid_is_pushed_to_an_x509_source_on_its_open_stream(api: WorkloadApi) -> None:
    updates: queue.Queue[spiffe.X509Svid] = queue.Queue()
    with spiffe.X509Source(socket_path=api.socket_url, timeout_in_seconds=WAIT) as source:
        first = source.get_x509_context().default_svid
        source.subscribe_for_updates(lambda: updates.put(source.get_x509_context().default_svid))
        assert api.rotate_past_half_life() == 1
        rotated = updates.get(timeout=WAIT)
    assert str(rotated.spiffe_id) == MY_ID
    assert rotated.leaf.serial_number != first.leaf.serial_number
    assert rotated.leaf.serial_number == api.current_serial("mine")


def test_x509_stream_is_silent_about_changes_that_do_not_touch_the_caller(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=WAIT)
    try:
        first = leaf_serials(next(stream))
        api.add_entry("nobody", NOBODY_ID, uid=NOBODY)  # another workload's entry
        api.streams_caught_up()
        api.rotate_past_half_life()
        # Had the unrelated change been sent, this would be the old SVID again.
        second = leaf_serials(next(stream))
    finally:
        stream.cancel()
    assert second != first
    assert second == [api.current_serial("mine")]


def test_x509_stream_follows_the_callers_entries_and_ends_when_none_is_left(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=WAIT)
    try:
        assert [s.spiffe_id for s in next(stream).svids] == [MY_ID]
        api.add_entry("also-mine", OTHER_ID, uid=ME, hint="second")
        assert [s.spiffe_id for s in next(stream).svids] == [MY_ID, OTHER_ID]
        api.remove_entry("mine")
        assert [s.spiffe_id for s in next(stream).svids] == [OTHER_ID]
        api.remove_entry("also-mine")
        code, details = rpc_error(lambda: next(stream))
    finally:
        stream.cancel()
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
    eventually(lambda: api.open_streams() == 0)


def test_x509_stream_resends_when_the_bundle_changes(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=WAIT)
    try:
        (before,) = next(stream).svids
        api.on_loop(lambda: api.ca.prepare_authority("x509"))
        (after,) = next(stream).svids
    finally:
        stream.cancel()
    assert len(der_certificates(before.bundle)) == 1
    assert der_certificates(after.bundle) == list(api.ca.bundle.x509_authorities)
    assert len(der_certificates(after.bundle)) == 2
    assert after.x509_svid == before.x509_svid  # the SVID itself did not change


# --- bundles ----------------------------------------------------------------------------


def test_x509_bundles_are_keyed_by_trust_domain_id_and_resent_on_change(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    with spiffe.WorkloadApiClient(socket_path=api.socket_url) as client:
        bundles = client.fetch_x509_bundles(timeout=WAIT)
    bundle = bundles.get_bundle_for_trust_domain(spiffe.TrustDomain("example.org"))
    assert bundle is not None
    assert set(bundle.x509_authorities) == set(api.ca.bundle.x509_authorities)

    stream = stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER, timeout=WAIT)
    try:
        first = next(stream)
        assert list(first.bundles) == [TRUST_DOMAIN_ID]
        api.add_entry("nobody", NOBODY_ID, uid=NOBODY)  # no bundle change: nothing to send
        api.streams_caught_up()
        api.on_loop(lambda: api.ca.prepare_authority("x509"))
        second = next(stream)
    finally:
        stream.cancel()
    assert len(der_certificates(first.bundles[TRUST_DOMAIN_ID])) == 1
    assert der_certificates(second.bundles[TRUST_DOMAIN_ID]) == list(api.ca.bundle.x509_authorities)
    assert len(der_certificates(second.bundles[TRUST_DOMAIN_ID])) == 2


def test_jwt_bundles_hold_only_jwt_keys_keyed_by_trust_domain_id_and_resent_on_change(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    stream = stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER, timeout=WAIT)
    try:
        first = next(stream)
        assert list(first.bundles) == [TRUST_DOMAIN_ID]
        api.add_entry("nobody", NOBODY_ID, uid=NOBODY)
        api.streams_caught_up()
        prepared = api.on_loop(lambda: api.ca.prepare_authority("jwt"))
        second = next(stream)
    finally:
        stream.cancel()
    first_keys = json.loads(first.bundles[TRUST_DOMAIN_ID])["keys"]
    second_keys = json.loads(second.bundles[TRUST_DOMAIN_ID])["keys"]
    assert {k["use"] for k in first_keys + second_keys} == {"jwt-svid"}
    assert [k["kid"] for k in first_keys] == [api.ca.jwt_authority.kid]
    assert {k["kid"] for k in second_keys} == {api.ca.jwt_authority.kid, prepared.authority_id}


# --- JWT-SVIDs --------------------------------------------------------------------------


def test_jwt_svid_validates_through_the_api_and_locally_with_the_jwt_bundle(
    api: WorkloadApi,
) -> None:
    with spiffe.WorkloadApiClient(socket_path=api.socket_url) as client:
        with spiffe.JwtSource(workload_api_client=client, timeout_in_seconds=WAIT) as source:
            svid = source.fetch_svid({"payments"}, timeout=WAIT)
            bundle = source.get_bundle_for_trust_domain(spiffe.TrustDomain("example.org"))
        assert str(svid.spiffe_id) == MY_ID
        assert svid.audience == {"payments"}
        validated = client.validate_jwt_svid(svid.token, "payments", timeout=WAIT)
    assert str(validated.spiffe_id) == MY_ID
    assert bundle is not None
    local = spiffe.JwtSvid.parse_and_validate(svid.token, bundle, {"payments"})
    assert str(local.spiffe_id) == MY_ID


def test_validate_jwt_svid_returns_the_spiffe_id_and_claims(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    (fetched,) = stub.FetchJWTSVID(
        workload_pb2.JWTSVIDRequest(audience=["payments", "audit"]), metadata=HEADER, timeout=WAIT
    ).svids
    assert fetched.spiffe_id == MY_ID
    response = stub.ValidateJWTSVID(
        workload_pb2.ValidateJWTSVIDRequest(audience="audit", svid=fetched.svid),
        metadata=HEADER,
        timeout=WAIT,
    )
    assert response.spiffe_id == MY_ID
    claims = dict(response.claims)
    assert claims["sub"] == MY_ID
    assert list(claims["aud"]) == ["payments", "audit"]
    assert claims["exp"] > time.time()


def test_validate_jwt_svid_refuses_with_the_rule_that_failed(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    (fetched,) = stub.FetchJWTSVID(
        workload_pb2.JWTSVIDRequest(audience=["payments"]), metadata=HEADER, timeout=WAIT
    ).svids

    def validate(audience: str, token: str) -> tuple[grpc.StatusCode, str]:
        request = workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token)
        return rpc_error(lambda: stub.ValidateJWTSVID(request, metadata=HEADER, timeout=WAIT))

    code, details = validate("billing", fetched.svid)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("jwt-svid/aud:")

    _, payload, _ = fetched.svid.split(".")
    unsigned = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + f".{payload}."
    code, details = validate("payments", unsigned)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("jwt-svid/alg:")

    assert validate("", fetched.svid) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "audience must be specified",
    )
    assert validate("payments", "") == (grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")


@pytest.mark.parametrize("audience", [[], [""]], ids=["none", "empty"])
def test_fetch_jwt_svid_without_audience_is_invalid_argument(
    stub: workload_pb2_grpc.SpiffeWorkloadAPIStub, audience: list[str]
) -> None:
    request = workload_pb2.JWTSVIDRequest(audience=audience)
    assert rpc_error(lambda: stub.FetchJWTSVID(request, metadata=HEADER, timeout=WAIT)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "audience must be specified",
    )


def test_fetch_jwt_svid_for_a_spiffe_id_gives_only_that_one_of_the_callers_own(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    api.add_entry("also-mine", OTHER_ID, uid=ME)
    api.add_entry("nobody", NOBODY_ID, uid=NOBODY)

    def fetch(spiffe_id: str) -> workload_pb2.JWTSVIDResponse:
        request = workload_pb2.JWTSVIDRequest(audience=["db"], spiffe_id=spiffe_id)
        return stub.FetchJWTSVID(request, metadata=HEADER, timeout=WAIT)

    assert [s.spiffe_id for s in fetch("").svids] == [MY_ID, OTHER_ID]
    assert [s.spiffe_id for s in fetch(OTHER_ID).svids] == [OTHER_ID]
    assert rpc_error(lambda: fetch(NOBODY_ID)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        f"no identity issued for {NOBODY_ID}",
    )
    code, _ = rpc_error(lambda: fetch("not a spiffe id"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# --- who may call -----------------------------------------------------------------------


def call_each_method(
    stub: workload_pb2_grpc.SpiffeWorkloadAPIStub, metadata: tuple[tuple[str, str], ...]
) -> dict[str, Callable[[], object]]:
    return {
        "FetchX509SVID": lambda: next(
            stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=metadata, timeout=WAIT)
        ),
        "FetchX509Bundles": lambda: next(
            stub.FetchX509Bundles(
                workload_pb2.X509BundlesRequest(), metadata=metadata, timeout=WAIT
            )
        ),
        "FetchJWTBundles": lambda: next(
            stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=metadata, timeout=WAIT)
        ),
        "FetchJWTSVID": lambda: stub.FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=["db"]), metadata=metadata, timeout=WAIT
        ),
        "ValidateJWTSVID": lambda: stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="db", svid="a.b.c"),
            metadata=metadata,
            timeout=WAIT,
        ),
    }


@pytest.mark.parametrize(
    "metadata",
    [(), (("workload.spiffe.io", "false"),), (("workload.spiffe.io", "true"),) * 2],
    ids=["absent", "false", "repeated"],
)
def test_every_method_without_the_workload_header_is_invalid_argument(
    stub: workload_pb2_grpc.SpiffeWorkloadAPIStub, metadata: tuple[tuple[str, str], ...]
) -> None:
    for method, call in call_each_method(stub, metadata).items():
        assert rpc_error(call) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "missing or invalid workload.spiffe.io header",
        ), method
    # The same calls with the header get past that check.
    good = call_each_method(stub, HEADER)
    good["FetchX509SVID"]()
    good["FetchJWTSVID"]()


def test_a_caller_with_no_entry_is_denied_on_every_method(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    api.remove_entry("mine")
    api.add_entry("nobody", NOBODY_ID, uid=NOBODY)
    for method, call in call_each_method(stub, HEADER).items():
        assert rpc_error(call) == (grpc.StatusCode.PERMISSION_DENIED, "no identity issued"), method


def test_a_connection_that_bypassed_the_gateway_is_denied(api: WorkloadApi) -> None:
    with grpc.insecure_channel(api.gateway.internal_address) as channel:
        direct = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        code, _ = rpc_error(lambda: first_svids(direct))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_an_attestation_failure_is_permission_denied_with_its_message(
    make_api: Callable[..., WorkloadApi],
) -> None:
    def failing(creds: PeerCredentials) -> frozenset[Selector]:
        raise LookupError(f"/proc/{creds.pid}/exe is gone")

    api = make_api(attest=failing)
    api.add_entry("mine", MY_ID, uid=ME)
    with grpc.insecure_channel(f"unix:{api.gateway.public_path}") as channel:
        code, details = rpc_error(
            lambda: first_svids(workload_pb2_grpc.SpiffeWorkloadAPIStub(channel))
        )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == f"attestation failed: /proc/{os.getpid()}/exe is gone"


# A caller of another uid, in its own process: builds its channels as root, drops to <uid>,
# then calls (raw stub and py-spiffe) and prints what it got as JSON.
OTHER_UID_CLIENT = textwrap.dedent(
    """
    import json, os, sys
    import grpc
    import spiffe
    from authd.api.spiffe.workload import workload_pb2, workload_pb2_grpc

    socket_url, uid = sys.argv[1], int(sys.argv[2])
    header = (("workload.spiffe.io", "true"),)
    channel = grpc.insecure_channel("unix:" + socket_url.removeprefix("unix://"))
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    client = spiffe.WorkloadApiClient(socket_path=socket_url)
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    assert os.getresuid() == (uid, uid, uid)

    def attempt(call):
        try:
            return call()
        except grpc.RpcError as error:
            return [error.code().name, error.details()]
        except spiffe.errors.PySpiffeError as error:
            return ["py-spiffe", str(error)]

    def x509():
        stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=header, timeout=30)
        return [s.spiffe_id for s in next(stream).svids]

    def jwt():
        request = workload_pb2.JWTSVIDRequest(audience=["db"])
        return [s.spiffe_id for s in stub.FetchJWTSVID(request, metadata=header, timeout=30).svids]

    print(json.dumps({
        "x509": attempt(x509),
        "jwt": attempt(jwt),
        "py-spiffe x509": attempt(
            lambda: [str(s.spiffe_id) for s in client.fetch_x509_svids(timeout=30)]
        ),
        "py-spiffe jwt": attempt(
            lambda: str(client.fetch_jwt_svid({"db"}, timeout=30).spiffe_id)
        ),
    }))
    os._exit(0)  # the uid can no longer read what interpreter shutdown might import
    """
)


def call_as(api: WorkloadApi, uid: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", OTHER_UID_CLIENT, api.socket_url, str(uid)],
        cwd=api.gateway.public_path.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=2 * WAIT,
    )
    assert result.returncode == 0, result.stderr
    outcome: dict[str, Any] = json.loads(result.stdout)
    return outcome


def test_a_caller_of_another_uid_without_an_entry_is_denied(api: WorkloadApi) -> None:
    outcome = call_as(api, NOBODY)
    denied = ["PERMISSION_DENIED", "no identity issued"]
    assert outcome["x509"] == denied
    assert outcome["jwt"] == denied
    assert outcome["py-spiffe x509"][0] == "py-spiffe"
    assert "no identity issued" in outcome["py-spiffe x509"][1]


def test_a_caller_of_another_uid_gets_exactly_its_own_entry(api: WorkloadApi) -> None:
    api.add_entry("nobody", NOBODY_ID, uid=NOBODY)
    assert call_as(api, NOBODY) == {
        "x509": [NOBODY_ID],
        "jwt": [NOBODY_ID],
        "py-spiffe x509": [NOBODY_ID],
        "py-spiffe jwt": NOBODY_ID,
    }
    # ... while this process, on the same socket, still gets only its own.
    assert call_as(api, ME)["x509"] == [MY_ID]


# --- the end of a stream ----------------------------------------------------------------


def test_a_stream_the_client_cancels_ends_on_the_server(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    streams = [
        stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=WAIT),
        stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER, timeout=WAIT),
        stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER, timeout=WAIT),
    ]
    for stream in streams:
        next(stream)
    eventually(lambda: len(api.waiting_tasks()) == 2 * len(streams))
    assert api.open_streams() == len(streams)
    for stream in streams:
        stream.cancel()
    eventually(lambda: api.open_streams() == 0)
    eventually(lambda: api.waiting_tasks() == [])


def test_closing_the_service_ends_every_stream_with_unavailable_and_leaves_no_task(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    streams = [
        stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=WAIT),
        stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER, timeout=WAIT),
        stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER, timeout=WAIT),
    ]
    for stream in streams:
        next(stream)
    eventually(lambda: api.open_streams() == len(streams))
    assert api.stop(close_service=True, grace=WAIT) == []
    for stream in streams:
        assert rpc_error(lambda s=stream: next(s)) == (grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)


def test_stopping_the_server_without_closing_the_service_leaves_no_task(
    api: WorkloadApi, stub: workload_pb2_grpc.SpiffeWorkloadAPIStub
) -> None:
    stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=WAIT)
    next(stream)
    eventually(lambda: api.open_streams() == 1)
    assert api.stop(close_service=False, grace=None) == []
    assert api.on_loop(lambda: api.service.open_streams) == 0
    code, _ = rpc_error(lambda: next(stream))
    assert code != grpc.StatusCode.OK

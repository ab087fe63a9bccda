"""Three `authd run` replicas sharing one private Redis, as real processes.

Replica 1 rotates (and so holds the CA keys and signs); replicas 2 and 3 are decision points
that follow the store's change feed. The rules: every replica serves the signer's bundle and
verifies what it signs, including a newly activated authority; a revocation made on any
replica denies on every replica within a second, and the signer issues nothing new for a
revoked SPIFFE ID; a replica cut off from Redis keeps deciding from its last view until
``store.max_staleness``, then fails closed with 503 ``revocations_stale``, and resynchronises
when Redis is back, with every revocation acknowledged before the outage; a replica killed
with SIGKILL in the middle of issuing loses no acknowledged revocation, leaves the audit
chain intact, and what it acknowledged issuing can still be revoked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.support.daemon import authd
from tests.support.redis_server import RedisServer
from tests.support.store_replicas import ALLOW_WORKLOADS_POLICY as POLICY
from tests.support.store_replicas import Replica, check, wait_for
from tests.support.txn_tokens import sign_txn_token, txn_claims

MAX_STALENESS = 3  # seconds; store.max_staleness of every replica
PROPAGATION_LIMIT = 1.0  # seconds from `authd revoke` returning to every replica denying
ROTATION_CHECK_INTERVAL = 1  # seconds; ca.rotation_check_interval of every replica
ENVOY_AUTHZ_TIMEOUT = 0.5  # seconds; the ext_authz timeout of deploy/envoy/*.yaml
TD = "spiffe://example.org"


@dataclass
class Replicas:
    workdir: Path
    redis: RedisServer
    all: list[Replica]

    @property
    def signer(self) -> Replica:
        return self.all[0]

    def token(self, spiffe_id: str) -> str:
        """A JWT-SVID for ``spiffe_id``, minted by the rotating replica (the one with keys)."""
        return self.signer.cli(
            "jwt", "mint", "--spiffe-id", spiffe_id, "--audience", "authd"
        ).strip()

    def revoked_targets(self, via: Replica) -> set[str]:
        listed = json.loads(via.cli("revocations", "list", "--json"))["revocations"]
        return {r["target"] for r in listed}


@pytest.fixture(scope="module")
def replicas() -> Iterator[Replicas]:
    workdir = Path(tempfile.mkdtemp(prefix="authd-rep-"))  # short: Unix socket paths
    os.chmod(workdir, 0o755)
    (workdir / "policy.yaml").write_text(POLICY)
    redis = RedisServer(workdir / "redis", appendonly=True).start()
    group = [
        Replica(workdir, f"r{n}", redis.url, rotates=n == 1, max_staleness=MAX_STALENESS)
        for n in range(1, 4)
    ]
    try:
        group[0].start()  # makes the authorities the others load
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Replica.start, group[1:]))
        yield Replicas(workdir, redis, group)
    finally:
        for replica in group:
            if replica.running:
                replica.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_every_replica_serves_the_bundle_of_the_rotating_one(replicas: Replicas) -> None:
    bundles = [r.cli("bundle", "show") for r in replicas.all]
    assert bundles[1] == bundles[0] and bundles[2] == bundles[0]
    shown = [json.loads(r.cli("ca", "show", "--json")) for r in replicas.all]
    assert all(s["authorities"] == shown[0]["authorities"] for s in shown)
    assert {s["bundle_sequence"] for s in shown} == {shown[0]["bundle_sequence"]}
    # A token signed by replica 1 verifies on every replica from the bundle in the records.
    token = replicas.token(f"{TD}/catalog")
    assert [check(r, token) for r in replicas.all] == [(200, "allowed")] * 3
    assert [r.staleness() for r in replicas.all] == pytest.approx([0, 0, 0], abs=1.0)
    # The others hold no CA key, so they do not sign, and say where to issue.
    refused = authd(
        "jwt", "mint", "--spiffe-id", f"{TD}/catalog", "--audience", "authd",
        data_dir=replicas.all[1].data_dir, check=False,
    )  # fmt: skip
    assert refused.returncode == 4  # invalid argument: no JWT authority key here
    assert len(refused.stderr.strip().splitlines()) == 1 and "ca.rotates" in refused.stderr


def test_an_authority_prepared_on_the_signer_verifies_everywhere_once_active(
    replicas: Replicas,
) -> None:
    signer = replicas.signer
    signer.cli("authority", "prepare", "--kind", "jwt")
    bundle = signer.cli("bundle", "show")
    for replica in replicas.all[1:]:
        wait_for(
            f"{replica.name} to publish the prepared key",
            lambda r=replica: r.cli("bundle", "show") == bundle,
        )
    signer.cli("authority", "activate", "--kind", "jwt")
    # Signed by the new key at once; every replica already trusts it.
    token = replicas.token(f"{TD}/fresh-key")
    assert [check(r, token) for r in replicas.all] == [(200, "allowed")] * 3


def test_revocation_on_one_replica_denies_on_every_replica_within_a_second(
    replicas: Replicas,
) -> None:
    web, other = replicas.token(f"{TD}/web"), replicas.token(f"{TD}/orders")
    for replica in replicas.all:
        assert check(replica, web) == (200, "allowed"), replica.name

    replicas.all[1].cli("revoke", "spiffe-id", f"{TD}/web", "--reason", "key-compromise")
    acknowledged = time.monotonic()

    def time_to_deny(replica: Replica) -> float:
        deadline = acknowledged + 10
        while check(replica, web) != (401, "revoked"):
            assert time.monotonic() < deadline, f"{replica.name} never denied the revoked token"
        return time.monotonic() - acknowledged

    with ThreadPoolExecutor(3) as pool:
        latencies = dict(zip(("r1", "r2", "r3"), pool.map(time_to_deny, replicas.all), strict=True))
    print("revocation propagation (s):", {k: round(v, 4) for k, v in latencies.items()})
    assert max(latencies.values()) <= PROPAGATION_LIMIT, latencies
    for replica in replicas.all:
        assert check(replica, other) == (200, "allowed"), "only the revoked ID is denied"
        assert check(replica, web) == (401, "revoked")


def test_a_revoked_transaction_is_refused_on_every_replica_within_a_second(
    replicas: Replicas,
) -> None:
    caller = replicas.token(f"{TD}/checkout")
    bundle = replicas.signer.cli("bundle", "show")
    txn_token = sign_txn_token(replicas.signer.data_dir, bundle, txn_claims(txn="txn-to-revoke"))
    headers = {"txn-token": txn_token}
    for replica in replicas.all:
        assert check(replica, caller, **headers) == (200, "allowed"), replica.name

    replicas.all[2].cli("revoke", "txn", "txn-to-revoke")
    acknowledged = time.monotonic()

    def time_to_deny(replica: Replica) -> float:
        deadline = acknowledged + 10
        while check(replica, caller, **headers) != (401, "revoked"):
            assert time.monotonic() < deadline, f"{replica.name} never refused the transaction"
        return time.monotonic() - acknowledged

    with ThreadPoolExecutor(3) as pool:
        latencies = dict(zip(("r1", "r2", "r3"), pool.map(time_to_deny, replicas.all), strict=True))
    assert max(latencies.values()) <= PROPAGATION_LIMIT, latencies
    for replica in replicas.all:
        assert check(replica, caller) == (200, "allowed"), "only the transaction is refused"


def test_a_replica_without_redis_decides_from_its_last_view_then_fails_closed(
    replicas: Replicas,
) -> None:
    allowed = replicas.token(f"{TD}/billing")
    revoked = replicas.token(f"{TD}/inventory")
    last_minute = replicas.token(f"{TD}/crm")
    replicas.all[2].cli("revoke", "spiffe-id", f"{TD}/inventory")
    for replica in replicas.all:
        wait_for(
            f"{replica.name} to deny inventory", lambda r=replica: check(r, revoked)[1] == "revoked"
        )
    # Revoked an instant before Redis dies: acknowledged, so it must survive the outage.
    replicas.all[1].cli("revoke", "spiffe-id", f"{TD}/crm")
    pid = int(replicas.redis.client().info("server")["process_id"])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    replicas.redis.stop()  # reaps the killed process; the port stays reserved for the restart

    # Within the staleness budget, every replica decides from its last view.
    for replica in replicas.all:
        assert check(replica, allowed) == (200, "allowed"), replica.name
        assert check(replica, revoked) == (401, "revoked"), replica.name
    assert check(replicas.all[1], last_minute) == (401, "revoked")
    wait_for(
        "staleness to pass 1s everywhere", lambda: all(r.staleness() > 1 for r in replicas.all)
    )
    assert time.monotonic() - killed < MAX_STALENESS - 0.5, "too slow to observe the budget"
    for replica in replicas.all:
        assert check(replica, allowed) == (200, "allowed"), replica.name
        assert check(replica, revoked) == (401, "revoked"), replica.name
    print("staleness 1s after losing redis:", [round(r.staleness(), 2) for r in replicas.all])

    # Past it, every check fails closed, allowed or not.
    for replica in replicas.all:
        wait_for(
            f"{replica.name} to fail closed",
            lambda r=replica: check(r, allowed) == (503, "revocations_stale"),
            timeout=MAX_STALENESS + 5,
        )
        assert check(replica, revoked) == (503, "revocations_stale")
    assert time.monotonic() - killed >= MAX_STALENESS - 0.6
    assert all(r.staleness() > MAX_STALENESS for r in replicas.all)

    # Redis back on the same port, from its append-only file: every replica resynchronises.
    replicas.redis.start()
    for replica in replicas.all:
        wait_for(
            f"{replica.name} to resynchronise",
            lambda r=replica: r.staleness() < 1 and check(r, allowed) == (200, "allowed"),
        )
        assert check(replica, revoked) == (401, "revoked"), replica.name
        assert check(replica, last_minute) == (401, "revoked"), replica.name
    assert {f"{TD}/web", f"{TD}/inventory", f"{TD}/crm"} <= replicas.revoked_targets(
        replicas.all[0]
    )


def check_revoked_on_signer(replicas: Replicas) -> bool:
    listed = replicas.signer.gauge("authd_revocations")
    return listed >= len(replicas.revoked_targets(replicas.signer))


def test_a_revoked_spiffe_id_gets_no_new_svid_from_the_signing_replica(
    replicas: Replicas,
) -> None:
    replicas.all[2].cli("revoke", "spiffe-id", f"{TD}/retired")
    wait_for("the signer to see the revocation", lambda: check_revoked_on_signer(replicas))
    refused = authd(
        "jwt", "mint", "--spiffe-id", f"{TD}/retired", "--audience", "authd",
        data_dir=replicas.signer.data_dir, check=False,
    )  # fmt: skip
    assert refused.returncode == 1, "minted a JWT-SVID for a revoked SPIFFE ID"
    refused = authd(
        "x509", "mint", "--spiffe-id", f"{TD}/retired", "--out", str(replicas.workdir / "ret"),
        data_dir=replicas.signer.data_dir, check=False,
    )  # fmt: skip
    assert refused.returncode == 1, "minted an X.509-SVID for a revoked SPIFFE ID"


def test_an_svid_acknowledged_just_before_the_signer_dies_can_still_be_revoked(
    replicas: Replicas,
) -> None:
    signer, revoker = replicas.signer, replicas.all[1]
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    request = admin_pb2.MintX509SVIDRequest(
        spiffe_id=f"{TD}/short-lived", csr=csr.public_bytes(serialization.Encoding.DER)
    )
    with grpc.insecure_channel(f"unix:{signer.data_dir / 'admin.sock'}") as channel:
        serial = admin_pb2_grpc.AdminStub(channel).MintX509SVID(request, timeout=10).serial
    signer.kill9()  # acknowledged: the SVID is out there, valid for an hour
    try:
        done = authd("revoke", "serial", serial, data_dir=revoker.data_dir, check=False)
        assert done.returncode == 0, f"an SVID the CA issued cannot be revoked: {done.stderr}"
        assert serial in replicas.revoked_targets(revoker)
    finally:
        signer.start()


def authorities(replica: Replica, kind: str) -> dict[str, dict[str, object]]:
    shown = json.loads(replica.cli("authority", "show", "--json"))["authorities"]
    return {a["authority_id"]: a for a in shown if a["kind"] == kind}


def key_ids(replica: Replica) -> set[str]:
    """The authority ids (SKIs) of the private keys in the replica's key store."""
    found = set()
    for path in (replica.data_dir / "keys").glob("*.pem"):
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        found.add(ski.digest.hex())
    return found


def test_only_the_rotating_replica_moves_the_authority_timeline(replicas: Replicas) -> None:
    signer, follower = replicas.signer, replicas.all[1]
    before = authorities(signer, "jwt")
    signer.cli("authority", "prepare", "--kind", "jwt")
    signer.cli("authority", "activate", "--kind", "jwt")
    [old] = [a for a, r in before.items() if r["state"] == "active"]
    assert old in key_ids(signer)
    signer.stop()  # from here on only replicas with ca.rotates = false run
    try:
        follower.cli("authority", "taint", "--kind", "jwt", "--id", old)
        follower.cli("authority", "revoke", "--kind", "jwt", "--id", old)
        # A revoked authority is due for pruning, but that is the rotating replica's job:
        # for three rotation checks of the followers, it stays.
        deadline = time.monotonic() + 3 * ROTATION_CHECK_INTERVAL
        while time.monotonic() < deadline:
            assert old in authorities(follower, "jwt"), "a replica with ca.rotates = false pruned"
    finally:
        signer.start()
    # The signer prunes it at start, and its key with it.
    wait_for(
        "the signer to prune the revoked authority", lambda: old not in authorities(signer, "jwt")
    )
    assert old not in key_ids(signer)


def test_a_frozen_redis_never_stalls_a_decision(replicas: Replicas) -> None:
    token = replicas.token(f"{TD}/steady")
    slowest = dict.fromkeys(("r1", "r2", "r3"), 0.0)
    frozen_for = 1.5 * ROTATION_CHECK_INTERVAL  # every replica checks its rotation meanwhile
    replicas.redis.freeze()  # connections open, nothing answers: a partition, not a crash
    thaw = threading.Timer(frozen_for, replicas.redis.thaw)  # also frees a stalled replica
    thaw.start()
    until = time.monotonic() + frozen_for

    def poll(replica: Replica) -> None:  # one thread each: a stall elsewhere hides nothing
        while time.monotonic() < until:
            began = time.monotonic()
            assert check(replica, token) == (200, "allowed"), replica.name
            slowest[replica.name] = max(slowest[replica.name], time.monotonic() - began)

    try:
        with ThreadPoolExecutor(len(replicas.all)) as pool:
            list(pool.map(poll, replicas.all))
    finally:
        thaw.join()
    print("slowest check while redis was frozen (s):", {k: round(v, 3) for k, v in slowest.items()})
    assert max(slowest.values()) < ENVOY_AUTHZ_TIMEOUT, slowest
    for replica in replicas.all:
        wait_for(f"{replica.name} back in step", lambda r=replica: r.staleness() < 1)


def test_kill_9_of_a_replica_mid_burst_loses_no_acknowledged_revocation(
    replicas: Replicas,
) -> None:
    victim, revoker, bystander = replicas.all  # the victim is the signer: it is issuing
    stop = threading.Event()
    revoked: list[str] = []  # acknowledged: `authd revoke` exited 0
    revoke_failures: list[str] = []
    minted: list[str] = []
    numbers = iter(range(1, 1_000_000))  # next() is atomic under the GIL

    def revoke_loop() -> None:
        while not stop.is_set():
            target = f"{TD}/burst/{next(numbers)}"
            done = authd(
                "revoke", "spiffe-id", target, "--reason", "key-compromise",
                data_dir=revoker.data_dir, check=False,
            )  # fmt: skip
            if done.returncode == 0:
                revoked.append(target)
            else:
                revoke_failures.append(done.stderr.strip())

    def mint_loop() -> None:
        while not stop.is_set():
            n = next(numbers)
            out = replicas.workdir / "burst" / str(n)
            done = authd(
                "x509", "mint", "--spiffe-id", f"{TD}/burst/mint-{n}", "--out", str(out),
                data_dir=victim.data_dir, check=False,
            )  # fmt: skip
            if done.returncode == 0:
                leaf = x509.load_pem_x509_certificates((out / "svid.pem").read_bytes())[0]
                minted.append(format(leaf.serial_number, "x"))

    allowed = replicas.token(f"{TD}/payments")
    loops = (revoke_loop, revoke_loop, mint_loop, mint_loop)
    threads = [threading.Thread(target=loop) for loop in loops]
    for thread in threads:
        thread.start()
    killed_after = (0, 0)
    try:
        wait_for("a burst under way", lambda: len(revoked) >= 6 and len(minted) >= 6, 30)
        victim.kill9()  # two mint loops: one of them is almost always mid-request
        killed_after = (len(revoked), len(minted))
        # Revocations go on through the survivors, and they still decide.
        wait_for("revocations after the kill", lambda: len(revoked) >= killed_after[0] + 4, 30)
        assert check(bystander, allowed) == (200, "allowed")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    print(
        f"burst: {len(revoked)} revocations, {len(minted)} X.509-SVIDs; victim killed after "
        f"{killed_after[0]} revocations and {killed_after[1]} SVIDs"
    )
    assert revoke_failures == []

    assert revoker.cli("audit", "verify").startswith("audit log intact")
    assert set(revoked) <= replicas.revoked_targets(revoker)
    audit = json.loads(revoker.cli("audit", "log", "--json"))["records"]
    audited = {r["subject"] for r in audit if r["action"] == "revoke"}
    assert {f"spiffe_id:{target}" for target in revoked} <= audited

    # The victim comes back on the same data directory, in step with everything it missed.
    victim.start()
    assert victim.cli("audit", "verify").startswith("audit log intact")
    stored = len(replicas.revoked_targets(victim))
    for replica in replicas.all:
        wait_for(
            f"{replica.name}'s view to hold every revocation",
            lambda r=replica: r.gauge("authd_revocations") == stored,
        )
    assert [check(r, allowed) for r in replicas.all] == [(200, "allowed")] * 3


def test_a_replica_without_the_ca_keys_prepares_no_authority(replicas: Replicas) -> None:
    # Last in the module: a prepared authority whose key only a follower holds would, once
    # active, leave the signer unable to sign.
    refused = authd(
        "authority", "prepare", "--kind", "x509", data_dir=replicas.all[2].data_dir, check=False
    )
    assert refused.returncode == 1, "a replica with ca.rotates = false made an authority"
    assert len(refused.stderr.strip().splitlines()) == 1

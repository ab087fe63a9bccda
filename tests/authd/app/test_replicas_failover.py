"""Every replica signs, one leads rotation: two `authd run` replicas on one private Redis,
sharing a key-encryption key, both with ``ca.rotates = true``.

The rules: both replicas issue SVIDs that verify against the one bundle; the first to start
leads rotation (fencing token 1). Killing the leader with SIGKILL in the middle of a load of
Workload API fetches (py-spiffe, X.509-SVIDs and JWT-SVIDs) against the other replica fails
no fetch; the survivor takes the lease over once it expires (token 2) and rotates: an
authority it prepares and activates signs the SVIDs re-issued when the old one is tainted.
A write under the dead leader's token is refused by the store, and the old leader,
restarted, follows and signs again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import spiffe
from cryptography import x509

from ca.key_wrap import KeyEncryptionKey
from ca.store import Fenced, RedisStore
from tests.support.redis_server import RedisServer
from tests.support.store_replicas import ALLOW_WORKLOADS_POLICY, Replica, wait_for

LEASE_TTL = 3  # seconds; ca.rotation_lease_ttl of both replicas
MAX_STALENESS = 5
WEB = "spiffe://example.org/web"
AUDIENCE = "orders"


@dataclass
class Cluster:
    workdir: Path
    redis: RedisServer
    r1: Replica
    r2: Replica


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    workdir = Path(tempfile.mkdtemp(prefix="authd-ha-"))  # short: Unix socket paths
    os.chmod(workdir, 0o755)
    (workdir / "policy.yaml").write_text(ALLOW_WORKLOADS_POLICY)
    kek = workdir / "kek"
    fd = os.open(kek, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, KeyEncryptionKey.generate())
    os.close(fd)
    ca_config = f'key_encryption_key = "{kek}"\nrotation_lease_ttl = "{LEASE_TTL}s"\n'
    redis = RedisServer(workdir / "redis", appendonly=True).start()
    r1, r2 = (
        Replica(
            workdir,
            name,
            redis.url,
            rotates=True,
            max_staleness=MAX_STALENESS,
            extra_ca_config=ca_config,
        )
        for name in ("r1", "r2")
    )
    try:
        r1.start()  # the first leader: it makes the authorities
        r2.start()
        yield Cluster(workdir, redis, r1, r2)
    finally:
        for replica in (r1, r2):
            if replica.running:
                replica.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def socket_of(replica: Replica) -> str:
    return f"unix://{replica.data_dir / 'workload.sock'}"


def authority_key_id(certificate: x509.Certificate) -> bytes:
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert aki.value.key_identifier is not None
    return aki.value.key_identifier


@dataclass
class Load:
    """Workload API fetches against one replica, on a thread, until stopped."""

    socket: str
    fetched: int = 0
    failures: list[str] = field(default_factory=list)
    issuers: set[bytes] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with spiffe.WorkloadApiClient(socket_path=self.socket) as client:
                    svid = client.fetch_x509_svid()
                    jwt = client.fetch_jwt_svid(audience={AUDIENCE})
                assert str(svid.spiffe_id) == WEB and str(jwt.spiffe_id) == WEB
                self.issuers.add(authority_key_id(svid.leaf))
                self.fetched += 1
            except Exception as exc:  # every failure is the test's business
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)


def test_killing_the_leader_mid_load_fails_no_fetch_and_rotation_resumes(
    cluster: Cluster,
) -> None:
    r1, r2 = cluster.r1, cluster.r2
    r1.cli("entry", "create", "--spiffe-id", WEB, "--selector", f"unix:uid:{os.getuid()}")
    assert r1.gauge("authd_rotation_leader") == 1 and r1.gauge("authd_rotation_fencing_token") == 1
    assert r2.gauge("authd_rotation_leader") == 0 and r2.gauge("authd_rotation_fencing_token") == 1

    # Both sign: SVIDs from either replica verify against the other's bundle.
    wait_for("r2 to know the entry", lambda: _fetch(r2))
    for signer, verifier in ((r1, r2), (r2, r1)):
        with spiffe.WorkloadApiClient(socket_path=socket_of(signer)) as client:
            svid = client.fetch_x509_svid()
            token = client.fetch_jwt_svid(audience={AUDIENCE}).token
        with spiffe.WorkloadApiClient(socket_path=socket_of(verifier)) as client:
            bundles = client.fetch_x509_bundles()
            jwt_bundles = client.fetch_jwt_bundles()
        roots = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert roots is not None
        issuer_keys = {authority_key_id(svid.leaf)}
        assert issuer_keys <= {
            c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            for c in roots.x509_authorities
        }
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert jwt_bundle is not None
        parsed = spiffe.JwtSvid.parse_and_validate(token, jwt_bundle, {AUDIENCE})
        assert str(parsed.spiffe_id) == WEB

    load = Load(socket_of(r2))
    load.start()
    try:
        wait_for("fetches before the kill", lambda: load.fetched >= 20, timeout=30)
        r1.kill9()
        killed_at = load.fetched
        wait_for(
            "r2 to take the rotation lease over",
            lambda: r2.gauge("authd_rotation_leader") == 1,
            timeout=4 * LEASE_TTL,
        )
        assert r2.gauge("authd_rotation_fencing_token") == 2
        # Rotation resumes under the new leader: its authority signs what comes next.
        before = set(load.issuers)
        r2.cli("authority", "prepare", "--kind", "x509")
        r2.cli("authority", "activate", "--kind", "x509")
        # Tainting the old authority has every SVID it signed re-issued now, by r2.
        shown = json.loads(r2.cli("authority", "show", "--json"))["authorities"]
        (retired,) = [a for a in shown if a["kind"] == "x509" and a["state"] == "retired"]
        r2.cli("authority", "taint", "--kind", "x509", "--id", retired["authority_id"])
        wait_for("an SVID from the new authority", lambda: load.issuers - before, timeout=30)
        wait_for("fetches after the rotation", lambda: load.fetched >= killed_at + 40, timeout=60)
    finally:
        load.stop()
    assert load.failures == []
    assert load.fetched > killed_at

    # The dead leader's term is over: a write under its token is refused by the store.
    store = RedisStore(cluster.redis.url)
    try:
        with pytest.raises(Fenced, match="token 1 is stale"):
            store.save_authorities([], sequence="bundle", fence=1)
        lease, highest = store.rotation_lease().current()
        assert lease is not None and highest == 2 and lease.token == 2
    finally:
        store.close()

    # Restarted, the old leader follows (the lease is r2's) and signs with the new authority.
    r1.start()
    assert r1.gauge("authd_rotation_leader") == 0
    assert r1.gauge("authd_rotation_fencing_token") == 2
    with spiffe.WorkloadApiClient(socket_path=socket_of(r1)) as client:
        svid = client.fetch_x509_svid()
    assert authority_key_id(svid.leaf) in load.issuers - before
    assert r2.gauge("authd_rotation_leader") == 1


def _fetch(replica: Replica) -> bool:
    try:
        with spiffe.WorkloadApiClient(socket_path=socket_of(replica)) as client:
            client.fetch_x509_svid(timeout=2)
    except Exception:
        return False
    return True

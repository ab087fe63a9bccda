"""With node agents, the server's own Workload API serves only the entries parented to it."""

from __future__ import annotations

from pathlib import Path

from authd.workload.registry import EntryRegistry
from authd.workload.svids import SvidProvider
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.keys import KeyStore
from ca.spiffe_id import TrustDomain
from ca.store import RegistrationEntry, Selector, SQLiteStore

UID = Selector("unix", "uid:1000")


def test_entries_parented_to_an_agent_are_not_served_on_the_servers_socket(
    tmp_path: Path,
) -> None:
    clock = FakeClock(1_790_000_000)
    store = SQLiteStore(tmp_path / "s.db")
    ca = CertificateAuthority(
        trust_domain=TrustDomain("example.org"),
        store=store,
        keystore=KeyStore(tmp_path / "keys"),
        clock=clock,
    )
    try:
        for entry_id, parent in (
            ("local", "spiffe://example.org/authd"),
            ("remote", "spiffe://example.org/node/a"),
        ):
            store.create_entry(
                RegistrationEntry(entry_id, f"spiffe://example.org/{entry_id}", parent, (UID,))
            )
        registry = EntryRegistry(store, clock)
        everything = SvidProvider(ca, registry, clock)
        own = SvidProvider(ca, registry, clock, parent_id="spiffe://example.org/authd")

        assert sorted(e.entry_id for e in everything.entries_for([UID])) == ["local", "remote"]
        assert [e.entry_id for e in own.entries_for([UID])] == ["local"]
    finally:
        ca.close()
        store.close()

"""What the agent fetches and when it renews (SPIRE's agent ``manager``).

Every ``agent.sync_interval`` seconds: renew the agent SVID once half its life has passed,
fetch this agent's entries and the bundle, and have every SVID that is due signed (no SVID,
past its renewal time, or its entry changed). Keys are made here; the server only sees CSRs.
While the server cannot be reached the cache keeps serving, and the next round that reaches
it renews everything overdue at once. Network calls run in a worker thread; the cache is
changed only on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from cryptography import x509

from authd.agent.cache import AgentCache
from authd.agent.client import (
    AgentDenied,
    AgentRefused,
    NodeClient,
    ServerUnavailable,
    make_csr,
)
from authd.agent.identity import AgentIdentity
from authd.api.authd.agent.v1 import node_pb2
from authd.ports.identity_source import WorkloadX509Svid
from ca.bundle import TrustBundle
from ca.clock import Clock
from ca.errors import CAError
from ca.keys import KeyType, PrivateKey
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import RegistrationEntry, Selector

__all__ = ["AgentSync", "entry_from_proto"]

log = logging.getLogger("authd.agent")


class AgentSync:
    def __init__(
        self,
        client: NodeClient,
        cache: AgentCache,
        identity: AgentIdentity,
        clock: Clock,
        *,
        trust_domain: TrustDomain,
        save_identity: Callable[[AgentIdentity], None],
        reattest: Callable[[], AgentIdentity] | None = None,
        key_type: KeyType = KeyType.EC_P256,
    ) -> None:
        """``reattest``: attest anew once the server denies this agent (x509pop can; a join
        token cannot, it was used)."""
        self._reattest = reattest
        self._client = client
        self._cache = cache
        self.identity = identity
        self._clock = clock
        self._trust_domain = trust_domain
        self._save_identity = save_identity
        self._key_type = key_type
        cache.jwt_minter = self._mint_jwt
        self.reachable = True
        self.refused = ""
        self.last_sync = 0.0

    async def run(self, interval: float, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.sync_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=interval)

    async def sync_once(self) -> bool:
        """One round; True if it reached the server. Never raises for the server's sake."""
        try:
            await self._round()
        except ServerUnavailable as exc:
            if self.reachable:
                log.warning("server unreachable (%s); serving from the cache", exc)
            self.reachable = False
            return False
        except AgentDenied as exc:
            await self._denied(str(exc))
            return False
        except AgentRefused as exc:
            if self.refused != str(exc):
                log.error("the server refuses this agent: %s", exc)
            self.refused = str(exc)
            return False
        except Exception:  # e.g. an answer that does not parse: keep serving, retry next round
            log.exception("sync with the server failed; serving from the cache")
            return False
        if not self.reachable:
            log.info("server reachable again; renewed what was due")
        self.reachable, self.refused, self.last_sync = True, "", self._clock.now()
        return True

    def _mint_jwt(self, entry_id: str, audience: list[str]) -> str:
        """In a worker thread, for the Workload API: the server mints, with our current SVID."""
        creds = self.identity.credentials(self._cache.bundle.to_pem())
        return self._client.mint_jwt(creds, entry_id, audience)

    async def _denied(self, why: str) -> None:
        """Evicted, banned or unknown: stop serving what the server no longer vouches for."""
        if self.refused != why:
            log.error("the server refuses this agent: %s", why)
        self.refused = why
        dropped = self._cache.svid_count
        self._cache.set_entries([])
        if dropped:
            log.error("dropped %d cached SVIDs: the server no longer vouches for them", dropped)
        if self._reattest is None:
            return
        try:
            identity = await asyncio.to_thread(self._reattest)
        except Exception as exc:  # the attestation's own refusal; retried next round
            log.error("attesting again failed: %s", exc)
            return
        await asyncio.to_thread(self._save_identity, identity)
        self.identity = identity
        log.info("attested again as %s", identity.spiffe_id)

    async def _round(self) -> None:
        if self._clock.now() >= self.identity.renew_at:
            await self._renew_agent()
        creds = self.identity.credentials(self._cache.bundle.to_pem())
        fetched = await asyncio.to_thread(self._client.fetch_entries, creds)
        entries = [entry_from_proto(e) for e in fetched.entries]
        self._cache.set_bundle(TrustBundle.parse(fetched.bundle_json, self._trust_domain))
        self._cache.set_entries(entries)
        self._cache.set_federated(_foreign_bundles(fetched.federated_bundles))
        self._cache.set_distrusted(
            [x509.load_der_x509_certificate(der) for der in fetched.distrusted_authorities]
        )
        due = self._cache.due()
        if not due:
            return
        started = time.monotonic()
        keys, requests = await asyncio.to_thread(self._csrs, due)
        signed = await asyncio.to_thread(self._client.sign, creds, requests)
        for entry_id, why in signed.refused.items():
            log.warning("the server refused an SVID for entry %s: %s", entry_id, why)
        by_id = {e.entry_id: e for e in due}
        svids = []
        for item in signed.svids:
            entry = by_id.get(item.entry_id)
            if entry is None:
                continue
            chain = tuple(x509.load_der_x509_certificate(der) for der in item.cert_chain)
            issued_at = chain[0].not_valid_before_utc.timestamp()
            svids.append(
                WorkloadX509Svid(
                    entry_id=entry.entry_id,
                    entry_revision=entry.revision,
                    spiffe_id=SpiffeId.parse(entry.spiffe_id),
                    hint=entry.hint,
                    chain=chain,
                    private_key=keys[entry.entry_id],
                    authority_id="",
                    issued_at=issued_at,
                    expires_at=float(item.expires_at),
                    rotate_at=self._cache.renewal_time(self._clock.now(), item.expires_at),
                )
            )
        self._cache.put(svids)
        log.info("%d SVIDs signed in %.3f s", len(svids), time.monotonic() - started)

    def _csrs(
        self, entries: list[RegistrationEntry]
    ) -> tuple[dict[str, PrivateKey], list[tuple[str, bytes]]]:
        keys = {e.entry_id: self._key_type.generate() for e in entries}
        return keys, [(e.entry_id, make_csr(keys[e.entry_id], e.spiffe_id)) for e in entries]

    async def _renew_agent(self) -> None:
        key = self._key_type.generate()
        csr = make_csr(key)
        creds = self.identity.credentials(self._cache.bundle.to_pem())
        issued = await asyncio.to_thread(self._client.renew, creds, csr)
        identity = AgentIdentity(
            SpiffeId.parse(issued.spiffe_id),
            issued.chain,
            key,
            issued.bundle_json,
            self._clock.now(),
        )
        await asyncio.to_thread(self._save_identity, identity)
        self.identity = identity
        log.info("agent SVID renewed: serial %x", issued.chain[0].serial_number)


def _foreign_bundles(sent: Mapping[str, str]) -> dict[str, TrustBundle]:
    """The foreign bundles the server sent; one that does not parse is skipped, loudly."""
    bundles: dict[str, TrustBundle] = {}
    for name, text in sent.items():
        try:
            bundles[name] = TrustBundle.parse(text, TrustDomain.parse(name))
        except (CAError, ValueError) as exc:
            log.warning("the server's bundle of %s is unreadable, skipped: %s", name, exc)
    return bundles


def entry_from_proto(entry: node_pb2.Entry) -> RegistrationEntry:
    selectors = tuple(Selector(*text.split(":", 1)) for text in entry.selectors if ":" in text)
    return RegistrationEntry(
        entry_id=entry.entry_id,
        spiffe_id=entry.spiffe_id,
        parent_id=entry.parent_id,
        selectors=selectors,
        x509_svid_ttl=entry.x509_svid_ttl,
        jwt_svid_ttl=entry.jwt_svid_ttl,
        dns_names=tuple(entry.dns_names),
        federates_with=tuple(entry.federates_with),
        hint=entry.hint,
        expires_at=entry.expires_at,
        revision=entry.revision,
        created_at=entry.created_at,
    )

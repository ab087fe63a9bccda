"""The server's side of node agents: attestation, agent SVIDs, entries, CSR signing, eviction.

``NodeAuthority`` is what the node API (``authd.nodeapi``) and the admin API ask. It holds no
socket: the adapters hand it what the peer sent and translate what it answers or raises
(``NodeRefused``: permission denied; ``ca.errors.InvalidRequest``: a malformed request).
Every call may wait on the store, so adapters call it from a worker thread.

An agent's SPIFFE ID is ``spiffe://<td>/authd/agent/<method>/<id>``. Its record in the store
says how it attested, its node alias (from the join token) and whether it is banned. An
entry belongs to an agent when its ``parent_id`` is the agent's ID or its alias; the agent may
get SVIDs only for those, and only for the SPIFFE ID the entry names, which is checked
again on every CSR. Eviction and banning revoke, through the ``Revoker``, every unexpired
SVID the server signed at that agent's request (its own and its workloads'), so ext_authz
refuses them at once, and the agent can no longer renew or fetch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from authd.nodes import join_tokens, x509pop
from ca.certificate_authority import CertificateAuthority
from ca.clock import Clock
from ca.errors import AlreadyRevoked, InvalidRequest, InvalidSpiffeId
from ca.jwtsvid import JwtSvid
from ca.keys import PublicKey, check_public_key
from ca.revoker import Revoker
from ca.spiffe_id import SpiffeId
from ca.store import AgentRecord, JoinTokenRecord, NotFound, RegistrationEntry, Store
from ca.x509svid import X509Svid, load_csr, public_key_of_csr

__all__ = ["AGENT_PATH", "NodeAuthority", "NodeRefused", "SignOutcome"]

log = logging.getLogger(__name__)

AGENT_PATH = "/authd/agent/"
MAX_SIGN_REQUESTS = 1000  # CSRs in one SignX509Svids call
MAX_AUDIENCES = 16
MAX_AUDIENCE_LENGTH = 512
KEY_COMPROMISE = "keyCompromise"


class NodeRefused(Exception):
    """The agent may not do this (unknown, evicted, banned, not its entry, bad proof)."""


@dataclass(frozen=True, slots=True)
class SignOutcome:
    signed: list[tuple[str, X509Svid]]
    refused: dict[str, str]


class NodeAuthority:
    def __init__(
        self,
        ca: CertificateAuthority,
        store: Store,
        revocations: Revoker,
        clock: Clock,
        *,
        agent_svid_ttl: int,
        join_token_ttl: int,
        x509pop_roots: Sequence[x509.Certificate] = (),
    ) -> None:
        self._ca = ca
        self._store = store
        self._revocations = revocations
        self._clock = clock
        self._agent_svid_ttl = agent_svid_ttl
        self._join_token_ttl = join_token_ttl
        self._x509pop_roots = tuple(x509pop_roots)

    # --- admin --------------------------------------------------------------------------

    def create_join_token(self, node_id: str = "", ttl: int = 0) -> tuple[str, int]:
        """A new single-use token and when it expires; ``node_id`` is the node's alias."""
        if node_id:
            self._own_id(node_id, "the join token's SPIFFE ID")
        if ttl < 0:
            raise InvalidRequest("ttl must not be negative")
        now = int(self._clock.now())
        expires_at = now + (ttl or self._join_token_ttl)
        token = join_tokens.new_token()
        record = JoinTokenRecord(join_tokens.hash_token(token), node_id, expires_at, now)
        self._store.save_join_token(record)
        return token, expires_at

    def list_agents(self) -> list[AgentRecord]:
        return self._store.list_agents()

    def evict(self, agent_id: str, *, actor: str) -> int:
        """Forget the agent (it may attest again, if its method allows) and revoke its SVIDs."""
        # Forgotten first, so it cannot renew between the revocations and the deletion.
        self._store.delete_agent(agent_id)  # NotFound for an unknown agent
        revoked = self._revoke_issued(agent_id, actor)
        log.info("agent %s evicted by %s; %d SVIDs revoked", agent_id, actor, revoked)
        return revoked

    def ban(self, agent_id: str, *, actor: str) -> int:
        """Keep the agent, banned (it may never attest again), and revoke its SVIDs."""
        record = self._store.get_agent(agent_id)
        self._store.save_agent(_replace(record, banned=True))
        revoked = self._revoke_issued(agent_id, actor)
        log.info("agent %s banned by %s; %d SVIDs revoked", agent_id, actor, revoked)
        return revoked

    def _revoke_issued(self, agent_id: str, actor: str) -> int:
        self._ca.issuance_log.flush()
        now = self._clock.now()
        requester = _requester(agent_id)
        revoked = 0
        for issuance in self._store.list_issuances(kind="x509"):
            if issuance.requester != requester or issuance.not_after <= now:
                continue
            try:
                self._revocations.revoke(
                    "serial",
                    issuance.serial,
                    reason=KEY_COMPROMISE,
                    note=f"agent {agent_id} removed",
                    actor=actor,
                )
            except AlreadyRevoked:
                continue
            revoked += 1
        return revoked

    # --- attestation --------------------------------------------------------------------

    def attest_join_token(self, token: str, csr: bytes) -> tuple[AgentRecord, X509Svid]:
        if not join_tokens.valid_token(token):
            raise NodeRefused("join token refused: not a join token")
        public_key = public_key_of_csr(csr)  # before the token is spent
        try:
            record = self._store.take_join_token(join_tokens.hash_token(token))
        except NotFound:
            raise NodeRefused("join token refused: unknown, expired or used already") from None
        if record.expires_at <= self._clock.now():
            raise NodeRefused("join token refused: unknown, expired or used already")
        agent_id = self._agent_id(join_tokens.METHOD, token)
        return self._admit(agent_id, join_tokens.METHOD, record.node_id, public_key)

    def x509pop_leaf(self, chain_der: Sequence[bytes]) -> x509.Certificate:
        """The node certificate, once it chains to the x509pop roots (then send a nonce)."""
        if not self._x509pop_roots:
            raise NodeRefused("x509pop attestation is not configured (agent.x509pop_ca_path)")
        try:
            return x509pop.verify_chain(chain_der, self._x509pop_roots, self._clock.now())
        except x509pop.X509PopError as exc:
            raise NodeRefused(f"x509pop refused: {exc}") from None

    def attest_x509pop(
        self, leaf: x509.Certificate, nonce: bytes, signature: bytes, csr: bytes
    ) -> tuple[AgentRecord, X509Svid]:
        try:
            x509pop.verify_response(leaf, nonce, signature)
        except x509pop.X509PopError as exc:
            raise NodeRefused(f"x509pop refused: {exc}") from None
        public_key = public_key_of_csr(csr)
        agent_id = self._agent_id(x509pop.METHOD, x509pop.agent_path(leaf))
        return self._admit(agent_id, x509pop.METHOD, "", public_key)

    def _admit(
        self, agent_id: SpiffeId, method: str, node_id: str, public_key: object
    ) -> tuple[AgentRecord, X509Svid]:
        try:
            known: AgentRecord | None = self._store.get_agent(str(agent_id))
        except NotFound:
            known = None
        if known is not None and known.banned:
            raise NodeRefused(f"agent {agent_id} is banned")
        svid = self._sign_agent(agent_id, public_key)
        record = AgentRecord(
            agent_id=str(agent_id),
            method=method,
            node_id=node_id or (known.node_id if known else ""),
            serial=svid.serial,
            attested_at=int(self._clock.now()),
            expires_at=svid.expires_at,
        )
        self._store.save_agent(record)
        log.info("agent %s attested (%s)", agent_id, method)
        return record, svid

    # --- the node API, for an authenticated agent ---------------------------------------

    def authenticate(self, chain: Sequence[x509.Certificate] | None) -> AgentRecord:
        """The agent presenting ``chain`` (its SVID), unless unknown, evicted or banned."""
        if not chain:
            raise NodeRefused("an agent SVID is required")
        try:
            spiffe_id = self._ca.verify_x509_svid(chain)
        except Exception as exc:  # any verification failure is a refusal, never a crash
            raise NodeRefused(f"agent SVID refused: {exc}") from None
        if not spiffe_id.path.startswith(AGENT_PATH):
            raise NodeRefused(f"{spiffe_id} is not an agent")
        serial = format(chain[0].serial_number, "x")
        if self._revocations.view.contains("serial", serial):
            raise NodeRefused(f"agent {spiffe_id}: its SVID is revoked")
        try:
            record = self._store.get_agent(str(spiffe_id))
        except NotFound:
            raise NodeRefused(f"agent {spiffe_id} is not attested (evicted?)") from None
        if record.banned:
            raise NodeRefused(f"agent {spiffe_id} is banned")
        return record

    def renew(self, agent: AgentRecord, csr: bytes) -> X509Svid:
        svid = self._sign_agent(SpiffeId.parse(agent.agent_id), public_key_of_csr(csr))
        self._store.save_agent(_replace(agent, serial=svid.serial, expires_at=svid.expires_at))
        return svid

    def entries(self, agent: AgentRecord) -> list[RegistrationEntry]:
        """The entries whose parent is the agent or its alias, unexpired and not revoked."""
        parents = [agent.agent_id] + ([agent.node_id] if agent.node_id else [])
        now = self._clock.now()
        found: dict[str, RegistrationEntry] = {}
        for parent in parents:
            for entry in self._store.list_entries(parent_id=parent):
                if entry.expires_at and entry.expires_at <= now:
                    continue
                if self._revocations.blocks_issuance(entry.spiffe_id, entry.entry_id):
                    continue
                found[entry.entry_id] = entry
        return sorted(found.values(), key=lambda e: (e.created_at, e.entry_id))

    def sign(self, agent: AgentRecord, requests: Sequence[tuple[str, bytes]]) -> SignOutcome:
        """SVIDs for the agent's entries; each CSR must name exactly its entry's SPIFFE ID."""
        if len(requests) > MAX_SIGN_REQUESTS:
            raise InvalidRequest(f"at most {MAX_SIGN_REQUESTS} CSRs per call")
        mine = {e.entry_id: e for e in self.entries(agent)}
        signed: list[tuple[str, X509Svid]] = []
        refused: dict[str, str] = {}
        for entry_id, csr in requests:
            entry = mine.get(entry_id)
            if entry is None:
                refused[entry_id] = "not an entry of this agent"
                continue
            try:
                request = load_csr(csr)
                named = _csr_spiffe_id(request)
                if named != entry.spiffe_id:
                    refused[entry_id] = f"the CSR names {named or 'no SPIFFE ID'}, not the entry's"
                    continue
                svid = self._ca.sign_x509_svid(
                    _public_key(request),
                    spiffe_id=SpiffeId.parse(entry.spiffe_id),
                    dns_names=entry.dns_names,
                    ttl=entry.x509_svid_ttl or None,
                    requester=_requester(agent.agent_id),
                )
            except InvalidRequest as exc:
                refused[entry_id] = str(exc)
                continue
            signed.append((entry_id, svid))
        if signed:
            self._ca.issuance_log.flush()  # revocable before it leaves the server
        return SignOutcome(signed, refused)

    def distrusted_authorities(self) -> list[bytes]:
        """The X.509 authorities tainted or revoked (DER): agents re-issue what they signed."""
        return [
            r.certificate_der
            for r in self._ca.authorities()
            if r.kind == "x509" and (r.tainted or r.revoked)
        ]

    def mint_jwt(self, agent: AgentRecord, entry_id: str, audience: Sequence[str]) -> JwtSvid:
        """A JWT-SVID of one of the agent's entries, for ``audience``."""
        if not audience or len(audience) > MAX_AUDIENCES:
            raise InvalidRequest(f"between 1 and {MAX_AUDIENCES} audiences")
        if any(not a or len(a) > MAX_AUDIENCE_LENGTH for a in audience):
            raise InvalidRequest(f"each audience 1 to {MAX_AUDIENCE_LENGTH} characters")
        entry = next((e for e in self.entries(agent) if e.entry_id == entry_id), None)
        if entry is None:
            raise NodeRefused(f"entry {entry_id[:64]!r} is not an entry of this agent")
        return self._ca.mint_jwt_svid(
            spiffe_id=SpiffeId.parse(entry.spiffe_id),
            audience=list(audience),
            ttl=entry.jwt_svid_ttl or None,
        )

    # --- helpers ------------------------------------------------------------------------

    def _sign_agent(self, agent_id: SpiffeId, public_key: object) -> X509Svid:
        svid = self._ca.sign_x509_svid(
            public_key,  # type: ignore[arg-type]
            spiffe_id=agent_id,
            ttl=self._agent_svid_ttl,
            requester=_requester(str(agent_id)),
        )
        self._ca.issuance_log.flush()
        return svid

    def _agent_id(self, method: str, path: str) -> SpiffeId:
        return self._ca.trust_domain.spiffe_id(f"{AGENT_PATH}{method}/{path}")

    def _own_id(self, text: str, what: str) -> SpiffeId:
        try:
            spiffe_id = SpiffeId.parse(text)
        except InvalidSpiffeId as exc:
            raise InvalidRequest(f"{what}: {exc}") from None
        if not spiffe_id.member_of(self._ca.trust_domain) or not spiffe_id.is_workload:
            raise InvalidRequest(f"{what} must be a path in trust domain {self._ca.trust_domain}")
        return spiffe_id


def _requester(agent_id: str) -> str:
    return f"agent:{agent_id}"


def _csr_spiffe_id(request: x509.CertificateSigningRequest) -> str:
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ""
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 else ""


def _public_key(request: x509.CertificateSigningRequest) -> PublicKey:
    """The key of a CSR ``load_csr`` has checked (its signature: proof of possession)."""
    try:
        return check_public_key(request.public_key())
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"CSR public key is not usable: {exc}") from None


def _replace(record: AgentRecord, **changes: object) -> AgentRecord:
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]

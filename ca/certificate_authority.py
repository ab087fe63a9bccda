"""The certificate authority of one trust domain: authorities, issuance, the bundle.

It joins the pieces that each do one thing: the key store holds keys, the store persists the
authority timeline and the issuance log, ``ca.rotation`` decides when to rotate, the
templates say what a certificate contains. Time always comes from the injected clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca import rotation
from ca.bundle import TrustBundle
from ca.clock import Clock
from ca.errors import InvalidRequest
from ca.issuance_log import IssuanceLog
from ca.jwtsvid import JwtSvid, mint_jwt_svid, verify_jwt_svid
from ca.keys import KeyStore, KeyType, PrivateKey, PublicKey, key_type_of, signature_hash
from ca.signers import JwtAuthority, X509Authority
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import AuthorityRecord, IssuanceRecord, NotFound, Store
from ca.templates import authority_key_id_of, signing_certificate
from ca.x509svid import (
    X509Svid,
    check_dns_names,
    public_key_of_csr,
    random_serial,
    sign_x509_svid,
    verify_x509_svid,
)

BUNDLE_SEQUENCE = "bundle"
DEFAULT_SUBJECT = x509.Name.from_rfc4514_string("O=authd")


@dataclass(frozen=True, slots=True)
class CASettings:
    """The knobs of the CA; defaults follow SPIRE (CA 24h, X.509-SVID 1h, JWT-SVID 5m)."""

    key_type: KeyType = KeyType.EC_P256
    jwt_key_type: KeyType = KeyType.EC_P256
    ca_ttl: int = 24 * 3600
    x509_svid_ttl: int = 3600
    jwt_svid_ttl: int = 300
    subject: x509.Name = DEFAULT_SUBJECT
    refresh_hint: int = 300

    @property
    def max_svid_ttl(self) -> int:
        """An SVID may live at most half an authority's life, so rotation can outrun it."""
        return self.ca_ttl // 2


@dataclass(frozen=True, slots=True)
class UpstreamAuthority:
    """An upstream CA that signs our X.509 authorities as intermediates."""

    certificate: x509.Certificate
    key: PrivateKey
    roots: tuple[x509.Certificate, ...]

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """Certificates between our authority and a root: the upstream cert unless it is a root."""
        return () if self.certificate in self.roots else (self.certificate,)


class CertificateAuthority:
    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        store: Store,
        keystore: KeyStore,
        clock: Clock,
        settings: CASettings | None = None,
        upstream: UpstreamAuthority | None = None,
        rotates: bool = True,
        notify: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.store = store
        self.keystore = keystore
        self.clock = clock
        self.settings = settings or CASettings()
        if len(self.settings.subject) == 0:
            raise InvalidRequest("the CA subject must not be empty (RFC 5280 issuer name)")
        self.upstream = upstream
        self._lock = threading.RLock()
        self._x509: X509Authority | None = None
        self._x509_live: tuple[X509Authority, ...] = ()
        self._jwt: JwtAuthority | None = None
        self._bundle = TrustBundle(trust_domain)
        self._listeners: list[Callable[[], None]] = []
        self._dispatch = notify or (lambda listener: listener())  # e.g. onto the serving loop
        self.issuance_log = IssuanceLog(store)
        # With several replicas on one store, exactly one rotates; the others follow.
        self.rotates = rotates
        if rotates:
            self.rotate()
            if self._x509 is None or self._jwt is None:
                # The rotating replica is the CA: it must hold its active authorities' keys.
                for record in self.store.list_authorities():
                    if record.state == rotation.ACTIVE and not record.revoked:
                        self.keystore.load(record.key_ref)  # raises, naming the missing key
        else:
            self._load()

    def close(self) -> None:
        """Write out the issuance log; the store stays open (it belongs to the caller)."""
        self.issuance_log.close()

    # --- the timeline -------------------------------------------------------------------

    def rotate(self) -> bool:
        """Bring both timelines up to date with the clock; True if anything changed.

        Only the rotating replica moves the timeline (it holds the keys); the others follow.
        """
        if not self.rotates:
            return False
        with self._lock:
            now = self.clock.now()
            changed = False
            for kind in ("x509", "jwt"):
                plan = rotation.plan_rotation(self.store.list_authorities(kind), now)
                if not plan.is_empty:
                    # The sequence first: a replica that reloads on the authority change
                    # must already read the sequence that goes with it.
                    if plan.changes_bundle:
                        self.store.next_sequence(BUNDLE_SEQUENCE)
                    self._apply(kind, plan, now)
                    changed = True
            if changed or self._x509 is None:
                self._load()
            if changed:
                self._notify()
            return changed

    def reload(self) -> None:
        """Re-read the authorities from the store (another replica changed them)."""
        with self._lock:
            self._load()
        self._notify()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the authorities or the bundle."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            self._dispatch(listener)

    # --- operator-driven rotation (SPIRE's `localauthority` commands) ---------------------

    def _record(self, authority_id: str) -> AuthorityRecord:
        try:
            return self.store.get_authority(authority_id)
        except NotFound:
            raise InvalidRequest(f"no authority {authority_id!r}") from None

    def _changed(self, kind: str, updates: Sequence[AuthorityRecord], action: str) -> None:
        self.store.next_sequence(BUNDLE_SEQUENCE)  # before the change other replicas follow
        self.store.save_authorities(updates)
        for record in updates:
            self._audit(f"authority.{action}" if action else f"authority.{record.state}", record)
        self._load()
        self._notify()

    def _require_rotating(self) -> None:
        if not self.rotates:
            raise InvalidRequest(
                "this replica does not rotate authorities (ca.rotates = false): prepare and "
                "activate on the replica that holds the CA keys (taint and revoke work anywhere)"
            )

    def prepare_authority(self, kind: str) -> AuthorityRecord:
        """Prepare the next authority of ``kind`` now (it enters the bundle at once)."""
        self._require_rotating()
        with self._lock:
            if kind not in ("x509", "jwt"):
                raise InvalidRequest(f"authority kind must be x509 or jwt, not {kind!r}")
            if any(r.state == rotation.PREPARED for r in self.store.list_authorities(kind)):
                raise InvalidRequest(f"a prepared {kind} authority already exists")
            record = self._new_authority(kind, rotation.PREPARED, self.clock.now())
            self._changed(kind, [record], "")
            return record

    def activate_authority(self, kind: str) -> AuthorityRecord:
        """Make the prepared authority of ``kind`` sign now; the active one is retired."""
        self._require_rotating()
        with self._lock:
            records = self.store.list_authorities(kind)
            prepared = [r for r in records if r.state == rotation.PREPARED]
            if not prepared:
                raise InvalidRequest(f"no prepared {kind} authority to activate; prepare one first")
            updates = [replace(prepared[-1], state=rotation.ACTIVE)]
            updates += [
                replace(r, state=rotation.RETIRED) for r in records if r.state == rotation.ACTIVE
            ]
            self._changed(kind, updates, "")
            return updates[0]

    def taint_authority(self, authority_id: str) -> AuthorityRecord:
        """Mark a retired authority tainted: everything it signed is re-issued at once."""
        with self._lock:
            record = self._record(authority_id)
            if record.state != rotation.RETIRED:
                raise InvalidRequest(
                    f"only a retired authority can be tainted; {authority_id} is {record.state}"
                    " (activate another one first)"
                )
            if record.tainted:
                raise InvalidRequest(f"authority {authority_id} is already tainted")
            tainted = replace(record, tainted=True)
            self._changed(record.kind, [tainted], "tainted")
            return tainted

    def revoke_authority(self, authority_id: str) -> AuthorityRecord:
        """Remove a tainted authority from the bundle: what it signed is no longer trusted."""
        with self._lock:
            record = self._record(authority_id)
            if not record.tainted:
                raise InvalidRequest(
                    f"authority {authority_id} must be tainted before it is revoked, so that "
                    "what it signed is re-issued first"
                )
            revoked = replace(record, revoked=True)
            self._changed(record.kind, [revoked], "revoked")
            return revoked

    def _apply(self, kind: str, plan: rotation.RotationPlan, now: float) -> None:
        records = {r.authority_id: r for r in self.store.list_authorities(kind)}
        updates: list[AuthorityRecord] = []
        if plan.create_active or plan.prepare:
            state = rotation.ACTIVE if plan.create_active else rotation.PREPARED
            updates.append(self._new_authority(kind, state, now))
        if plan.activate:
            updates.append(replace(records[plan.activate], state=rotation.ACTIVE))
        updates.extend(replace(records[a], state=rotation.RETIRED) for a in plan.retire)
        self.store.save_authorities(updates)
        for record in updates:
            self._audit(f"authority.{record.state}", record)
        for authority_id in plan.prune:
            record = records[authority_id]
            self.store.delete_authority(authority_id)
            self.keystore.delete(record.key_ref)
            self._audit("authority.pruned", record)

    def _audit(self, action: str, record: AuthorityRecord) -> None:
        self.store.append_audit(
            time=int(self.clock.now()),
            actor="authd",
            action=action,
            subject=record.authority_id,
            details={"kind": record.kind, "not_after": record.not_after},
        )

    def _new_authority(self, kind: str, state: str, now: float) -> AuthorityRecord:
        key_type = self.settings.key_type if kind == "x509" else self.settings.jwt_key_type
        key_ref, key = self.keystore.create(key_type, prefix=kind)
        public_key = key.public_key()
        spki = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        not_before = int(now)
        not_after = not_before + self.settings.ca_ttl
        certificate_der = b""
        chain: tuple[bytes, ...] = ()
        if kind == "x509":
            certificate = self._sign_authority_certificate(key, not_before, not_after)
            not_after = int(certificate.not_valid_after_utc.timestamp())
            certificate_der = certificate.public_bytes(serialization.Encoding.DER)
            if self.upstream is not None:
                chain = tuple(
                    c.public_bytes(serialization.Encoding.DER) for c in self.upstream.chain
                )
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()
        return AuthorityRecord(
            authority_id=ski,
            kind=kind,
            state=state,
            key_type=key_type_of(key),
            key_ref=key_ref,
            public_key_der=spki,
            certificate_der=certificate_der,
            upstream_chain_der=chain,
            not_before=not_before,
            not_after=not_after,
            created_at=not_before,
        )

    def _sign_authority_certificate(
        self, key: PrivateKey, not_before: int, not_after: int
    ) -> x509.Certificate:
        upstream = self.upstream
        if upstream is not None:
            not_after = min(not_after, int(upstream.certificate.not_valid_after_utc.timestamp()))
        builder = signing_certificate(
            trust_domain=self.trust_domain,
            subject=self.settings.subject,
            public_key=key.public_key(),
            issuer=None if upstream is None else upstream.certificate.subject,
            issuer_key_id=None if upstream is None else authority_key_id_of(upstream.certificate),
            serial=random_serial(),
            not_before=not_before,
            not_after=not_after,
        )
        signer = key if upstream is None else upstream.key
        return builder.sign(signer, signature_hash(signer))

    def _load(self) -> None:
        """Rebuild the in-memory signers and bundle from the persisted timeline.

        The bundle needs only the records. Signing needs the private keys, which stay in
        this replica's key store: a replica without them (a decision point sharing the
        store with the CA replica) serves the bundle and verifies, but does not sign.
        """
        x509_records = self.store.list_authorities("x509")
        jwt_records = self.store.list_authorities("jwt")
        roots: list[x509.Certificate] = []
        live: list[X509Authority] = []
        self._x509 = self._jwt = None
        for record in x509_records:
            if record.revoked:
                continue
            certificate = x509.load_der_x509_certificate(record.certificate_der)
            roots.append(certificate)
            key = self.keystore.load_if_present(record.key_ref)
            if key is None:
                continue
            authority = X509Authority(
                record,
                key,
                certificate,
                tuple(x509.load_der_x509_certificate(d) for d in record.upstream_chain_der),
            )
            live.append(authority)
            if record.state == rotation.ACTIVE:
                self._x509 = authority
        self._x509_live = tuple(live)
        jwt_keys = {}
        for record in jwt_records:
            if record.revoked:
                continue
            jwt_keys[record.authority_id] = serialization.load_der_public_key(record.public_key_der)
            if record.state == rotation.ACTIVE:
                key = self.keystore.load_if_present(record.key_ref)
                if key is not None:
                    self._jwt = JwtAuthority(record, key)
        if self.upstream is not None:
            roots = list(self.upstream.roots)
        self._bundle = TrustBundle(
            self.trust_domain,
            tuple(roots),
            jwt_keys,  # type: ignore[arg-type]
            self.store.current_sequence(BUNDLE_SEQUENCE),
            self.settings.refresh_hint,
        )

    # --- what the CA serves ---------------------------------------------------------------

    @property
    def bundle(self) -> TrustBundle:
        return self._bundle

    def live_x509_authorities(self) -> tuple[X509Authority, ...]:
        """Every X.509 authority still in the bundle (prepared, active, retired)."""
        return self._x509_live

    @property
    def x509_authority(self) -> X509Authority:
        if self._x509 is None:
            raise InvalidRequest(
                "no active X.509 authority with its key here (authorities are made and held "
                "by the replica with ca.rotates = true; issue there)"
            )
        return self._x509

    @property
    def jwt_authority(self) -> JwtAuthority:
        if self._jwt is None:
            raise InvalidRequest(
                "no active JWT authority with its key here (authorities are made and held "
                "by the replica with ca.rotates = true; issue there)"
            )
        return self._jwt

    def authorities(self) -> list[AuthorityRecord]:
        return self.store.list_authorities()

    def _check_identity(self, spiffe_id: SpiffeId) -> None:
        if not spiffe_id.member_of(self.trust_domain):
            raise InvalidRequest(
                f"{spiffe_id} is not in this CA's trust domain {self.trust_domain}"
            )

    def _ttl(self, requested: float | None, default: int) -> float:
        if requested is None or requested == 0:
            return default
        if requested < 0:
            raise InvalidRequest(f"TTL must be positive, got {requested}")
        if requested > self.settings.max_svid_ttl:
            raise InvalidRequest(
                f"TTL {int(requested)}s exceeds the CA's limit of {self.settings.max_svid_ttl}s"
            )
        return requested

    def issue_x509_svid(
        self,
        csr: bytes,
        *,
        spiffe_id: SpiffeId,
        dns_names: Sequence[str] = (),
        ttl: float | None = None,
        requester: str,
    ) -> X509Svid:
        """Issue an X.509-SVID for the key in ``csr`` (after proof of possession)."""
        return self.sign_x509_svid(
            public_key_of_csr(csr),
            spiffe_id=spiffe_id,
            dns_names=dns_names,
            ttl=ttl,
            requester=requester,
        )

    def sign_x509_svid(
        self,
        public_key: PublicKey,
        *,
        spiffe_id: SpiffeId,
        dns_names: Sequence[str] = (),
        ttl: float | None = None,
        requester: str,
    ) -> X509Svid:
        """Issue an X.509-SVID for ``public_key`` and record it in the issuance log.

        Only for keys whose possession is established otherwise: a verified CSR, or a key
        authd generated itself for a workload it attested.
        """
        self._check_identity(spiffe_id)
        authority = self.x509_authority
        now = self.clock.now()
        svid = sign_x509_svid(
            authority,
            public_key=public_key,
            spiffe_id=spiffe_id,
            dns_names=check_dns_names(dns_names),
            now=now,
            ttl=self._ttl(ttl, self.settings.x509_svid_ttl),
        )
        leaf = svid.leaf
        self.issuance_log.append(
            IssuanceRecord(
                serial=svid.serial,
                kind="x509",
                spiffe_id=str(spiffe_id),
                authority_id=authority.authority_id,
                not_before=int(leaf.not_valid_before_utc.timestamp()),
                not_after=svid.expires_at,
                requester=requester,
                issued_at=int(now),
            )
        )
        return svid

    def mint_jwt_svid(
        self,
        *,
        spiffe_id: SpiffeId,
        audience: Sequence[str],
        ttl: float | None = None,
    ) -> JwtSvid:
        self._check_identity(spiffe_id)
        return mint_jwt_svid(
            self.jwt_authority,
            spiffe_id=spiffe_id,
            audience=audience,
            now=self.clock.now(),
            ttl=self._ttl(ttl, self.settings.jwt_svid_ttl),
        )

    def verify_x509_svid(self, chain: Sequence[x509.Certificate]) -> SpiffeId:
        """Verify a peer's chain against this CA's own bundle."""
        bundle = self._bundle
        return verify_x509_svid(
            chain,
            trust_domain=self.trust_domain,
            roots=bundle.x509_authorities,
            now=self.clock.now(),
        )

    def verify_jwt_svid(self, token: str, audience: Sequence[str]) -> JwtSvid:
        return verify_jwt_svid(
            token,
            trust_domain=self.trust_domain,
            keys=self._bundle.jwt_authorities,
            audience=audience,
            now=self.clock.now(),
        )

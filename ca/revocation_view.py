"""What is revoked, as an in-memory view for O(1) checks: reasons, queries and the view.

The store holds the durable revocations (and, with Redis, shares them between replicas).
``RevocationView`` is what the hot path asks: sets of serials, SPIFFE IDs, entries and JWT
ids, rebuilt from the store on (re)connect and updated from changes in between. Revoking a
SPIFFE ID or an entry revokes every SVID it currently holds and blocks new issuance (the
``ca.revoker``'s work); the CRLs for TLS verifiers are built in ``ca.crl``.
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509

from ca.clock import Clock
from ca.errors import InvalidRequest
from ca.store import Revocation


class RevocationReason(enum.IntEnum):
    """RFC 5280 CRLReason (5.3.1); 7 is unused."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10

    @classmethod
    def parse(cls, text: str | int) -> RevocationReason:
        """Accept ``key-compromise``, ``keyCompromise``, ``KEY_COMPROMISE`` or ``1``."""
        if isinstance(text, int) or text.isdigit():
            try:
                return cls(int(text))
            except ValueError:
                pass
        else:
            wanted = text.replace("-", "").replace("_", "").lower()
            for reason in cls:
                if reason.name.replace("_", "").lower() == wanted:
                    return reason
        names = ", ".join(r.label for r in cls if r is not cls.REMOVE_FROM_CRL)
        raise InvalidRequest(f"unknown revocation reason {text!r}; use one of {names}")

    @property
    def crl_flag(self) -> x509.ReasonFlags:
        return _REASON_FLAGS[self]

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


_REASON_FLAGS = {
    RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    RevocationReason.REMOVE_FROM_CRL: x509.ReasonFlags.remove_from_crl,
    RevocationReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
    RevocationReason.AA_COMPROMISE: x509.ReasonFlags.aa_compromise,
}


@dataclass(frozen=True, slots=True)
class RevocationQuery:
    """What a revocation check is asked about one verified credential."""

    serial: str | None = None  # an X.509-SVID's serial, lowercase hex
    spiffe_id: str | None = None
    jti: str | None = None  # a JWT-SVID's token id
    entry_id: str | None = None  # the registration entry the credential was issued for
    txn: str | None = None  # a transaction token's transaction id


class RevocationView:
    """The revoked serials, SPIFFE IDs, entries, JWT ids and transactions, for O(1) lookups.

    Swapped whole on resynchronisation and edited in place for single changes; a lookup
    reads a few set memberships and takes no lock (membership tests and single adds or
    discards are atomic; nothing iterates the sets while they may change).

    Give ``clock`` when the view mirrors a store other replicas write: whoever follows that
    store moves ``synced_at`` on, and ``staleness()`` counts from it. Without a clock the
    view belongs to the store's only writer, which applies every change itself: never stale.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._lock = threading.Lock()
        self._sets: dict[str, set[str]] = {}
        self._clock = clock
        self.synced_at: float | None = None  # when the view last matched the store
        self.load(())

    def load(self, revocations: Iterable[Revocation], *, at: float | None = None) -> None:
        sets: dict[str, set[str]] = {"serial": set(), "spiffe_id": set(), "entry": set()}
        sets["authority"] = set()
        sets["jti"] = set()
        sets["txn"] = set()
        for revocation in revocations:
            sets.setdefault(revocation.target_kind, set()).add(revocation.target)
        with self._lock:
            self._sets = sets
            if at is not None:
                self.synced_at = at

    def apply(self, kind: str, target: str, *, revoked: bool) -> None:
        # In place: set.add and set.discard are atomic, and copying a large set per change
        # would make a burst of revocations crawl.
        with self._lock:
            values = self._sets.setdefault(kind, set())
            if revoked:
                values.add(target)
            else:
                values.discard(target)

    def is_revoked(self, query: RevocationQuery) -> bool:
        """True if any part of ``query`` (serial, SPIFFE ID, jti, entry) is revoked."""
        sets = self._sets
        return bool(
            (query.serial is not None and query.serial in sets["serial"])
            or (query.spiffe_id is not None and query.spiffe_id in sets["spiffe_id"])
            or (query.jti is not None and query.jti in sets["jti"])
            or (query.entry_id is not None and query.entry_id in sets["entry"])
            or (query.txn is not None and query.txn in sets["txn"])
        )

    def contains(self, kind: str, target: str) -> bool:
        """True if ``target`` of ``kind`` (serial, spiffe_id, entry, jti) is revoked."""
        return target in self._sets.get(kind, ())

    def targets(self, kind: str) -> frozenset[str]:
        """Every revoked target of ``kind`` (serial, spiffe_id, entry, jti), as a snapshot."""
        with self._lock:
            return frozenset(self._sets.get(kind, ()))

    def staleness(self) -> float:
        """Seconds since the view last matched the store: 0 without a clock, inf if never."""
        if self._clock is None:
            return 0.0
        synced = self.synced_at
        return math.inf if synced is None else max(0.0, self._clock.now() - synced)

    def count(self) -> int:
        return sum(len(values) for values in self._sets.values())

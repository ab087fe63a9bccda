"""The key layout of one Redis store, every key under one Redis Cluster hash tag.

Redis Cluster hashes a key by the text between its first ``{`` and the first ``}`` after it,
when that text is not empty; a MULTI/EXEC may only touch keys of one slot. So the key prefix
``authd:`` is written ``{authd}:``, and every key of one store lands in one slot::

    {authd}:schema                         string  schema version
    {authd}:generation                     string  made once when the store is initialised
    {authd}:authorities                    hash    authority_id -> record
    {authd}:seq:<name>                     string  counter (INCR)
    {authd}:issuance:<serial>              string  record
    {authd}:issuances                      zset    "<issued_at>:<recorded #>:<serial>", by lex
    {authd}:issuances:by-spiffe-id:<id>    zset    the same members, for one SPIFFE ID
    {authd}:issuances:by-authority:<id>    zset    ... for one authority
    {authd}:issuances:by-kind:<kind>       zset    ... for one kind
    {authd}:entry:<entry_id>               string  record
    {authd}:entries                        set     every entry_id
    {authd}:entries:by-spiffe-id:<id>      set     entry_ids
    {authd}:entries:by-parent-id:<id>      set     entry_ids
    {authd}:entries:by-selector:<json>     set     entry_ids; <json> is ["type","value"]
    {authd}:entries:by-signature:<sha256>  string  the entry_id holding that (spiffe_id,
                                                   parent_id, selector set)
    {authd}:revocation:<json>              string  its index member; <json> is ["kind","target"]
    {authd}:revocations                    zset    "<revoked_at>:<recorded #>:<record>", by lex
    {authd}:revocations:by-kind:<kind>     zset    the same members, for one target kind
    {authd}:order:<issuances|revocations>  string  recording counters that order ties
    {authd}:federated-bundles              hash    trust domain -> record
    {authd}:audit                          zset    record, scored by seq
    {authd}:audit:by-subject:<subject>     zset    record, scored by seq
    {authd}:changes                        stream  the change feed
    {authd}:lease:rotation                 hash    holder, token, expires_at (also PX)
    {authd}:fence:rotation                 string  the highest fencing token granted
    {authd}:wrapped-keys                   hash    key_ref -> authority key wrapped with the KEK
"""

from __future__ import annotations

import hashlib

from ca.store.records import RegistrationEntry, Selector, canonical_json

DEFAULT_KEY_PREFIX = "authd:"


def has_hash_tag(prefix: str) -> bool:
    """True if Redis Cluster hashes every key starting with ``prefix`` by a tag inside it:
    the text between the first ``{`` and the first ``}`` after it, when not empty."""
    start = prefix.find("{")
    return start >= 0 and prefix.find("}", start + 1) > start + 1


def selector_json(selector: Selector) -> str:
    return canonical_json([selector.type, selector.value])


def entry_signature(entry: RegistrationEntry) -> str:
    """The hash of what makes two entries duplicates: same IDs and the same selector set."""
    selectors = sorted({(s.type, s.value) for s in entry.selectors})
    encoded = canonical_json([entry.spiffe_id, entry.parent_id, selectors])
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


class KeyLayout:
    """Every key name of one store, all under one Cluster hash tag."""

    def __init__(self, prefix: str = DEFAULT_KEY_PREFIX) -> None:
        # A prefix with its own hash tag is used as given; otherwise "authd:" -> "{authd}:".
        self.prefix = prefix if has_hash_tag(prefix) else "{" + prefix.rstrip(":") + "}:"
        if not has_hash_tag(self.prefix):
            raise ValueError(f"key prefix {prefix!r} cannot be made into a Cluster hash tag")
        p = self.prefix
        self.schema = p + "schema"
        self.generation = p + "generation"
        self.authorities = p + "authorities"
        self.issuances = p + "issuances"
        self.issuance_order = p + "order:issuances"
        self.entries = p + "entries"
        self.revocations = p + "revocations"
        self.revocation_order = p + "order:revocations"
        self.audit = p + "audit"
        self.federated_bundles = p + "federated-bundles"
        self.join_tokens = p + "join-tokens"
        self.agents = p + "agents"
        self.changes = p + "changes"
        self.rotation_lease = p + "lease:rotation"
        self.rotation_fence = p + "fence:rotation"
        self.wrapped_keys = p + "wrapped-keys"

    def sequence(self, name: str) -> str:
        return f"{self.prefix}seq:{name}"

    def issuance(self, serial: str) -> str:
        return f"{self.prefix}issuance:{serial}"

    def issuances_by(self, what: str, value: str) -> str:
        return f"{self.prefix}issuances:by-{what}:{value}"

    def entry(self, entry_id: str) -> str:
        return f"{self.prefix}entry:{entry_id}"

    def entries_by(self, what: str, value: str) -> str:
        return f"{self.prefix}entries:by-{what}:{value}"

    def entry_signature(self, entry: RegistrationEntry) -> str:
        """The key naming the entry that holds ``entry``'s IDs and selector set."""
        return self.entries_by("signature", entry_signature(entry))

    def entry_indexes(self, entry: RegistrationEntry) -> set[str]:
        """The index sets that list ``entry``."""
        return {
            self.entries_by("spiffe-id", entry.spiffe_id),
            self.entries_by("parent-id", entry.parent_id),
        } | {self.entries_by("selector", selector_json(s)) for s in entry.selectors}

    def revocation(self, target_kind: str, target: str) -> str:
        return f"{self.prefix}revocation:{canonical_json([target_kind, target])}"

    def revocations_by_kind(self, target_kind: str) -> str:
        return f"{self.prefix}revocations:by-kind:{target_kind}"

    def audit_by_subject(self, subject: str) -> str:
        return f"{self.prefix}audit:by-subject:{subject}"

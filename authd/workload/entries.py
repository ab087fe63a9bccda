"""What makes a registration entry valid, checked before anything is stored.

Pure functions of the entry, the CA's trust domain and TTL limit, and the time: no store, no
gRPC. Each error names the field it is about (``selectors[1]``, ``x509_svid_ttl``), so the
admin API and the CLI can say exactly what to fix. Duplicates are the store's to refuse,
since only it sees the other entries.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from authd.config.durations import format_duration
from ca.errors import InvalidRequest, InvalidSpiffeId
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import RegistrationEntry, Selector
from ca.x509svid import MAX_DNS_NAMES, check_dns_names

DEFAULT_PARENT_PATH = "/authd"  # the built-in agent: authd attests workloads itself
MAX_HINT_CHARS = 1024
MAX_ENTRY_ID_CHARS = 255
MAX_EXPIRES_AT = 253_402_300_799  # 9999-12-31T23:59:59Z, the last time RFC 3339 can write

_ENTRY_ID = re.compile(r"[A-Za-z0-9._-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class EntryError(ValueError):
    """A registration entry field is invalid; ``field`` names it, ``why`` says what is wrong."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"entry field {field!r}: {why}")
        self.field = field
        self.why = why


# --- selectors -------------------------------------------------------------------------------


def _unix_id(value: str) -> str | None:
    if not value.isascii() or not value.isdigit():
        return "must be a number"
    if int(value) >= 2**32:
        return "is out of range for a Unix id"
    return None


def _unix_name(value: str) -> str | None:
    if not value or any(c.isspace() or c == ":" for c in value):
        return "must be a name without spaces or ':'"
    return None


def _absolute_path(value: str) -> str | None:
    if not value.startswith("/") or "\0" in value:
        return "must be an absolute path"
    return None


def _sha256(value: str) -> str | None:
    if not _SHA256.fullmatch(value):
        return "must be 64 lowercase hex digits"
    return None


# What the unix attestor reports about a caller (SPIRE's unix workload attestor keys).
SELECTOR_KEYS: Mapping[str, Mapping[str, Callable[[str], str | None]]] = {
    "unix": {
        "uid": _unix_id,
        "user": _unix_name,
        "gid": _unix_id,
        "group": _unix_name,
        "supplementary_gid": _unix_id,
        "supplementary_group": _unix_name,
        "path": _absolute_path,
        "sha256": _sha256,
    },
}


def check_selector(selector: Selector, field: str) -> Selector:
    """``selector`` if its type, key and value are known and well formed, else ``EntryError``."""
    keys = SELECTOR_KEYS.get(selector.type)
    if keys is None:
        if not selector.value:
            raise EntryError(field, f"{selector.type!r} is not TYPE:KEY:VALUE (e.g. unix:uid:1000)")
        supported = ", ".join(SELECTOR_KEYS)
        raise EntryError(field, f"unknown selector type {selector.type!r}; supported: {supported}")
    if not selector.value:
        raise EntryError(field, f"{selector.type} selector has no KEY:VALUE (e.g. unix:uid:1000)")
    key, separator, value = selector.value.partition(":")
    if key not in keys:
        supported = ", ".join(keys)
        raise EntryError(
            field, f"unknown {selector.type} selector key {key!r}; supported: {supported}"
        )
    if not separator:
        raise EntryError(field, f"{selector.type}:{key} has no value (e.g. unix:uid:1000)")
    problem = keys[key](value)
    if problem is not None:
        raise EntryError(field, f"{selector.type}:{key} value {value!r} {problem}")
    return selector


def parse_selector(text: str, field: str = "selector") -> Selector:
    """``unix:uid:1000`` → ``Selector("unix", "uid:1000")``, checked."""
    type_, _, value = text.partition(":")
    return check_selector(Selector(type_, value), field)


# --- entries ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryRules:
    """The checks an entry must pass for this CA: its trust domain and its SVID TTL limit."""

    trust_domain: TrustDomain
    max_svid_ttl: int

    @property
    def default_parent_id(self) -> str:
        return str(self.trust_domain.spiffe_id(DEFAULT_PARENT_PATH))

    def check(self, entry: RegistrationEntry, *, now: float) -> RegistrationEntry:
        """``entry`` with its defaults filled in (id, parent), or ``EntryError`` for the first
        bad field. Raises for the fields in the order a user reads them."""
        entry_id = entry.entry_id or uuid.uuid4().hex
        if len(entry_id) > MAX_ENTRY_ID_CHARS or not _ENTRY_ID.fullmatch(entry_id):
            raise EntryError(
                "entry_id",
                f"{entry_id[:80]!r} must be 1 to {MAX_ENTRY_ID_CHARS} letters, digits, "
                "'.', '-' or '_'",
            )
        spiffe_id = self._member_id("spiffe_id", entry.spiffe_id)
        if not spiffe_id.is_workload:
            raise EntryError("spiffe_id", f"{spiffe_id} has no path; a workload ID needs one")
        parent_id = self._member_id("parent_id", entry.parent_id or self.default_parent_id)
        return replace(
            entry,
            entry_id=entry_id,
            spiffe_id=str(spiffe_id),
            parent_id=str(parent_id),
            selectors=self._selectors(entry.selectors),
            x509_svid_ttl=self._ttl("x509_svid_ttl", entry.x509_svid_ttl),
            jwt_svid_ttl=self._ttl("jwt_svid_ttl", entry.jwt_svid_ttl),
            dns_names=self._dns_names(entry.dns_names),
            federates_with=self._federates_with(entry.federates_with),
            hint=self._hint(entry.hint),
            expires_at=self._expires_at(entry.expires_at, now),
        )

    def _member_id(self, field: str, text: str) -> SpiffeId:
        if not text:
            raise EntryError(field, "is required")
        try:
            spiffe_id = SpiffeId.parse(text)
        except InvalidSpiffeId as exc:
            raise EntryError(field, str(exc)) from None
        if not spiffe_id.member_of(self.trust_domain):
            raise EntryError(
                field, f"{spiffe_id} is not in this CA's trust domain {self.trust_domain}"
            )
        return spiffe_id

    @staticmethod
    def _selectors(selectors: tuple[Selector, ...]) -> tuple[Selector, ...]:
        if not selectors:
            raise EntryError("selectors", "at least one selector is required (e.g. unix:uid:1000)")
        seen: dict[Selector, int] = {}
        for index, selector in enumerate(selectors):
            field = f"selectors[{index}]"
            check_selector(selector, field)
            if selector in seen:
                raise EntryError(field, f"repeats selectors[{seen[selector]}]")
            seen[selector] = index
        return selectors

    def _ttl(self, field: str, ttl: int) -> int:
        if ttl < 0:
            raise EntryError(field, f"{ttl} must not be negative (0 means the CA's default)")
        if ttl > self.max_svid_ttl:
            raise EntryError(
                field,
                f"{format_duration(ttl)} exceeds the CA's limit of "
                f"{format_duration(self.max_svid_ttl)}",
            )
        return ttl

    @staticmethod
    def _dns_names(names: tuple[str, ...]) -> tuple[str, ...]:
        if len(names) > MAX_DNS_NAMES:
            raise EntryError("dns_names", f"at most {MAX_DNS_NAMES} DNS names, got {len(names)}")
        for index, name in enumerate(names):
            try:
                check_dns_names([name])
            except InvalidRequest as exc:
                raise EntryError(f"dns_names[{index}]", str(exc)) from None
        return names

    def _federates_with(self, names: tuple[str, ...]) -> tuple[str, ...]:
        parsed = []
        for index, name in enumerate(names):
            field = f"federates_with[{index}]"
            try:
                trust_domain = TrustDomain.parse(name)
            except InvalidSpiffeId as exc:
                raise EntryError(field, str(exc)) from None
            if trust_domain == self.trust_domain:
                raise EntryError(field, f"{trust_domain} is this CA's own trust domain")
            parsed.append(trust_domain.name)
        return tuple(parsed)

    @staticmethod
    def _hint(hint: str) -> str:
        if len(hint) > MAX_HINT_CHARS:
            raise EntryError("hint", f"{len(hint)} characters; at most {MAX_HINT_CHARS} allowed")
        return hint

    @staticmethod
    def _expires_at(expires_at: int, now: float) -> int:
        if expires_at < 0:
            raise EntryError("expires_at", f"{expires_at} must not be negative (0 means never)")
        if expires_at > MAX_EXPIRES_AT:
            raise EntryError("expires_at", f"{expires_at} is after the year 9999")
        if expires_at and expires_at <= now:
            when = dt.datetime.fromtimestamp(expires_at, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise EntryError("expires_at", f"{when} is in the past")
        return expires_at

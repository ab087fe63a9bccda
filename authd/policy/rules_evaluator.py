"""The rules engine's evaluator: compiled conditions, rules and rule sets, and how they decide.

``authd.policy.rules_parser`` builds these from the YAML file; ``authd.policy.rules`` documents
the file format and what each condition compares. Nothing here parses text per request:
patterns are sets, prefix tuples and one regex per rule, settled at load.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from typing import Any, Final

from authd.check.model import CheckContext, Decision, Identities, Reason

_SPACE_SEPARATED_CLAIMS: Final = frozenset({"scope", "scp"})


# --- per-request view -------------------------------------------------------------------


class RequestView:
    """The normalized parts of one request that rules compare, computed once per check."""

    __slots__ = (
        "at",
        "caller",
        "headers",
        "host",
        "identities",
        "method",
        "path",
        "peer",
        "workload",
    )

    def __init__(self, ctx: CheckContext, identities: Identities) -> None:
        self.method = ctx.method
        self.host = normalize_host(ctx.host)
        # Normalised (authd.check.request_path); raises MalformedRequest for an encoded '/'.
        self.path = ctx.normalized_path
        caller, peer, workload = identities.caller, identities.peer, identities.workload
        self.caller = None if caller is None else str(caller)
        self.peer = None if peer is None else str(peer)
        self.workload = None if workload is None else str(workload)
        self.headers = ctx.headers
        self.identities = identities
        # The hop deciding: the route's `at` context extension, else the asking Envoy's own
        # SPIFFE ID (destination.principal on an mTLS listener).
        self.at = ctx.context_extensions.get("at") or ctx.destination_principal or None


# Hosts seen (a route serves few), so most checks skip the string work; bounded in number
# and length, since the Host header is the caller's to choose (a DNS name is at most 253
# characters, and a port and brackets add a few).
_HOSTS_KEPT = 1024
_HOST_KEPT_LENGTH = 270
_hosts: dict[str, str] = {}


def normalize_host(host: str) -> str:
    """Lower-case, without ``:port`` and without a trailing dot."""
    known = _hosts.get(host)
    if known is not None:
        return known
    normalized = _normalize_host(host)
    if len(_hosts) < _HOSTS_KEPT and len(host) <= _HOST_KEPT_LENGTH:
        _hosts[host] = normalized
    return normalized


def _normalize_host(host: str) -> str:
    host = host.lower()
    if ":" in host:
        if host.startswith("["):
            end = host.find("]")
            return host if end == -1 else host[: end + 1]
        name, _, port = host.rpartition(":")
        if not port or port.isdigit():
            host = name
    return host[:-1] if host.endswith(".") else host


# --- conditions -------------------------------------------------------------------------


class Condition:
    """One compiled condition of a rule: a fast ``matches`` and a human ``why_not``."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def matches(self, request: RequestView) -> bool:
        raise NotImplementedError

    def why_not(self, request: RequestView) -> str:
        raise NotImplementedError


def _shown(values: Any) -> str:
    return ", ".join(str(value) for value in values)


class Hosts(Condition):
    __slots__ = ("exact", "patterns", "suffixes")

    def __init__(self, patterns: list[str]) -> None:
        super().__init__("hosts")
        self.patterns = patterns
        self.exact = frozenset(p for p in patterns if not p.startswith("*."))
        self.suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))

    def matches(self, request: RequestView) -> bool:
        return self.matches_host(request.host)

    def matches_host(self, host: str) -> bool:
        if host in self.exact:
            return True
        return host.endswith(self.suffixes) and not host.startswith(".")

    def why_not(self, request: RequestView) -> str:
        return f"host {request.host!r} does not match {_shown(self.patterns)}"


class Methods(Condition):
    __slots__ = ("methods",)

    def __init__(self, methods: list[str]) -> None:
        super().__init__("methods")
        self.methods = frozenset(methods)

    def matches(self, request: RequestView) -> bool:
        return request.method in self.methods

    def why_not(self, request: RequestView) -> str:
        return f"method {request.method!r} is not one of {_shown(sorted(self.methods))}"


class Paths(Condition):
    __slots__ = ("exact", "patterns", "prefixes", "templates")

    def __init__(
        self,
        patterns: list[str],
        exact: frozenset[str],
        prefixes: tuple[str, ...],
        templates: re.Pattern[str] | None,
    ) -> None:
        super().__init__("paths")
        self.patterns = patterns
        self.exact = exact
        self.prefixes = prefixes
        self.templates = templates

    def matches(self, request: RequestView) -> bool:
        path = request.path
        if path in self.exact or path.startswith(self.prefixes):
            return True
        return self.templates is not None and self.templates.fullmatch(path) is not None

    def why_not(self, request: RequestView) -> str:
        return f"path {request.path!r} does not match {_shown(self.patterns)}"


class Callers(Condition):
    """The calling workload's SPIFFE ID, exactly or below a prefix.

    In an allow rule it is the caller (the JWT-SVID subject, else the mTLS peer). In a deny
    rule (``any_identity``) it is each of the mTLS peer and the JWT-SVID subject: a JWT-SVID
    must not hide a denied peer, nor the other way round.
    """

    __slots__ = ("any_identity", "exact", "patterns", "prefixes")

    def __init__(
        self,
        patterns: list[str],
        exact: frozenset[str],
        prefixes: tuple[str, ...],
        *,
        any_identity: bool = False,
    ) -> None:
        super().__init__("callers")
        self.patterns = patterns
        self.exact = exact
        self.prefixes = prefixes
        self.any_identity = any_identity

    def _matches(self, spiffe_id: str | None) -> bool:
        return spiffe_id is not None and (
            spiffe_id in self.exact or spiffe_id.startswith(self.prefixes)
        )

    def matches(self, request: RequestView) -> bool:
        if self.any_identity:
            return self._matches(request.peer) or self._matches(request.workload)
        return self._matches(request.caller)

    def why_not(self, request: RequestView) -> str:
        if request.caller is None:
            return "no verified caller SPIFFE ID"
        if self.any_identity:
            shown = " nor ".join(
                f"{what} {spiffe_id}"
                for what, spiffe_id in (("peer", request.peer), ("JWT-SVID", request.workload))
                if spiffe_id is not None
            )
            return f"neither {shown} matches {_shown(self.patterns)}"
        return f"caller {request.caller} does not match {_shown(self.patterns)}"


class SpiffeIdPattern:
    """One pattern of SPIFFE IDs: exact IDs, and ``<id>/*`` prefixes (as ``callers`` has)."""

    __slots__ = ("exact", "patterns", "prefixes")

    def __init__(self, patterns: list[str], exact: frozenset[str], prefixes: tuple[str, ...]):
        self.patterns = patterns
        self.exact = exact
        self.prefixes = prefixes

    def matches(self, spiffe_id: str | None) -> bool:
        return spiffe_id is not None and (
            spiffe_id in self.exact or spiffe_id.startswith(self.prefixes)
        )

    def __str__(self) -> str:
        return _shown(self.patterns)


class CallPath(Condition):
    """``from: [minter, peer]``: the call carries a verified Txn-Token whose ``req_wl`` (the
    front door that minted it) is ``minter``, and the mTLS peer is ``peer``; ``from: [id]``
    means both are ``id`` (a call straight from the front door)."""

    __slots__ = ("minter", "peer")

    def __init__(self, hops: list[SpiffeIdPattern]) -> None:
        super().__init__("from")
        self.minter = hops[0]
        self.peer = hops[-1]

    def matches(self, request: RequestView) -> bool:
        token = request.identities.txn_token
        return (
            token is not None
            and self.minter.matches(token.req_wl)
            and self.peer.matches(request.peer)
        )

    def why_not(self, request: RequestView) -> str:
        token = request.identities.txn_token
        if token is None:
            return f"no verified Txn-Token: the call did not come through {self.minter}"
        if not self.minter.matches(token.req_wl):
            return f"the Txn-Token was minted by {token.req_wl}, not {self.minter}"
        if request.peer is None:
            return f"no verified mTLS peer; expected {self.peer}"
        return f"the call comes from {request.peer}, not {self.peer}"


class TxnScopes(Condition):
    """``txn_scopes``: the verified Txn-Token's scope holds every one of these."""

    __slots__ = ("required",)

    def __init__(self, required: list[str]) -> None:
        super().__init__("txn_scopes")
        self.required = frozenset(required)

    def matches(self, request: RequestView) -> bool:
        token = request.identities.txn_token
        return token is not None and self.required <= set(token.scope)

    def why_not(self, request: RequestView) -> str:
        token = request.identities.txn_token
        if token is None:
            return "no verified Txn-Token"
        missing = sorted(self.required - set(token.scope))
        return f"the Txn-Token's scope lacks {_shown(missing)}"


class At(Condition):
    """``at``: the rule applies at these hops (the SPIFFE ID of the Envoy asking)."""

    __slots__ = ("hops",)

    def __init__(self, hops: SpiffeIdPattern) -> None:
        super().__init__("at")
        self.hops = hops

    def matches(self, request: RequestView) -> bool:
        return self.hops.matches(request.at)

    def why_not(self, request: RequestView) -> str:
        if request.at is None:
            return f"applies at {self.hops}; this hop is not known (no destination principal)"
        return f"applies at {self.hops}, not at {request.at}"


class Authenticated(Condition):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("authenticated")

    def matches(self, request: RequestView) -> bool:
        return request.identities.authenticated

    def why_not(self, request: RequestView) -> str:
        return "no verified credential"


_MISSING: Final = object()


def claim_key(value: object) -> Hashable:
    # Keep true distinct from 1 (they hash and compare equal in Python, not in JSON).
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, Hashable):
        return value
    return ("unhashable", id(value))


def _claim_members(name: str, value: object) -> set[Hashable]:
    if isinstance(value, list | tuple):
        return {claim_key(item) for item in value}
    if isinstance(value, str) and name in _SPACE_SEPARATED_CLAIMS:
        return set(value.split())
    return {claim_key(value)}


class Users(Condition):
    __slots__ = ("claims", "issuers")

    def __init__(
        self,
        issuers: frozenset[str] | None,
        claims: tuple[tuple[str, frozenset[Hashable], list[Any]], ...],
    ) -> None:
        super().__init__("users")
        self.issuers = issuers
        self.claims = claims  # (name, required keys, required values as written)

    def matches(self, request: RequestView) -> bool:
        user = request.identities.user
        if user is None or (self.issuers is not None and user.issuer not in self.issuers):
            return False
        for name, required, _ in self.claims:
            value = user.claims.get(name, _MISSING)
            if value is _MISSING or not required <= _claim_members(name, value):
                return False
        return True

    def why_not(self, request: RequestView) -> str:
        user = request.identities.user
        if user is None:
            return "no verified end user"
        if self.issuers is not None and user.issuer not in self.issuers:
            return f"user issuer {user.issuer!r} is not one of {_shown(sorted(self.issuers))}"
        for name, required, shown in self.claims:
            value = user.claims.get(name, _MISSING)
            if value is _MISSING:
                return f"user claim {name!r} is missing"
            if not required <= _claim_members(name, value):
                return f"user claim {name!r} does not include {_shown(shown)}"
        return ""


class ApiKeys(Condition):
    __slots__ = ("names",)

    def __init__(self, names: list[str]) -> None:
        super().__init__("api_keys")
        self.names = frozenset(names)

    def matches(self, request: RequestView) -> bool:
        return request.identities.api_key in self.names

    def why_not(self, request: RequestView) -> str:
        if request.identities.api_key is None:
            return "no verified API key"
        return f"API key {request.identities.api_key!r} is not one of {_shown(sorted(self.names))}"


class Headers(Condition):
    __slots__ = ("checks",)

    def __init__(self, checks: tuple[tuple[str, frozenset[str] | bool], ...]) -> None:
        super().__init__("headers")
        # (name, accepted values) or (name, must be present)
        self.checks = checks

    def matches(self, request: RequestView) -> bool:
        headers = request.headers
        for name, expected in self.checks:
            value = headers.get(name)
            if expected is True or expected is False:
                if (value is not None) is not expected:
                    return False
            elif value not in expected:
                return False
        return True

    def why_not(self, request: RequestView) -> str:
        failures = []
        for name, expected in self.checks:
            value = request.headers.get(name)
            if expected is True or expected is False:
                if (value is not None) is not expected:
                    failures.append(f"header {name!r} is {'missing' if expected else 'present'}")
            elif value is None:
                failures.append(f"header {name!r} is missing")
            elif value not in expected:
                failures.append(f"header {name!r} is {value!r}, not {_shown(sorted(expected))}")
        return "; ".join(failures)


# --- rules and rule sets ----------------------------------------------------------------


_Check = Callable[[RequestView], bool]
_Candidates = tuple[tuple[tuple[str, tuple[_Check, ...]], ...], ...]
# Distinct (method, host) pairs whose candidate rules are remembered; Host is client-chosen,
# so the table is bounded (cleared when full) rather than allowed to grow.
_CANDIDATE_CACHE_SIZE: Final = 4096


class Rule:
    """A compiled rule: its name, effect, source line and conditions."""

    __slots__ = (
        "call_path",
        "call_path_checks",
        "checks",
        "conditions",
        "effect",
        "hosts",
        "line",
        "methods",
        "name",
        "txn_scope",
    )

    def __init__(
        self,
        name: str,
        effect: str,
        line: int,
        conditions: list[Condition],
        txn_scope: tuple[str, ...] | None = None,
    ) -> None:
        self.name = name
        self.txn_scope = txn_scope
        self.effect = effect
        self.line = line
        self.conditions = tuple(conditions)
        self.methods = next((c for c in conditions if isinstance(c, Methods)), None)
        self.hosts = next((c for c in conditions if isinstance(c, Hosts)), None)
        # Methods and hosts are settled once per (method, host) by the rule set's candidate
        # table; the rest run per request, cheapest and most selective first.
        order = (
            "at",
            "paths",
            "api_keys",
            "callers",
            "authenticated",
            "headers",
            "users",
            "from",
            "txn_scopes",
        )
        rest = [c for c in conditions if not isinstance(c, Methods | Hosts)]
        rest.sort(key=lambda c: order.index(c.key))
        self.checks: tuple[_Check, ...] = tuple(c.matches for c in rest)
        # With a call path: the checks not about the transaction, to tell a call-path deny
        # (everything else holds, the call path does not) from no match.
        self.call_path = next((c for c in rest if isinstance(c, CallPath)), None)
        self.call_path_checks = tuple(
            c.matches for c in rest if not isinstance(c, CallPath | TxnScopes)
        )

    def applies_to(self, method: str, host: str) -> bool:
        return (self.methods is None or method in self.methods.methods) and (
            self.hosts is None or self.hosts.matches_host(host)
        )


class RuleSet:
    """The rules Envoy selects by name; deny rules are tried first, then allow rules in order."""

    __slots__ = (
        "_by_name",
        "_candidates",
        "_no_match",
        "allow_rules",
        "deny_rules",
        "name",
        "rules",
    )

    def __init__(self, name: str, rules: list[Rule]) -> None:
        self.name = name
        self.rules = tuple(rules)
        self.deny_rules = tuple(r for r in rules if r.effect == "deny")
        self.allow_rules = tuple(r for r in rules if r.effect == "allow")
        self._no_match = f"no rule matched in rule set {name!r}"
        self._candidates: dict[tuple[str, str], _Candidates] = {}
        self._by_name = {r.name: r for r in self.allow_rules}

    def candidates(self, method: str, host: str) -> _Candidates:
        """The (name, remaining checks) of the deny and the allow rules that apply."""
        key = (method, host)
        found = self._candidates.get(key)
        if found is None:
            found = tuple(
                tuple((r.name, r.checks) for r in rules if r.applies_to(method, host))
                for rules in (self.deny_rules, self.allow_rules)
            )
            if len(self._candidates) >= _CANDIDATE_CACHE_SIZE:
                self._candidates.clear()
            self._candidates[key] = found
        return found

    def decide(self, request: RequestView) -> Decision:
        deny, allow = self.candidates(request.method, request.host)
        # for/else instead of all(...): no generator per rule on the hot path.
        for name, checks in deny:
            for check in checks:
                if not check(request):
                    break
            else:
                return Decision(False, Reason.DENIED_BY_RULE, rule=name)
        for name, checks in allow:
            for check in checks:
                if not check(request):
                    break
            else:
                scope = self._by_name[name].txn_scope
                return Decision(True, Reason.ALLOWED, rule=name, txn_scope=scope)
        return self._no_match_decision(request)

    def _no_match_decision(self, request: RequestView) -> Decision:
        """``call-path`` if an allow rule failed only on where the call came from."""
        for rule in self.allow_rules:
            call_path = rule.call_path
            if (
                call_path is not None
                and rule.applies_to(request.method, request.host)
                and all(check(request) for check in rule.call_path_checks)
                and not call_path.matches(request)
            ):
                return Decision(False, Reason.CALL_PATH, rule=rule.name, http_status=403)
        return Decision(False, Reason.NO_MATCHING_RULE, rule=self._no_match)

"""Rules → Envoy's RBAC filter in its matcher form, and what is left to ext_authz (pure).

The tree, first match wins at each level:

1. the peer certificate's URI SAN (``UriSanInput``), an ``exact_match_map`` over every SPIFFE
   ID a rule names exactly, plus the revoked ones (deny) and those ext_authz must see (an
   entry revoked: only authd knows its serials); then a ``prefix_match_map`` over the
   caller prefixes (``spiffe://td/ns/prod/*``; the longest matching one wins), then one
   branch for every other SPIFFE peer. A request without a peer goes to ext_authz (it may
   carry a token, and authd answers it 401, not 403);
2. a credential header (a JWT-SVID, an end-user token, an API key) present → ext_authz:
   it may change who the caller is, or be invalid, and only authd verifies it;
3. ``:method``, an ``exact_match_map`` over the methods the rules name;
4. ``:path``: first a spelling that might normalise differently (``rbac_paths``) → ext_authz,
   then exact paths, prefixes (longest first), templates (RE2), else ``on_no_match``.

Every leaf is one ``envoy.config.rbac.v3.Action``, decided by evaluating each rule on what
the branch fixes: a condition is true, false, or unknown (a host, header, end user or API
key, which Envoy does not see here; or a path two patterns could share). As authd decides:
a deny that surely matches → ``DENY``; a deny that might → ext_authz; an allow that surely
matches → ``ALLOW`` (ext_authz skipped); an allow that might → ext_authz; none → ``DENY``.
The action's name says which (``allow:<rule>``, ``deny:<rule>``, ``extauthz:<why>``): RBAC
puts it in the dynamic metadata ``envoy.filters.http.rbac/enforced_effective_policy_id``,
and the ext_authz filter runs only when it starts with ``extauthz:``
(``filter_enabled_metadata``; ``deploy/envoy/sidecar-rbac.yaml``).

The output is deterministic: maps and lists are built in sorted order and serialised with
``deterministic=True``, so the same rules give the same bytes and the same version. Nothing
below the revoked map depends on the revocations (a revoked ID keeps its unreachable branch
in the identity map): its bytes are kept (``RulesPart``), and ``rbac_revocations`` puts
other revocations around them without compiling the rules again.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from envoy.config.core.v3 import extension_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.matching.common_inputs.ssl.v3 import ssl_inputs_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from google.protobuf import any_pb2
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2, string_pb2

from authd.policy.rules_evaluator import Callers, Methods, Paths, Rule, RuleSet
from authd.xds.rbac_paths import UNSAFE_REGEX, PathPattern, parse_path_pattern

__all__ = [
    "EXTAUTHZ_PREFIX",
    "NATIVE_ONLY_PREFIX",
    "CompiledRbac",
    "RuleRouting",
    "RulesPart",
    "compile_rbac",
    "revoked_branches",
    "revoked_map_matcher",
    "root_without_revocations",
]

EXTAUTHZ_PREFIX: Final = "extauthz:"
REVOKED_ACTION: Final = "deny:revoked-spiffe-id"
NO_MATCH_ACTION: Final = "deny:no_matching_rule"
# ``[xds] native_only``: what would have gone to ext_authz is denied, named after why.
NATIVE_ONLY_PREFIX: Final = "deny:native_only:"
_NATIVE_KEYS: Final = frozenset({"methods", "paths", "callers", "authenticated"})
_WHY_NOT_NATIVE: Final = {
    "hosts": "hosts: the matcher tree reads identity, method and path only",
    "users": "users: end-user tokens are verified by authd",
    "api_keys": "api_keys: API keys are verified by authd",
    "headers": "headers: header conditions are decided by authd",
}


class _T(enum.Enum):
    """A condition's truth on one branch of the tree."""

    NO = 0
    MAYBE = 1
    YES = 2


@dataclass(frozen=True, slots=True)
class RuleRouting:
    """Where one rule is decided, and why (``authd policy explain``)."""

    rule_set: str
    rule: str
    line: int
    effect: str
    native: bool
    why: str


@dataclass(frozen=True, slots=True)
class RulesPart:
    """What a compile gives that no revocation changes: the matcher below the revoked map.

    Kept so a change of the revocations alone re-assembles the config around these bytes
    (``authd.xds.rbac_revocations``) instead of compiling the rules again.
    """

    below: bytes  # the serialised OnMatch below the revoked map (deterministic)
    named: frozenset[str]  # the SPIFFE IDs of the identity map below it


@dataclass(frozen=True, slots=True)
class CompiledRbac:
    """The RBAC filter config for ECDS, its bytes, version and the routing of each rule."""

    filter_name: str
    config: Any  # envoy.config.core.v3.TypedExtensionConfig
    payload: bytes
    version: str
    routing: tuple[RuleRouting, ...]
    identities: int  # entries of the identity map
    revoked: int
    native_only: bool = False  # every ext_authz hand-over compiled as a deny
    rules_part: RulesPart | None = None  # None: not re-assembled on a revocation

    def denied_rules(self) -> tuple[RuleRouting, ...]:
        """With ``native_only``: the rules that need ext_authz, so what they decide is denied."""
        return tuple(r for r in self.routing if not r.native) if self.native_only else ()


# --- matcher building blocks ------------------------------------------------------------


def _typed(name: str, message: Any) -> Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return xds_extension_pb2.TypedExtensionConfig(name=name, typed_config=packed)


def _header_input(name: str) -> Any:
    return _typed(name, http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=name))


def _uri_san_input() -> Any:
    return _typed("uri-san", ssl_inputs_pb2.UriSanInput())


def _native_only(name: str) -> str:
    """``name`` as ``[xds] native_only`` compiles it: an ext_authz hand-over is a deny."""
    if name.startswith(EXTAUTHZ_PREFIX):
        return NATIVE_ONLY_PREFIX + name[len(EXTAUTHZ_PREFIX) :]
    return name


def _action(name: str) -> Any:
    kind = rbac_config_pb2.RBAC.DENY if name.startswith("deny:") else rbac_config_pb2.RBAC.ALLOW
    return matcher_pb2.Matcher.OnMatch(
        action=_typed("action", rbac_config_pb2.Action(name=name, action=kind))
    )


def _predicate(header: str, **match: str) -> Any:
    return matcher_pb2.Matcher.MatcherList.Predicate(
        single_predicate=matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
            input=_header_input(header), value_match=string_pb2.StringMatcher(**match)
        )
    )


def _any_of(predicates: Sequence[Any]) -> Any:
    if len(predicates) == 1:
        return predicates[0]
    return matcher_pb2.Matcher.MatcherList.Predicate(
        or_matcher=matcher_pb2.Matcher.MatcherList.Predicate.PredicateList(predicate=predicates)
    )


def _regex(pattern: str) -> Any:
    return {"safe_regex": xds_regex(pattern)}


def xds_regex(pattern: str) -> Any:
    from xds.type.matcher.v3 import regex_pb2

    return regex_pb2.RegexMatcher(google_re2=regex_pb2.RegexMatcher.GoogleRE2(), regex=pattern)


def _path_predicate(pattern: PathPattern) -> Any:
    if pattern.kind == "exact":
        return _any_of(
            [
                _predicate(":path", exact=pattern.value),
                _predicate(":path", prefix=pattern.value + "?"),
            ]
        )
    if pattern.kind == "prefix":
        base = pattern.value
        return _any_of(
            [
                _predicate(":path", exact=base),
                _predicate(":path", prefix=base + "/"),
                _predicate(":path", prefix=base + "?"),
            ]
        )
    return _predicate(":path", **_regex(pattern.value + r"(?:\?.*)?"))


def _unsafe_path_predicate() -> Any:
    not_rooted = matcher_pb2.Matcher.MatcherList.Predicate(
        not_matcher=_predicate(":path", prefix="/")
    )
    # Two predicates, not one per unsafe substring: each reads (copies) :path again.
    return _any_of([not_rooted, _predicate(":path", **_regex(UNSAFE_REGEX))])


def _list(entries: Sequence[tuple[Any, Any]], on_no_match: Any) -> Any:
    return matcher_pb2.Matcher(
        matcher_list=matcher_pb2.Matcher.MatcherList(
            matchers=[
                matcher_pb2.Matcher.MatcherList.FieldMatcher(predicate=p, on_match=o)
                for p, o in entries
            ]
        ),
        on_no_match=on_no_match,
    )


def _tree(input_config: Any, branches: dict[str, Any], on_no_match: Any) -> Any:
    tree = matcher_pb2.Matcher.MatcherTree(input=input_config)
    for key in sorted(branches):
        tree.exact_match_map.map[key].CopyFrom(branches[key])
    return matcher_pb2.Matcher(matcher_tree=tree, on_no_match=on_no_match)


def _prefix_tree(input_config: Any, branches: dict[str, Any], on_no_match: Any) -> Any:
    """Longest matching prefix wins (every branch ends in an action, so none falls back)."""
    tree = matcher_pb2.Matcher.MatcherTree(input=input_config)
    for key in sorted(branches):
        tree.prefix_match_map.map[key].CopyFrom(branches[key])
    return matcher_pb2.Matcher(matcher_tree=tree, on_no_match=on_no_match)


def _nested(matcher: Any) -> Any:
    return matcher_pb2.Matcher.OnMatch(matcher=matcher)


# --- the rules, as the compiler sees them ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _NativeRule:
    name: str
    effect: str
    methods: frozenset[str] | None
    paths: tuple[PathPattern, ...] | None  # None: no path condition (or "/*")
    callers: Callers | None
    blocker: str  # why it cannot be decided natively ("" when it can)


def _native_rule(rule: Rule) -> _NativeRule:
    methods = paths = callers = None
    blockers = []
    for condition in rule.conditions:
        if isinstance(condition, Methods):
            methods = condition.methods
        elif isinstance(condition, Paths):
            parsed = tuple(parse_path_pattern(p) for p in condition.patterns)
            paths = None if any(p.matches_everything for p in parsed) else parsed
        elif isinstance(condition, Callers):
            callers = condition
        elif condition.key not in _NATIVE_KEYS:
            blockers.append(_WHY_NOT_NATIVE.get(condition.key, condition.key))
    return _NativeRule(rule.name, rule.effect, methods, paths, callers, "; ".join(blockers))


@dataclass(frozen=True, slots=True)
class _Branch:
    """What one branch of the tree fixes about the request."""

    # An exact SPIFFE ID; or a caller prefix ending in "/" (the longest one the peer has;
    # it is in no exact entry); or None: a peer under no prefix and in no exact entry.
    identity: str | None
    method: str | None  # an exact method, or None: one no rule names
    path: PathPattern | None  # the path class, or None: no pattern matched
    earlier: tuple[PathPattern, ...]  # patterns tried before this one (they did not match)


def _callers_truth(rule: _NativeRule, branch: _Branch) -> _T:
    callers = rule.callers
    if callers is None:
        return _T.YES
    identity = branch.identity
    if identity is None:
        return _T.NO  # in no exact entry and under no caller prefix of any rule
    if identity.endswith("/"):
        # Under this prefix and no longer one: a rule's prefix matches iff it is shorter.
        return _T.YES if identity.startswith(callers.prefixes) else _T.NO
    hit = identity in callers.exact or identity.startswith(callers.prefixes)
    return _T.YES if hit else _T.NO


def _methods_truth(rule: _NativeRule, branch: _Branch) -> _T:
    if rule.methods is None:
        return _T.YES
    return _T.YES if branch.method is not None and branch.method in rule.methods else _T.NO


def _pattern_truth(pattern: PathPattern, branch: _Branch) -> _T:
    cls = branch.path
    if cls is None:
        return _T.NO  # no pattern of any rule matched this path
    if cls.kind == "exact":
        return _T.YES if pattern.matches(cls.value) else _T.NO
    if pattern == cls:
        return _T.YES
    if pattern.kind == "exact" or pattern in branch.earlier:
        return _T.NO
    if cls.kind == "prefix":
        if pattern.kind == "prefix":
            return _T.YES if cls.under(pattern.value) else _T.NO
        return _T.MAYBE  # a template may match some paths below the prefix
    # cls is a template: prefixes were all tried before it
    if pattern.kind == "prefix":
        return _T.NO
    return _T.NO if pattern.disjoint_from(cls) else _T.MAYBE


def _paths_truth(rule: _NativeRule, branch: _Branch) -> _T:
    if rule.paths is None:
        return _T.YES
    truths = {_pattern_truth(p, branch) for p in rule.paths}
    return _T.YES if _T.YES in truths else _T.MAYBE if _T.MAYBE in truths else _T.NO


def _rule_truth(rule: _NativeRule, branch: _Branch) -> _T:
    truths = [_callers_truth(rule, branch), _methods_truth(rule, branch)]
    truths.append(_paths_truth(rule, branch))
    if _T.NO in truths:
        return _T.NO
    if rule.blocker or _T.MAYBE in truths:
        return _T.MAYBE
    return _T.YES


def _leaf(rules: Sequence[_NativeRule], branch: _Branch) -> str:
    """The action name for one branch, deciding as the rules engine does."""
    truths = [(_rule_truth(r, branch), r) for r in rules]
    deny = [(t, r) for t, r in truths if r.effect == "deny" and t is not _T.NO]
    allow = [(t, r) for t, r in truths if r.effect == "allow" and t is not _T.NO]
    sure_deny = next((r for t, r in deny if t is _T.YES), None)
    if sure_deny is not None:
        return f"deny:{sure_deny.name}"
    if deny:
        return f"{EXTAUTHZ_PREFIX}deny rule {deny[0][1].name!r} needs ext_authz"
    sure_allow = next((r for t, r in allow if t is _T.YES), None)
    if sure_allow is not None:
        return f"allow:{sure_allow.name}"
    if allow:
        return f"{EXTAUTHZ_PREFIX}allow rule {allow[0][1].name!r} needs ext_authz"
    return NO_MATCH_ACTION


# --- the tree ---------------------------------------------------------------------------

_Act = Callable[[str], Any]  # an action's name → its OnMatch


def _path_order(patterns: Iterable[PathPattern]) -> list[PathPattern]:
    unique = {(p.kind, p.value): p for p in patterns}.values()
    exact = sorted((p for p in unique if p.kind == "exact"), key=lambda p: p.value)
    prefixes = sorted(
        (p for p in unique if p.kind == "prefix"), key=lambda p: (-len(p.value), p.value)
    )
    templates = sorted((p for p in unique if p.kind == "template"), key=lambda p: p.value)
    return exact + prefixes + templates


def _path_level(
    rules: Sequence[_NativeRule], identity: str | None, method: str | None, act: _Act
) -> Any:
    live = [r for r in rules if _callers_truth(r, _Branch(identity, method, None, ())) is not _T.NO]
    live = [r for r in live if _methods_truth(r, _Branch(identity, method, None, ())) is not _T.NO]
    patterns = _path_order(p for r in live for p in r.paths or ())
    none_matched = act(_leaf(live, _Branch(identity, method, None, tuple(patterns))))
    if not patterns:
        return None, none_matched
    entries = []
    for index, pattern in enumerate(patterns):
        branch = _Branch(identity, method, pattern, tuple(patterns[:index]))
        entries.append((_path_predicate(pattern), act(_leaf(live, branch))))
    return _list(entries, none_matched), None


def _on(matcher: Any, action: Any) -> Any:
    return _nested(matcher) if matcher is not None else action


def _method_level(rules: Sequence[_NativeRule], identity: str | None, act: _Act) -> Any:
    methods = sorted({m for r in rules if r.methods is not None for m in r.methods})
    other = _on(*_path_level(rules, identity, None, act))
    if not methods:
        return other
    branches = {m: _on(*_path_level(rules, identity, m, act)) for m in methods}
    return _nested(_tree(_header_input(":method"), branches, other))


def _relevant(
    identity: str | None,
    by_id: dict[str, list[tuple[int, _NativeRule]]],
    unscoped: list[tuple[int, _NativeRule]],
) -> list[_NativeRule]:
    """The rules that can match a peer of ``identity``, in file order: those naming it, those
    with a caller prefix or no callers (every other rule is false there)."""
    found = sorted([*by_id.get(identity or "", ()), *unscoped], key=lambda item: item[0])
    return [rule for _, rule in found]


def _guards(credential_headers: Sequence[str], act: _Act) -> list[tuple[Any, Any]]:
    """Before any rule: a credential header or a path that may normalise otherwise."""
    reason = act(f"{EXTAUTHZ_PREFIX}credential header")
    entries = [
        (_predicate(h, safe_regex=xds_regex("[\\s\\S]*")), reason) for h in credential_headers
    ]
    path = act(f"{EXTAUTHZ_PREFIX}path needs normalising")
    return [*entries, (_unsafe_path_predicate(), path)]


def _native_only_act(native_only: bool) -> _Act:
    def act(name: str) -> Any:
        return _action(_native_only(name) if native_only else name)

    return act


def revoked_branches(
    revoked: Iterable[str], to_extauthz: Iterable[str], *, native_only: bool
) -> dict[str, Any]:
    """The revoked map's entries: each revoked SPIFFE ID denied, each revoked entry's SPIFFE ID
    handed to ext_authz (denied with ``native_only``), keyed by SPIFFE ID."""
    revoked_ids = set(revoked)
    act = _native_only_act(native_only)
    branches = {spiffe_id: _action(REVOKED_ACTION) for spiffe_id in sorted(revoked_ids)}
    for spiffe_id in sorted(set(to_extauthz) - revoked_ids):
        branches[spiffe_id] = act(f"{EXTAUTHZ_PREFIX}entry revoked")
    return branches


def revoked_map_matcher(branches: dict[str, Any], below: Any | None) -> Any:
    """The root matcher with revocations: ``branches`` on the peer's URI SAN, ``below`` when
    none matches (None: left out, for the re-assembly that frames ``below`` itself)."""
    return _tree(_uri_san_input(), branches, below)


def root_without_revocations(below: Any) -> Any:
    """The root matcher with no revocation: what is below, or, for one action for
    everything, a list (a matcher must match on something)."""
    if below.HasField("matcher"):
        return below.matcher
    return _list([(_predicate_uri_san_prefix("spiffe://"), below)], below)


def compile_rbac(
    rule_set: RuleSet | None,
    *,
    rule_set_name: str,
    filter_name: str,
    revoked: Iterable[str] = (),
    to_extauthz: Iterable[str] = (),
    credential_headers: Sequence[str] = ("authorization",),
    everything_to_extauthz: str = "",
    native_only: bool = False,
) -> CompiledRbac:
    """Compile ``rule_set`` into the RBAC filter config named ``filter_name``.

    ``revoked`` SPIFFE IDs are denied before anything else; ``to_extauthz`` ones always go
    to ext_authz. ``everything_to_extauthz`` (a reason) sends every request that is not
    revoked to ext_authz: another policy engine, no rules file, a dry run.

    ``native_only`` (``[xds] native_only``, a sidecar without ext_authz): every request
    that would go to ext_authz is denied instead (``deny:native_only:<why>``), fail closed.
    """

    act = _native_only_act(native_only)
    revoked_ids = set(revoked)
    headers = sorted({h.lower() for h in credential_headers if h})
    rules: list[_NativeRule] = []
    routing: list[RuleRouting] = []
    for rule in rule_set.rules if rule_set is not None else ():
        native = _native_rule(rule)
        rules.append(native)
        why = everything_to_extauthz or native.blocker
        routing.append(
            RuleRouting(
                rule_set_name,
                rule.name,
                rule.line,
                rule.effect,
                not why,
                why
                or "identity, method and path only: decided in Envoy for mTLS peers "
                "without a credential header",
            )
        )
    if rule_set is None and not everything_to_extauthz:
        everything_to_extauthz = f"no rule set {rule_set_name!r}"

    # Nothing below the revoked map depends on the revocations (a revoked ID's own branch
    # stays, unreachable), so a revocation alone can re-assemble the config around it.
    revoked_map = revoked_branches(revoked_ids, to_extauthz, native_only=native_only)
    named_branches: dict[str, Any] = {}
    if everything_to_extauthz:
        below_revoked = act(f"{EXTAUTHZ_PREFIX}{everything_to_extauthz}")
    else:
        # An index by exact caller keeps this linear in the rules, not quadratic.
        by_id: dict[str, list[tuple[int, _NativeRule]]] = {}
        unscoped: list[tuple[int, _NativeRule]] = []
        for index, native_rule in enumerate(rules):
            callers = native_rule.callers
            if callers is None or callers.prefixes:
                unscoped.append((index, native_rule))
            for spiffe_id in callers.exact if callers is not None else ():
                by_id.setdefault(spiffe_id, []).append((index, native_rule))
        for spiffe_id in sorted(by_id):
            named_branches[spiffe_id] = _method_level(
                _relevant(spiffe_id, by_id, unscoped), spiffe_id, act
            )
        anyone = [rule for _, rule in unscoped]
        any_peer = _method_level(anyone, None, act)
        prefixes = sorted({p for r in rules if r.callers is not None for p in r.callers.prefixes})
        if prefixes:
            below = {p: _method_level(anyone, p, act) for p in prefixes}
            any_peer = _nested(_prefix_tree(_uri_san_input(), below, any_peer))
        no_peer = act(f"{EXTAUTHZ_PREFIX}no SPIFFE peer")
        peer_present = _predicate_uri_san_prefix("spiffe://")
        identities = _list([(peer_present, any_peer)], no_peer)
        if named_branches:
            identities = _tree(_uri_san_input(), named_branches, _nested(identities))
        below_revoked = _nested(_list(_guards(headers, act), _nested(identities)))
    root = (
        revoked_map_matcher(revoked_map, below_revoked)
        if revoked_map
        else root_without_revocations(below_revoked)
    )
    config = rbac_pb2.RBAC(matcher=root)
    typed = extension_pb2.TypedExtensionConfig(name=filter_name)
    typed.typed_config.Pack(config, deterministic=True)
    payload = typed.SerializeToString(deterministic=True)
    version = hashlib.sha256(payload).hexdigest()[:16]
    return CompiledRbac(
        filter_name=filter_name,
        config=typed,
        payload=payload,
        version=version,
        routing=tuple(routing),
        identities=len(revoked_map.keys() | named_branches.keys()),
        revoked=len(revoked_ids),
        native_only=native_only,
        rules_part=RulesPart(
            below=below_revoked.SerializeToString(deterministic=True),
            named=frozenset(named_branches),
        ),
    )


def _predicate_uri_san_prefix(prefix: str) -> Any:
    return matcher_pb2.Matcher.MatcherList.Predicate(
        single_predicate=matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
            input=_uri_san_input(), value_match=string_pb2.StringMatcher(prefix=prefix)
        )
    )

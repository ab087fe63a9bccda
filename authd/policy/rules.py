"""Declarative authorization rules: a YAML file of named rule sets, compiled once into matchers.

The file (``deploy/policy/rules.yaml`` is a commented example)::

    version: 1                       # required; the only version
    default_rule_set: default        # optional; the set used when Envoy names none
    rule_sets:
      default:                       # a rule set; Envoy picks one per listener/route with
        description: "..."           #   the context extension ``policy: <name>``
        rules:
          - name: orders-read        # required, unique within the rule set
            effect: allow            # required: allow | deny
            hosts: ["api.example.com", "*.example.com"]
            methods: [GET, HEAD]
            paths: ["/orders", "/orders/{id}", "/static/*"]
            callers: ["spiffe://example.org/web", "spiffe://partner.org/*"]
            authenticated: true
            users: {issuers: ["https://idp.example.com"], claims: {scope: "orders:read"}}
            api_keys: ["ci-bot"]
            headers: {x-tenant: "acme", x-debug: {present: false}}

Every condition is optional; a rule matches when all its conditions hold (AND), and a list
condition holds when any element matches (OR). A rule without conditions matches every
request. In a rule set, a matching ``deny`` rule wins; otherwise the first matching ``allow``
rule (in file order) allows; otherwise the request is denied with ``no_matching_rule``.

Conditions, and exactly what they compare:

- ``hosts``: the request's host, lower-cased, without ``:port`` or a trailing dot. An entry is
  an exact name or ``*.suffix``, which matches any name ending in ``.suffix`` (one or more
  labels, as Envoy's virtual hosts do) but not ``suffix`` itself.
- ``methods``: upper-case HTTP methods (methods are case-sensitive in HTTP).
- ``paths``: the path without query string, normalized first (unreserved ``%XX`` decoded,
  ``//`` merged, ``.``/``..`` segments resolved) so an encoded or dotted spelling cannot slip
  past a deny rule. An entry is exact (``/orders``), a template whose ``{name}`` segments match
  exactly one non-empty segment (``/orders/{id}``), or ``/prefix/*``, which matches ``/prefix``
  and everything below it, segment-aware (``/static/*`` matches ``/static/a/b``, not
  ``/staticx``); ``/*`` matches every path.
- ``callers``: the verified calling workload (``Identities.caller``: the JWT-SVID subject,
  else the mTLS peer). An entry is a workload SPIFFE ID, or ``<id>/*`` for that ID and every
  ID below it; ``spiffe://<trust-domain>/*`` is any workload of that trust domain.
- ``authenticated: true``: some credential verified (``false`` adds no condition).
- ``users``: a verified end user, optionally from one of ``issuers``, whose token has every
  listed claim: a scalar must equal the claim, or be a member of it when the claim is a list
  (or, for ``scope``/``scp``, a space-separated string); a list requires all its values.
- ``api_keys``: the name of the API key that verified.
- ``headers``: lower-case header name to an exact value, a list of accepted values, or
  ``{present: true|false}``.

Every mistake is a ``PolicyError`` naming the file, the 1-based line and the rule, e.g.
``policy.yaml:14: rule 'orders-read' in rule set 'default': unknown key 'method' (did you
mean 'methods'?)``. Nothing is parsed per request: patterns become sets, prefix tuples and
one regex per rule.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from authd.check.model import CheckContext, Decision, Identities, Reason
from authd.policy.base import InputDocument, PolicyError
from ca.errors import InvalidSpiffeId
from ca.spiffe_id import SpiffeId

RULE_SET_EXTENSION: Final = "policy"  # the ext_authz context_extensions key
DEFAULT_RULE_SET: Final = "default"

_TOP_KEYS: Final = ("version", "default_rule_set", "rule_sets")
_RULE_SET_KEYS: Final = ("rules", "description")
_RULE_KEYS: Final = (
    "name",
    "description",
    "effect",
    "hosts",
    "methods",
    "paths",
    "callers",
    "authenticated",
    "users",
    "api_keys",
    "headers",
)
_USER_KEYS: Final = ("issuers", "claims")
_HEADER_KEYS: Final = ("present",)
_SPACE_SEPARATED_CLAIMS: Final = frozenset({"scope", "scp"})

_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*")
_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\]")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_TEMPLATE_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATH_CHARS = re.compile(r"[A-Za-z0-9._~!$&'()+,;=:@%-]+")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(r"/{2,}")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


# --- per-request view -------------------------------------------------------------------


class _Request:
    """The normalized parts of one request that rules compare, computed once per check."""

    __slots__ = ("caller", "headers", "host", "identities", "method", "path")

    def __init__(self, ctx: CheckContext, identities: Identities) -> None:
        self.method = ctx.method
        self.host = normalize_host(ctx.host)
        self.path = normalize_path(ctx.path_only)
        caller = identities.caller
        self.caller = None if caller is None else str(caller)
        self.headers = ctx.headers
        self.identities = identities


def normalize_host(host: str) -> str:
    """Lower-case, without ``:port`` and without a trailing dot."""
    host = host.lower()
    if ":" in host:
        if host.startswith("["):
            end = host.find("]")
            return host if end == -1 else host[: end + 1]
        name, _, port = host.rpartition(":")
        if not port or port.isdigit():
            host = name
    return host[:-1] if host.endswith(".") else host


def normalize_path(path: str) -> str:
    """Decode unreserved ``%XX``, merge ``//`` and resolve ``.``/``..`` (RFC 3986 6.2.2)."""
    if "%" not in path and "//" not in path and "/." not in path:
        return path
    path = _SLASHES.sub("/", _decode_unreserved(path))
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments[1:]:
        if segment == ".":
            continue
        if segment == "..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    normalized = "/" + "/".join(kept)
    if segments[-1] in (".", "..") and not normalized.endswith("/"):
        normalized += "/"
    return normalized


def _decode_unreserved(text: str) -> str:
    def decode(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT.sub(decode, text)


# --- conditions -------------------------------------------------------------------------


class _Condition:
    """One compiled condition of a rule: a fast ``matches`` and a human ``why_not``."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def matches(self, request: _Request) -> bool:
        raise NotImplementedError

    def why_not(self, request: _Request) -> str:
        raise NotImplementedError


def _shown(values: Any) -> str:
    return ", ".join(str(value) for value in values)


class _Hosts(_Condition):
    __slots__ = ("exact", "patterns", "suffixes")

    def __init__(self, patterns: list[str]) -> None:
        super().__init__("hosts")
        self.patterns = patterns
        self.exact = frozenset(p for p in patterns if not p.startswith("*."))
        self.suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))

    def matches(self, request: _Request) -> bool:
        return self.matches_host(request.host)

    def matches_host(self, host: str) -> bool:
        if host in self.exact:
            return True
        return host.endswith(self.suffixes) and not host.startswith(".")

    def why_not(self, request: _Request) -> str:
        return f"host {request.host!r} does not match {_shown(self.patterns)}"


class _Methods(_Condition):
    __slots__ = ("methods",)

    def __init__(self, methods: list[str]) -> None:
        super().__init__("methods")
        self.methods = frozenset(methods)

    def matches(self, request: _Request) -> bool:
        return request.method in self.methods

    def why_not(self, request: _Request) -> str:
        return f"method {request.method!r} is not one of {_shown(sorted(self.methods))}"


class _Paths(_Condition):
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

    def matches(self, request: _Request) -> bool:
        path = request.path
        if path in self.exact or path.startswith(self.prefixes):
            return True
        return self.templates is not None and self.templates.fullmatch(path) is not None

    def why_not(self, request: _Request) -> str:
        return f"path {request.path!r} does not match {_shown(self.patterns)}"


class _Callers(_Condition):
    __slots__ = ("exact", "patterns", "prefixes")

    def __init__(
        self, patterns: list[str], exact: frozenset[str], prefixes: tuple[str, ...]
    ) -> None:
        super().__init__("callers")
        self.patterns = patterns
        self.exact = exact
        self.prefixes = prefixes

    def matches(self, request: _Request) -> bool:
        caller = request.caller
        return caller is not None and (caller in self.exact or caller.startswith(self.prefixes))

    def why_not(self, request: _Request) -> str:
        if request.caller is None:
            return "no verified caller SPIFFE ID"
        return f"caller {request.caller} does not match {_shown(self.patterns)}"


class _Authenticated(_Condition):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("authenticated")

    def matches(self, request: _Request) -> bool:
        return request.identities.authenticated

    def why_not(self, request: _Request) -> str:
        return "no verified credential"


_MISSING: Final = object()


def _claim_key(value: object) -> Hashable:
    # Keep true distinct from 1 (they hash and compare equal in Python, not in JSON).
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, Hashable):
        return value
    return ("unhashable", id(value))


def _claim_members(name: str, value: object) -> set[Hashable]:
    if isinstance(value, list | tuple):
        return {_claim_key(item) for item in value}
    if isinstance(value, str) and name in _SPACE_SEPARATED_CLAIMS:
        return set(value.split())
    return {_claim_key(value)}


class _Users(_Condition):
    __slots__ = ("claims", "issuers")

    def __init__(
        self,
        issuers: frozenset[str] | None,
        claims: tuple[tuple[str, frozenset[Hashable], list[Any]], ...],
    ) -> None:
        super().__init__("users")
        self.issuers = issuers
        self.claims = claims  # (name, required keys, required values as written)

    def matches(self, request: _Request) -> bool:
        user = request.identities.user
        if user is None or (self.issuers is not None and user.issuer not in self.issuers):
            return False
        for name, required, _ in self.claims:
            value = user.claims.get(name, _MISSING)
            if value is _MISSING or not required <= _claim_members(name, value):
                return False
        return True

    def why_not(self, request: _Request) -> str:
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


class _ApiKeys(_Condition):
    __slots__ = ("names",)

    def __init__(self, names: list[str]) -> None:
        super().__init__("api_keys")
        self.names = frozenset(names)

    def matches(self, request: _Request) -> bool:
        return request.identities.api_key in self.names

    def why_not(self, request: _Request) -> str:
        if request.identities.api_key is None:
            return "no verified API key"
        return f"API key {request.identities.api_key!r} is not one of {_shown(sorted(self.names))}"


class _Headers(_Condition):
    __slots__ = ("checks",)

    def __init__(self, checks: tuple[tuple[str, frozenset[str] | bool], ...]) -> None:
        super().__init__("headers")
        # (name, accepted values) or (name, must be present)
        self.checks = checks

    def matches(self, request: _Request) -> bool:
        headers = request.headers
        for name, expected in self.checks:
            value = headers.get(name)
            if expected is True or expected is False:
                if (value is not None) is not expected:
                    return False
            elif value not in expected:
                return False
        return True

    def why_not(self, request: _Request) -> str:
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


_Check = Callable[[_Request], bool]
_Candidates = tuple[tuple[tuple[str, tuple[_Check, ...]], ...], ...]
# Distinct (method, host) pairs whose candidate rules are remembered; Host is client-chosen,
# so the table is bounded (cleared when full) rather than allowed to grow.
_CANDIDATE_CACHE_SIZE: Final = 4096


class Rule:
    """A compiled rule: its name, effect, source line and conditions."""

    __slots__ = ("checks", "conditions", "effect", "hosts", "line", "methods", "name")

    def __init__(self, name: str, effect: str, line: int, conditions: list[_Condition]) -> None:
        self.name = name
        self.effect = effect
        self.line = line
        self.conditions = tuple(conditions)
        self.methods = next((c for c in conditions if isinstance(c, _Methods)), None)
        self.hosts = next((c for c in conditions if isinstance(c, _Hosts)), None)
        # Methods and hosts are settled once per (method, host) by the rule set's candidate
        # table; the rest run per request, cheapest and most selective first.
        order = ("paths", "api_keys", "callers", "authenticated", "headers", "users")
        rest = [c for c in conditions if not isinstance(c, _Methods | _Hosts)]
        rest.sort(key=lambda c: order.index(c.key))
        self.checks: tuple[_Check, ...] = tuple(c.matches for c in rest)

    def applies_to(self, method: str, host: str) -> bool:
        return (self.methods is None or method in self.methods.methods) and (
            self.hosts is None or self.hosts.matches_host(host)
        )


class RuleSet:
    """The rules Envoy selects by name; deny rules are tried first, then allow rules in order."""

    __slots__ = ("_candidates", "_no_match", "allow_rules", "deny_rules", "name", "rules")

    def __init__(self, name: str, rules: list[Rule]) -> None:
        self.name = name
        self.rules = tuple(rules)
        self.deny_rules = tuple(r for r in rules if r.effect == "deny")
        self.allow_rules = tuple(r for r in rules if r.effect == "allow")
        self._no_match = f"no rule matched in rule set {name!r}"
        self._candidates: dict[tuple[str, str], _Candidates] = {}

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

    def decide(self, request: _Request) -> Decision:
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
                return Decision(True, Reason.ALLOWED, rule=name)
        return Decision(False, Reason.NO_MATCHING_RULE, rule=self._no_match)


class RulesPolicy:
    """The declarative-rules engine: one YAML file of rule sets, compiled at load."""

    def __init__(
        self, rule_sets: Mapping[str, RuleSet], default_rule_set: str, source_name: str
    ) -> None:
        self.name = f"rules:{source_name}"
        self.source_name = source_name
        self.rule_sets = dict(rule_sets)
        self.default_rule_set = default_rule_set

    @classmethod
    def from_text(cls, text: str, source_name: str) -> RulesPolicy:
        """Compile a policy from YAML ``text``; ``source_name`` is used in error messages."""
        return _Compiler(source_name).compile(text)

    def select(self, ctx: CheckContext) -> tuple[str, RuleSet | None]:
        """The rule set named by the ``policy`` context extension, else the default one."""
        # An empty value means "not set", as an empty audience does.
        name = ctx.context_extensions.get(RULE_SET_EXTENSION) or self.default_rule_set
        return name, self.rule_sets.get(name)

    def decide(self, ctx: CheckContext, identities: Identities) -> Decision:
        name, rule_set = self.select(ctx)
        if rule_set is None:
            return Decision(False, Reason.NO_MATCHING_RULE, rule=f"unknown rule set {name!r}")
        return rule_set.decide(_Request(ctx, identities))

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        return self.decide(ctx, identities)

    def explain(self, ctx: CheckContext, identities: Identities) -> list[str]:
        """Say which rules of the selected rule set matched and why the others did not."""
        name, rule_set = self.select(ctx)
        how = (
            f"context extension {RULE_SET_EXTENSION}={name!r}"
            if RULE_SET_EXTENSION in ctx.context_extensions
            else f"default (no {RULE_SET_EXTENSION!r} context extension)"
        )
        if rule_set is None:
            known = ", ".join(sorted(self.rule_sets)) or "none"
            return [
                f"unknown rule set {name!r}, selected by {how} (known: {known})",
                f"decision: deny ({Reason.NO_MATCHING_RULE})",
            ]
        request = _Request(ctx, identities)
        lines = [f"rule set {name!r}, selected by {how}"]
        for rule in rule_set.rules:
            label = f"{rule.effect} rule {rule.name!r} (line {rule.line})"
            failed = [
                f"{c.key}: {c.why_not(request)}" for c in rule.conditions if not c.matches(request)
            ]
            lines.append(
                f"{label}: " + ("matched" if not failed else "no match: " + "; ".join(failed))
            )
        decision = rule_set.decide(request)
        verdict = "allow" if decision.allowed else "deny"
        lines.append(f"decision: {verdict} ({decision.reason}: {decision.rule})")
        return lines


def load_rules_policy(path: Path | str) -> RulesPolicy:
    """Read and compile a rules policy file; every problem is a ``PolicyError``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: policy file is not UTF-8: {exc.reason}") from exc
    return RulesPolicy.from_text(text, str(path))


# --- compiling the YAML -----------------------------------------------------------------


class _Compiler:
    """Walks the composed YAML node tree (for line numbers), validating as it builds."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.rule_set: str | None = None
        self.rule: str | None = None
        self._constructor = yaml.constructor.SafeConstructor()

    # errors

    def error(self, node: yaml.Node | None, message: str) -> PolicyError:
        line = node.start_mark.line + 1 if node is not None else 1
        where = ""
        if self.rule is not None:
            where = f"rule {self.rule} in rule set {self.rule_set!r}: "
        elif self.rule_set is not None:
            where = f"rule set {self.rule_set!r}: "
        return PolicyError(f"{self.source}:{line}: {where}{message}")

    # node helpers

    def mapping(
        self, node: yaml.Node, what: str, allowed: tuple[str, ...] | None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping, not {self.kind(node)}")
        items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str):
                raise self.error(key_node, f"keys of {what} must be strings, not {key!r}")
            if key in items:
                raise self.error(key_node, f"duplicate key {key!r} in {what}")
            items[key] = (key_node, value_node)
        if allowed is not None:
            self.known_keys(items, allowed)
        return items

    def known_keys(
        self, items: dict[str, tuple[yaml.Node, yaml.Node]], allowed: tuple[str, ...]
    ) -> None:
        for key, (key_node, _) in items.items():
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.error(key_node, f"unknown key {key!r}{suggestion}")

    def value(self, node: yaml.Node) -> Any:
        """The Python value of a scalar node (None for a mapping or list)."""
        if not isinstance(node, yaml.ScalarNode):
            return None
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.error(node, f"bad value: {exc}") from exc

    @staticmethod
    def kind(node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        if node.tag.endswith(":null"):
            return "empty"
        return f"{node.tag.rsplit(':', 1)[-1]} {node.value!r}"

    def string(self, node: yaml.Node, what: str) -> str:
        value = self.value(node)
        if not isinstance(value, str):
            hint = ' (quote it: "..." )' if isinstance(node, yaml.ScalarNode) else ""
            raise self.error(node, f"{what} must be a string, not {self.kind(node)}{hint}")
        if not value:
            raise self.error(node, f"{what} must not be empty")
        return value

    def boolean(self, node: yaml.Node, what: str) -> bool:
        value = self.value(node)
        if not isinstance(value, bool):
            raise self.error(node, f"{what} must be true or false, not {self.kind(node)}")
        return value

    def items(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{what} must be a list, not {self.kind(node)}")
        if not node.value:
            raise self.error(node, f"{what} must not be empty (it would never match)")
        return list(node.value)

    def strings(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]]:
        return [(item, self.string(item, f"each of {what}")) for item in self.items(node, what)]

    # the document

    def compile(self, text: str) -> RulesPolicy:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = exc.problem or exc.context or "invalid YAML"
            raise PolicyError(f"{self.source}:{line}: YAML syntax error: {problem}") from exc
        except yaml.YAMLError as exc:
            raise PolicyError(f"{self.source}:1: YAML error: {exc}") from exc
        if root is None:
            raise self.error(
                None, "the policy file is empty; expected 'version: 1' and 'rule_sets'"
            )
        top = self.mapping(root, "the policy file", _TOP_KEYS)

        if "version" not in top:
            raise self.error(root, "missing 'version: 1'")
        version_node = top["version"][1]
        if self.value(version_node) != 1 or isinstance(self.value(version_node), bool):
            raise self.error(version_node, f"unsupported version {self.kind(version_node)}; use 1")

        if "rule_sets" not in top:
            raise self.error(root, "missing 'rule_sets'")
        sets_node = top["rule_sets"][1]
        rule_set_nodes = self.mapping(sets_node, "rule_sets", None)
        if not rule_set_nodes:
            raise self.error(sets_node, "rule_sets must name at least one rule set")
        rule_sets = {
            name: self.compile_rule_set(name, key_node, node)
            for name, (key_node, node) in rule_set_nodes.items()
        }
        self.rule_set = None

        default = DEFAULT_RULE_SET
        if "default_rule_set" in top:
            default_node = top["default_rule_set"][1]
            default = self.string(default_node, "default_rule_set")
            if default not in rule_sets:
                raise self.error(
                    default_node,
                    f"default_rule_set {default!r} is not a rule set "
                    f"(have: {', '.join(rule_sets)})",
                )
        return RulesPolicy(rule_sets, default, self.source)

    def compile_rule_set(self, name: str, key_node: yaml.Node, node: yaml.Node) -> RuleSet:
        self.rule_set = name
        if not name:
            raise self.error(key_node, "a rule set name must not be empty")
        fields = self.mapping(node, f"rule set {name!r}", _RULE_SET_KEYS)
        if "description" in fields:
            self.string(fields["description"][1], "description")
        if "rules" not in fields:
            raise self.error(node, "missing 'rules' (an empty list denies every request)")
        rules_node = fields["rules"][1]
        if not isinstance(rules_node, yaml.SequenceNode):
            raise self.error(rules_node, f"rules must be a list, not {self.kind(rules_node)}")
        rules: list[Rule] = []
        lines: dict[str, int] = {}
        for index, rule_node in enumerate(rules_node.value, start=1):
            rule = self.compile_rule(index, rule_node)
            if rule.name in lines:
                raise self.error(
                    rule_node, f"duplicate rule name (first defined at line {lines[rule.name]})"
                )
            lines[rule.name] = rule.line
            rules.append(rule)
        self.rule = None
        return RuleSet(name, rules)

    def compile_rule(self, index: int, node: yaml.Node) -> Rule:
        # The name first, so that every later error (even a duplicate key) names the rule.
        self.rule = f"#{index}"
        for key_node, value_node in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.value == "name" and isinstance(value_node, yaml.ScalarNode):
                self.rule = repr(value_node.value)
        fields = self.mapping(node, "a rule", None)
        name = self.string(fields["name"][1], "name") if "name" in fields else ""
        self.known_keys(fields, _RULE_KEYS)
        if not name:
            raise self.error(node, "missing required key 'name'")
        if "description" in fields:
            self.string(fields["description"][1], "description")
        if "effect" not in fields:
            raise self.error(node, "missing required key 'effect' (allow or deny)")
        effect_node = fields["effect"][1]
        effect = self.value(effect_node)
        if effect not in ("allow", "deny"):
            raise self.error(
                effect_node, f"effect must be 'allow' or 'deny', not {self.kind(effect_node)}"
            )

        conditions: list[_Condition] = []
        for key, (_, value_node) in fields.items():
            condition = self.compile_condition(key, value_node)
            if condition is not None:
                conditions.append(condition)
        return Rule(name, str(effect), node.start_mark.line + 1, conditions)

    def compile_condition(self, key: str, node: yaml.Node) -> _Condition | None:
        match key:
            case "hosts":
                return _Hosts([self.host(n, s) for n, s in self.strings(node, key)])
            case "methods":
                return _Methods([self.method(n, s) for n, s in self.strings(node, key)])
            case "paths":
                return self.paths(node)
            case "callers":
                return self.callers(node)
            case "authenticated":
                return _Authenticated() if self.boolean(node, key) else None
            case "users":
                return self.users(node)
            case "api_keys":
                return _ApiKeys([s for _, s in self.strings(node, key)])
            case "headers":
                return self.headers(node)
        return None  # name, description, effect

    def host(self, node: yaml.Node, text: str) -> str:
        host = text.lower()
        host = host[:-1] if host.endswith(".") else host
        name = host[2:] if host.startswith("*.") else host
        if not _HOST.fullmatch(name):
            why = (
                "a port is not allowed (the request's port is ignored)"
                if ":" in name and not name.startswith("[")
                else "'*.' is only allowed as a leading label"
                if "*" in name
                else "not a host name"
            )
            raise self.error(node, f"bad host pattern {text!r}: {why}")
        return host

    def method(self, node: yaml.Node, text: str) -> str:
        if not _METHOD.fullmatch(text):
            hint = (
                f" (HTTP methods are case-sensitive; use {text.upper()!r})"
                if text.upper() != text
                else ""
            )
            raise self.error(node, f"bad method {text!r}{hint}")
        return text

    def paths(self, node: yaml.Node) -> _Paths:
        patterns: list[str] = []
        exact: set[str] = set()
        prefixes: list[str] = []
        templates: list[str] = []
        for item, text in self.strings(node, "paths"):
            patterns.append(text)
            kind, value = self.path_pattern(item, text)
            if kind == "exact":
                exact.add(value)
            elif kind == "prefix":
                exact.add(value)
                prefixes.append(value + "/")
            else:
                templates.append(value)
        regex = re.compile("|".join(f"(?:{t})" for t in templates)) if templates else None
        return _Paths(patterns, frozenset(exact), tuple(prefixes), regex)

    def path_pattern(self, node: yaml.Node, text: str) -> tuple[str, str]:
        """Classify and normalize one path pattern: ("exact"|"prefix"|"template", value)."""

        def bad(why: str) -> PolicyError:
            return self.error(node, f"bad path pattern {text!r}: {why}")

        if not text.startswith("/"):
            raise bad("must start with '/'")
        if "?" in text or "#" in text:
            raise bad("a query or fragment is not matched; give the path only")
        body, prefix = text, False
        if text.endswith("/*"):
            body, prefix = text[:-2], True
        segments = body.split("/")[1:] if body else []
        regex_parts: list[str] = []
        names: set[str] = set()
        for position, segment in enumerate(segments):
            last = position == len(segments) - 1
            if segment == "" and not (last and not prefix):
                raise bad("empty segment ('//')")
            if segment in (".", ".."):
                raise bad(f"segment {segment!r} never matches a normalized path")
            if "*" in segment:
                raise bad("'*' is only allowed as the whole last segment ('/prefix/*')")
            variable = _TEMPLATE_VAR.fullmatch(segment)
            if variable is not None:
                if variable.group(1) in names:
                    raise bad(f"template variable {{{variable.group(1)}}} is used twice")
                names.add(variable.group(1))
                regex_parts.append("[^/]+")
                continue
            if "{" in segment or "}" in segment:
                raise bad("a template variable is a whole segment: '{name}'")
            if segment and not _PATH_CHARS.fullmatch(segment):
                raise bad(f"segment {segment!r} has characters not allowed in a path")
            regex_parts.append(re.escape(_decode_unreserved(segment)))
        normalized = "/".join(["", *(_decode_unreserved(s) for s in segments)])
        if names and prefix:
            regex = "/".join(["", *regex_parts]) + "(?:/.*)?"
            return "template", regex
        if names:
            return "template", "/".join(["", *regex_parts])
        if prefix:
            return "prefix", normalized
        return "exact", normalized or "/"

    def callers(self, node: yaml.Node) -> _Callers:
        patterns: list[str] = []
        exact: set[str] = set()
        prefixes: list[str] = []
        for item, text in self.strings(node, "callers"):
            patterns.append(text)
            if text.endswith("/*"):
                base = text[:-2]
                try:
                    parsed = SpiffeId.parse(base)
                except InvalidSpiffeId as exc:
                    raise self.error(item, f"bad caller pattern: {exc}") from exc
                if parsed.path:
                    exact.add(base)  # "<id>/*" includes <id> itself; "<td>/*" only workloads
                prefixes.append(base + "/")
                continue
            if "*" in text:
                raise self.error(
                    item, f"bad caller pattern {text!r}: '*' is only allowed as a final '/*'"
                )
            try:
                parsed = SpiffeId.parse(text)
            except InvalidSpiffeId as exc:
                raise self.error(item, f"bad caller: {exc}") from exc
            if not parsed.is_workload:
                raise self.error(
                    item,
                    f"bad caller {text!r}: a trust domain ID is never a caller; use "
                    f"'{text}/*' for any workload of the trust domain",
                )
            exact.add(text)
        return _Callers(patterns, frozenset(exact), tuple(prefixes))

    def users(self, node: yaml.Node) -> _Users:
        fields = self.mapping(node, "users", _USER_KEYS)
        issuers = None
        if "issuers" in fields:
            issuers = frozenset(s for _, s in self.strings(fields["issuers"][1], "issuers"))
        claims: list[tuple[str, frozenset[Hashable], list[Any]]] = []
        if "claims" in fields:
            claim_nodes = self.mapping(fields["claims"][1], "claims", None)
            if not claim_nodes:
                raise self.error(fields["claims"][1], "claims must not be empty")
            for claim, (_, value_node) in claim_nodes.items():
                what = f"claim {claim!r}"
                values_nodes = (
                    self.items(value_node, what)
                    if isinstance(value_node, yaml.SequenceNode)
                    else [value_node]
                )
                values = [self.claim_value(n, what) for n in values_nodes]
                claims.append((claim, frozenset(_claim_key(v) for v in values), values))
        return _Users(issuers, tuple(claims))

    def claim_value(self, node: yaml.Node, what: str) -> str | int | float | bool:
        value = self.value(node)
        if not isinstance(value, str | int | float | bool):
            raise self.error(
                node,
                f"{what} must be a string, number, boolean or a list of them, "
                f"not {self.kind(node)}",
            )
        return value

    def headers(self, node: yaml.Node) -> _Headers:
        header_nodes = self.mapping(node, "headers", None)
        if not header_nodes:
            raise self.error(node, "headers must not be empty")
        checks: list[tuple[str, frozenset[str] | bool]] = []
        for raw_name, (key_node, value_node) in header_nodes.items():
            name = raw_name.lower()
            if not _HEADER_NAME.fullmatch(name):
                raise self.error(key_node, f"bad header name {raw_name!r}")
            what = f"header {name!r}"
            if isinstance(value_node, yaml.MappingNode):
                present = self.mapping(value_node, what, _HEADER_KEYS)
                if "present" not in present:
                    raise self.error(value_node, f"{what}: expected {{present: true|false}}")
                checks.append((name, self.boolean(present["present"][1], "present")))
            elif isinstance(value_node, yaml.SequenceNode):
                checks.append((name, frozenset(s for _, s in self.strings(value_node, what))))
            else:
                checks.append((name, frozenset([self.header_value(value_node, what)])))
        return _Headers(tuple(checks))

    def header_value(self, node: yaml.Node, what: str) -> str:
        value = self.value(node)
        if not isinstance(value, str):
            raise self.error(
                node, f'{what} must be a string, not {self.kind(node)} (quote it: "...")'
            )
        return value

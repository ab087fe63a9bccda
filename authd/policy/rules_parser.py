"""The rules engine's parser: the YAML policy file, validated and compiled into rule sets.

Walks the composed YAML node tree (not the loaded data), so that every mistake is a
``PolicyError`` naming the file, the 1-based line and the rule. The format is documented in
``authd.policy.rules``; the compiled pieces live in ``authd.policy.rules_evaluator``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Hashable
from typing import Any, Final

import yaml

from authd.check.request_path import decode_unreserved
from authd.policy.base import PolicyError
from authd.policy.rules_evaluator import (
    ApiKeys,
    At,
    Authenticated,
    Callers,
    CallPath,
    Condition,
    Headers,
    Hosts,
    Methods,
    Paths,
    Rule,
    RuleSet,
    SpiffeIdPattern,
    TxnScopes,
    Users,
    claim_key,
)
from ca.errors import InvalidSpiffeId
from ca.spiffe_id import SpiffeId

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
    "at",
    "from",
    "txn_scopes",
    "txn_scope",
)
_USER_KEYS: Final = ("issuers", "claims")
_HEADER_KEYS: Final = ("present",)

_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*")
_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\]")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_TEMPLATE_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATH_CHARS = re.compile(r"[A-Za-z0-9._~!$&'()+,;=:@%-]+")
_ENCODED_SLASH = re.compile(r"%(?:2[fF]|5[cC])")


class RulesCompiler:
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

    def compile(self, text: str) -> tuple[dict[str, RuleSet], str]:
        """The rule sets of the policy ``text``, by name, and the default rule set's name."""
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
        return rule_sets, default

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

        conditions: list[Condition] = []
        for key, (_, value_node) in fields.items():
            condition = self.compile_condition(key, value_node, str(effect))
            if condition is not None:
                conditions.append(condition)
        txn_scope = None
        if "txn_scope" in fields:
            scope_node = fields["txn_scope"][1]
            if effect != "allow":
                raise self.error(scope_node, "txn_scope narrows what an allow rule lets through")
            if isinstance(scope_node, yaml.SequenceNode):
                txn_scope = tuple(s for _, s in self.strings(scope_node, "txn_scope"))
            else:
                txn_scope = tuple(self.string(scope_node, "txn_scope").split())
        return Rule(name, str(effect), node.start_mark.line + 1, conditions, txn_scope)

    def compile_condition(
        self, key: str, node: yaml.Node, effect: str = "allow"
    ) -> Condition | None:
        match key:
            case "hosts":
                return Hosts([self.host(n, s) for n, s in self.strings(node, key)])
            case "methods":
                return Methods([self.method(n, s) for n, s in self.strings(node, key)])
            case "paths":
                return self.paths(node)
            case "callers":
                return self.callers(node, any_identity=effect == "deny")
            case "authenticated":
                return Authenticated() if self.boolean(node, key) else None
            case "users":
                return self.users(node)
            case "api_keys":
                return ApiKeys([s for _, s in self.strings(node, key)])
            case "headers":
                return self.headers(node)
            case "at":
                return At(self.spiffe_ids(node, key))
            case "from":
                return self.call_path(node)
            case "txn_scopes":
                return TxnScopes([s for _, s in self.strings(node, key)])
        return None  # name, description, effect, txn_scope

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

    def paths(self, node: yaml.Node) -> Paths:
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
        return Paths(patterns, frozenset(exact), tuple(prefixes), regex)

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
            if _ENCODED_SLASH.search(segment):
                raise bad("an encoded '/' or '\\' never matches: such request paths are refused")
            if segment and not _PATH_CHARS.fullmatch(segment):
                raise bad(f"segment {segment!r} has characters not allowed in a path")
            regex_parts.append(re.escape(decode_unreserved(segment)))
        normalized = "/".join(["", *(decode_unreserved(s) for s in segments)])
        if names and prefix:
            regex = "/".join(["", *regex_parts]) + "(?:/.*)?"
            return "template", regex
        if names:
            return "template", "/".join(["", *regex_parts])
        if prefix:
            return "prefix", normalized
        return "exact", normalized or "/"

    def callers(self, node: yaml.Node, *, any_identity: bool = False) -> Callers:
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
        return Callers(patterns, frozenset(exact), tuple(prefixes), any_identity=any_identity)

    def spiffe_ids(self, node: yaml.Node, what: str) -> SpiffeIdPattern:
        """A list of SPIFFE IDs or ``<id>/*`` patterns, as ``callers`` takes."""
        callers = self.callers(node)
        return SpiffeIdPattern(callers.patterns, callers.exact, callers.prefixes)

    def call_path(self, node: yaml.Node) -> CallPath:
        items = self.items(node, "from")
        if len(items) > 2:
            raise self.error(
                node,
                "from names the front door that minted the Txn-Token and the mTLS peer "
                "(at most two SPIFFE IDs); the hops between them are not recorded",
            )
        hops = []
        for item in items:
            if isinstance(item, yaml.SequenceNode):
                hops.append(self.spiffe_ids(item, "from"))
            else:
                single = yaml.SequenceNode("tag:yaml.org,2002:seq", [item])
                single.start_mark = item.start_mark
                hops.append(self.spiffe_ids(single, "from"))
        return CallPath(hops)

    def users(self, node: yaml.Node) -> Users:
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
                claims.append((claim, frozenset(claim_key(v) for v in values), values))
        return Users(issuers, tuple(claims))

    def claim_value(self, node: yaml.Node, what: str) -> str | int | float | bool:
        value = self.value(node)
        if not isinstance(value, str | int | float | bool):
            raise self.error(
                node,
                f"{what} must be a string, number, boolean or a list of them, "
                f"not {self.kind(node)}",
            )
        return value

    def headers(self, node: yaml.Node) -> Headers:
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
        return Headers(tuple(checks))

    def header_value(self, node: yaml.Node, what: str) -> str:
        value = self.value(node)
        if not isinstance(value, str):
            raise self.error(
                node, f'{what} must be a string, not {self.kind(node)} (quote it: "...")'
            )
        return value

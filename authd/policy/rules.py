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
          - name: orders-pay             # at the payments hop: only calls the front door
            effect: allow                #   let in, forwarded by orders, allowed to pay
            at: ["spiffe://example.org/payments"]
            from: ["spiffe://example.org/gateway", "spiffe://example.org/orders"]
            txn_scopes: [pay]
            txn_scope: [pay]             # the Txn-Token sent on carries only "pay"

Every condition is optional; a rule matches when all its conditions hold (AND), and a list
condition holds when any element matches (OR). A rule without conditions matches every
request. In a rule set, a matching ``deny`` rule wins; otherwise the first matching ``allow``
rule (in file order) allows; otherwise the request is denied with ``no_matching_rule``.

Conditions, and exactly what they compare:

- ``hosts``: the request's host, lower-cased, without ``:port`` or a trailing dot. An entry is
  an exact name or ``*.suffix``, which matches any name ending in ``.suffix`` (one or more
  labels, as Envoy's virtual hosts do) but not ``suffix`` itself.
- ``methods``: upper-case HTTP methods (methods are case-sensitive in HTTP).
- ``paths``: the path without query string, normalized first (``authd.check.request_path``:
  unreserved ``%XX`` decoded, ``//`` merged, ``.``/``..`` segments resolved; an encoded ``/``
  or ``\\`` is refused before any rule runs) so an encoded or dotted spelling cannot slip
  past a deny rule. An entry is exact (``/orders``), a template whose ``{name}`` segments match
  exactly one non-empty segment (``/orders/{id}``), or ``/prefix/*``, which matches ``/prefix``
  and everything below it, segment-aware (``/static/*`` matches ``/static/a/b``, not
  ``/staticx``); ``/*`` matches every path.
- ``callers``: the verified calling workload (``Identities.caller``: the JWT-SVID subject,
  else the mTLS peer). An entry is a workload SPIFFE ID, or ``<id>/*`` for that ID and every
  ID below it; ``spiffe://<trust-domain>/*`` is any workload of that trust domain. In a
  ``deny`` rule the condition holds when *either* the mTLS peer or the JWT-SVID subject
  matches, so presenting a JWT-SVID never hides a denied peer (or the reverse).
- ``authenticated: true``: some credential verified (``false`` adds no condition).
- ``users``: a verified end user, optionally from one of ``issuers``, whose token has every
  listed claim: a scalar must equal the claim, or be a member of it when the claim is a list
  (or, for ``scope``/``scp``, a space-separated string); a list requires all its values.
- ``api_keys``: the name of the API key that verified.
- ``headers``: lower-case header name to an exact value, a list of accepted values, or
  ``{present: true|false}``.
- ``at``: the hop deciding, as ``callers`` patterns: the route's ``at`` context extension,
  else the asking Envoy's own SPIFFE ID (``destination.principal`` on an mTLS listener), so
  one file can hold the rules of the front door and of every hop.
- ``from: [minter, peer]``: the call path. The request carries a verified Txn-Token whose
  ``req_wl`` (the front door that minted it) matches ``minter``, and the mTLS peer matches
  ``peer``; ``from: [id]`` means both are ``id``. An allow rule that fails only on ``from``
  denies with reason ``call-path`` (403) when no other rule allows.
- ``txn_scopes``: the verified Txn-Token's scope holds every listed value.

And one action: ``txn_scope`` (a list, or a space-separated string) on an allow rule narrows
the scope of the Txn-Token sent upstream (minted at a front door, or replaced at a hop); a
scope wider than the one carried (or the end user's) is refused with ``txn_scope_widened``.

The file is read by ``rules_parser``; the compiled rules decide in ``rules_evaluator``.
Every mistake is a ``PolicyError`` naming the file, the 1-based line and the rule, e.g.
``policy.yaml:14: rule 'orders-read' in rule set 'default': unknown key 'method' (did you
mean 'methods'?)``. Nothing is parsed per request: patterns become sets, prefix tuples and
one regex per rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

from authd.check.errors import MalformedRequest
from authd.check.model import CheckContext, Decision, Identities, Reason
from authd.policy.base import InputDocument, PolicyError
from authd.policy.rules_evaluator import RequestView, RuleSet, normalize_host
from authd.policy.rules_parser import DEFAULT_RULE_SET, RulesCompiler

__all__ = [
    "DEFAULT_RULE_SET",
    "RULE_SET_EXTENSION",
    "RulesPolicy",
    "load_rules_policy",
    "normalize_host",
]

RULE_SET_EXTENSION: Final = "policy"  # the ext_authz context_extensions key


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
        rule_sets, default = RulesCompiler(source_name).compile(text)
        return cls(rule_sets, default, source_name)

    def select(self, ctx: CheckContext) -> tuple[str, RuleSet | None]:
        """The rule set named by the ``policy`` context extension, else the default one."""
        # An empty value means "not set", as an empty audience does.
        name = ctx.context_extensions.get(RULE_SET_EXTENSION) or self.default_rule_set
        return name, self.rule_sets.get(name)

    def decide(self, ctx: CheckContext, identities: Identities) -> Decision:
        name, rule_set = self.select(ctx)
        if rule_set is None:
            return Decision(False, Reason.NO_MATCHING_RULE, rule=f"unknown rule set {name!r}")
        return rule_set.decide(RequestView(ctx, identities))

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
        try:
            request = RequestView(ctx, identities)
        except MalformedRequest as exc:
            return [
                f"request refused before any rule: {exc}",
                f"decision: deny ({Reason.MALFORMED_REQUEST})",
            ]
        lines = [f"rule set {name!r}, selected by {how}"]
        if request.at is not None:
            lines.append(f"at hop {request.at}: a rule with `at` applies only at the hops it names")
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

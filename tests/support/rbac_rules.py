"""Random rule sets for the compiler's property tests (hypothesis strategies)."""

from __future__ import annotations

from hypothesis import strategies as st

WEB = "spiffe://example.org/web"
ADMIN = "spiffe://example.org/admin"
PROD_API = "spiffe://example.org/ns/prod/api"


def policy(rules: str) -> str:
    """A policy file with one rule set ``s`` holding ``rules`` (YAML list items)."""
    return "version: 1\nrule_sets:\n  s:\n    rules:\n" + rules


IDS = [WEB, ADMIN, PROD_API, "spiffe://example.org/ns/prod", "spiffe://other.org/x"]
CALLER_PATTERNS = [WEB, ADMIN, PROD_API, "spiffe://example.org/ns/prod/*", "spiffe://other.org/*"]
PATH_PATTERNS = ["/", "/a", "/a/*", "/a/{id}", "/a/{id}/b", "/a/b", "/a/b/*", "/c/{x}/*", "/*"]
PATHS = [
    "/",
    "/a",
    "/a/",
    "/a?q=1",
    "/a/b",
    "/a/b/c",
    "/a/x",
    "/a/x/b",
    "/a/x/b?z",
    "/c/1",
    "/c/1/2",
    "/c",
    "/d",
    "/a/%62",
    "/a/./b",
    "/a//b",
    "/a/b/..",
    "*",
]
METHODS = ["GET", "POST", "DELETE"]


@st.composite
def rules_yaml(draw: st.DrawFn) -> str:
    lines = []
    for index in range(draw(st.integers(0, 5))):
        parts = [f"name: r{index}", f"effect: {draw(st.sampled_from(['allow', 'deny']))}"]
        if draw(st.booleans()):
            methods = draw(st.lists(st.sampled_from(METHODS), min_size=1, max_size=2, unique=True))
            parts.append(f"methods: [{', '.join(methods)}]")
        if draw(st.booleans()):
            paths = draw(
                st.lists(st.sampled_from(PATH_PATTERNS), min_size=1, max_size=3, unique=True)
            )
            parts.append("paths: [" + ", ".join(f'"{p}"' for p in paths) + "]")
        if draw(st.booleans()):
            callers = draw(
                st.lists(st.sampled_from(CALLER_PATTERNS), min_size=1, max_size=2, unique=True)
            )
            parts.append("callers: [" + ", ".join(f'"{c}"' for c in callers) + "]")
        if draw(st.integers(0, 4)) == 0:
            parts.append("headers: {x-tenant: acme}")
        if draw(st.integers(0, 4)) == 0:
            parts.append("authenticated: true")
        lines.append("      - {" + ", ".join(parts) + "}\n")
    return policy("".join(lines) or "      []\n").replace("rules:\n      []", "rules: []")


MANY_CALLER = "spiffe://example.org/caller/{}"


def many_callers_policy(size: int, rule_set: str = "s") -> str:
    """``size`` rules, one per caller ``MANY_CALLER``: ``allow GET /orders/{id}``."""
    rules = "".join(
        f'      - {{name: c{i}, effect: allow, methods: [GET], paths: ["/orders/{{id}}"], '
        f'callers: ["{MANY_CALLER.format(i)}"]}}\n'
        for i in range(size)
    )
    return (
        f"version: 1\ndefault_rule_set: {rule_set}\nrule_sets:\n  {rule_set}:\n    rules:\n" + rules
    )

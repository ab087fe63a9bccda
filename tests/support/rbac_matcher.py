"""A reference reading of Envoy's xDS matcher, for checking the compiled RBAC tree in Python.

It follows the semantics of ``xds.type.matcher.v3.Matcher`` for what the compiler emits:
a matcher list tries its field matchers in order and takes the first whose predicate holds;
a matcher tree looks its input up in an ``exact_match_map``, or takes the longest matching
key of a ``prefix_match_map``; either falls back to
``on_no_match``. An input with no value (no such header, no peer certificate) matches no
predicate and no key, as in Envoy. The answer is the RBAC action's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.type.matcher.v3 import http_inputs_pb2


def rbac_matcher(typed_extension_config: Any) -> Any:
    config = rbac_pb2.RBAC()
    assert typed_extension_config.typed_config.Unpack(config)
    return config.matcher


def _input(config: Any, peer: str | None, headers: Mapping[str, str]) -> str | None:
    url = config.typed_config.type_url
    if url.endswith("UriSanInput"):
        return peer
    header = http_inputs_pb2.HttpRequestHeaderMatchInput()
    assert config.typed_config.Unpack(header), url
    return headers.get(header.header_name)


def _string_match(matcher: Any, value: str) -> bool:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "exact":
        return value == matcher.exact
    if kind == "prefix":
        return value.startswith(matcher.prefix)
    if kind == "suffix":
        return value.endswith(matcher.suffix)
    if kind == "contains":
        return matcher.contains in value
    if kind == "safe_regex":
        return re.fullmatch(matcher.safe_regex.regex, value, re.DOTALL) is not None
    raise AssertionError(f"unexpected string matcher {kind}")


def _predicate(predicate: Any, peer: str | None, headers: Mapping[str, str]) -> bool:
    kind = predicate.WhichOneof("match_type")
    if kind == "single_predicate":
        value = _input(predicate.single_predicate.input, peer, headers)
        return value is not None and _string_match(predicate.single_predicate.value_match, value)
    if kind == "or_matcher":
        return any(_predicate(p, peer, headers) for p in predicate.or_matcher.predicate)
    if kind == "and_matcher":
        return all(_predicate(p, peer, headers) for p in predicate.and_matcher.predicate)
    if kind == "not_matcher":
        return not _predicate(predicate.not_matcher, peer, headers)
    raise AssertionError(f"unexpected predicate {kind}")


def _on_match(on_match: Any, peer: str | None, headers: Mapping[str, str]) -> str:
    if on_match.HasField("matcher"):
        return evaluate(on_match.matcher, peer, headers)
    action = rbac_config_pb2.Action()
    assert on_match.action.typed_config.Unpack(action)
    return str(action.name)


def evaluate(matcher: Any, peer: str | None, headers: Mapping[str, str]) -> str:
    """The name of the RBAC action the tree picks for a request (``headers`` include
    ``:method`` and ``:path``; ``peer`` is the URI SAN of the client certificate)."""
    if matcher.HasField("matcher_list"):
        for field_matcher in matcher.matcher_list.matchers:
            if _predicate(field_matcher.predicate, peer, headers):
                return _on_match(field_matcher.on_match, peer, headers)
    else:
        tree = matcher.matcher_tree
        value = _input(tree.input, peer, headers)
        if value is not None and value in tree.exact_match_map.map:
            return _on_match(tree.exact_match_map.map[value], peer, headers)
        prefixes = tree.prefix_match_map.map
        matching = [p for p in prefixes if value is not None and value.startswith(p)]
        if matching:  # the longest matching prefix wins
            return _on_match(prefixes[max(matching, key=len)], peer, headers)
    assert matcher.HasField("on_no_match"), "every level of the compiled tree has a fallback"
    return _on_match(matcher.on_no_match, peer, headers)

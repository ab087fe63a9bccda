"""Masking decision events as OPA's decision log plugin does (plugins/logs/mask.go)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authd.authz.opa_log_mask import MAX_RULES, MaskError, apply_mask, mask_rules


def event() -> dict[str, Any]:
    return {
        "decision_id": "d1",
        "input": {
            "attributes": {"request": {"http": {"headers": {"authorization": "Bearer x"}}}},
            "parsed_path": ["api", "orders"],
            "password": "hunter2",
        },
        "result": {"allowed": True, "headers": {"x-a": "1"}},
    }


def masked(rules: Any) -> dict[str, Any]:
    e = event()
    apply_mask(e, mask_rules(rules))
    return e


def test_a_path_string_removes_and_is_recorded_in_erased() -> None:
    e = masked(["/input/password", "/input/attributes/request/http/headers/authorization"])
    assert "password" not in e["input"]
    assert e["input"]["attributes"]["request"]["http"]["headers"] == {}
    assert e["erased"] == [
        "/input/password",
        "/input/attributes/request/http/headers/authorization",
    ]
    assert "masked" not in e


def test_upsert_sets_a_value_creating_objects_and_is_recorded_in_masked() -> None:
    e = masked(
        [
            {"op": "upsert", "path": "/input/password", "value": "**REDACTED**"},
            {"op": "upsert", "path": "/input/new/deep", "value": 1},
        ]
    )
    assert e["input"]["password"] == "**REDACTED**"
    assert e["input"]["new"] == {"deep": 1}
    assert e["masked"] == ["/input/password", "/input/new/deep"]


def test_remove_by_list_index_and_whole_parts() -> None:
    e = masked(["/input/parsed_path/0", "/result"])
    assert e["input"]["parsed_path"] == ["orders"]
    assert "result" not in e
    assert e["erased"] == ["/input/parsed_path/0", "/result"]


def test_a_path_that_is_not_there_is_skipped_and_not_recorded() -> None:
    e = masked(
        ["/input/nope", "/input/parsed_path/7", {"op": "upsert", "path": "/input/parsed_path/9/x"}]
    )
    assert e == event()


def test_upsert_of_a_whole_part_replaces_it() -> None:
    e = masked([{"op": "upsert", "path": "/input", "value": {"gone": True}}])
    assert e["input"] == {"gone": True}
    assert e["masked"] == ["/input"]


def test_paths_are_recorded_escaped_as_opa_records_them() -> None:
    e = event()
    e["input"]["a%20b"] = 1  # OPA matches keys in their path-escaped form
    apply_mask(e, mask_rules(["/input/a b"]))
    assert "a%20b" not in e["input"]
    assert e["erased"] == ["/input/a%20b"]


@pytest.mark.parametrize(
    "rules",
    [
        "/input/password",  # not a set
        [""],
        ["input/password"],
        ["/data/x"],
        ["/input/%zz"],
        [{"op": "delete", "path": "/input/x"}],
        [{"op": 1, "path": "/input/x"}],
        [{"path": 7}],
        [3],
        ["/input/x"] * (MAX_RULES + 1),
    ],
)
def test_a_rule_set_opa_refuses_is_a_mask_error(rules: Any) -> None:
    with pytest.raises(MaskError):
        mask_rules(rules)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)
segments = st.sampled_from(["input", "result", "nd_builtin_cache", "data", ""]) | st.text(
    max_size=6
)
paths = st.lists(st.text(alphabet="ab0129%/ _", max_size=5), max_size=6).map(
    lambda p: "/" + "/".join(p)
)
rule_items = (
    paths
    | st.builds(
        lambda p, o, v: {"op": o, "path": p, "value": v},
        paths,
        st.sampled_from(["remove", "upsert", "x"]),
        json_values,
    )
    | json_values
)


@settings(max_examples=300, deadline=None)
@given(
    document=st.fixed_dictionaries({"input": json_values, "result": json_values}),
    rules=st.lists(rule_items, max_size=12) | json_values,
)
def test_masking_never_raises_anything_but_mask_error_and_stays_json(
    document: dict[str, Any], rules: Any
) -> None:
    e = copy.deepcopy(document)
    try:
        parsed = mask_rules(rules)
    except MaskError:
        return
    apply_mask(e, parsed)
    json.dumps(e)  # still plain JSON
    # Bounded: each rule records at most one path, and removal never grows the event.
    assert len(e.get("erased", [])) + len(e.get("masked", [])) <= len(parsed)
    if all(rule.op == "remove" for rule in parsed):
        assert len(json.dumps(e)) <= len(json.dumps(document)) + 32 * len(parsed) + 32


@settings(max_examples=200, deadline=None)
@given(
    document=json_values,
    keys=st.lists(st.text(alphabet="abc", min_size=1, max_size=2), min_size=1, max_size=4),
)
def test_removing_a_present_key_removes_exactly_it(document: Any, keys: list[str]) -> None:
    e: dict[str, Any] = {"input": {}}
    node = e["input"]
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = document
    apply_mask(e, mask_rules(["/input/" + "/".join(keys)]))
    node = e["input"]
    for key in keys[:-1]:
        node = node[key]
    assert keys[-1] not in node
    assert e["erased"] == ["/input/" + "/".join(keys)]

"""The one-regex test for paths that may normalise differently agrees with its definition.

The compiled tree sends such a path to ext_authz with ``not prefix "/"`` or ``UNSAFE_REGEX``
(one read of ``:path``); ``is_unsafe_path`` is the definition by substrings. Hypothesis
searches paths built from the characters that matter for a disagreement.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from authd.xds.rbac_paths import UNSAFE_REGEX, is_unsafe_path

PATHS = st.text(alphabet="/.?%\\ab\n", max_size=12)


def regex_says_unsafe(path: str) -> bool:
    return not path.startswith("/") or re.fullmatch(UNSAFE_REGEX, path, re.DOTALL) is not None


@given(PATHS)
def test_the_regex_is_the_definition(path: str) -> None:
    assert regex_says_unsafe(path) == is_unsafe_path(path)


def test_examples() -> None:
    for path in ("/a/./b", "/a/../b", "/a//b", "/a%2e", "/a\\b", "/a/.", "/a/..", "/.?x", "a"):
        assert regex_says_unsafe(path), path
    for path in ("/", "/a/b", "/a.b/c", "/a/.b", "/a/b?x=/.", "/a/..b"):
        assert regex_says_unsafe(path) == is_unsafe_path(path), path
    assert not regex_says_unsafe("/orders/7?expand=1")

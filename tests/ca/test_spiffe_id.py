"""SPIFFE-ID.md in both directions: what parses (and round-trips), and what is refused, and why."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.errors import InvalidSpiffeId
from ca.spiffe_id import MAX_ID_BYTES, MAX_TRUST_DOMAIN_BYTES, SpiffeId, TrustDomain

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=300)

TD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-_"
PATH_CHARS = TD_CHARS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# --- valid IDs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "trust_domain", "path"),
    [
        ("spiffe://example.org", "example.org", ""),
        ("spiffe://example.org/workload", "example.org", "/workload"),
        ("spiffe://example.org/ns/prod/sa/web-1", "example.org", "/ns/prod/sa/web-1"),
        ("spiffe://a/B.c-D_e", "a", "/B.c-D_e"),
        ("spiffe://under_score-and-dash.0/x", "under_score-and-dash.0", "/x"),
        ("spiffe://example.org/.../a..b/.x", "example.org", "/.../a..b/.x"),
    ],
)
def test_valid_spiffe_id_parses_into_trust_domain_and_path(
    text: str, trust_domain: str, path: str
) -> None:
    parsed = SpiffeId.parse(text)
    assert parsed.trust_domain == TrustDomain(trust_domain)
    assert parsed.path == path
    assert str(parsed) == text


def test_spiffe_id_of_exactly_2048_bytes_is_accepted() -> None:
    prefix = "spiffe://example.org/"
    text = prefix + "a" * (MAX_ID_BYTES - len(prefix))
    assert len(text.encode()) == MAX_ID_BYTES
    assert str(SpiffeId.parse(text)) == text


def test_trust_domain_of_exactly_255_bytes_is_accepted() -> None:
    name = "a" * MAX_TRUST_DOMAIN_BYTES
    assert SpiffeId.parse(f"spiffe://{name}/x").trust_domain.name == name


def test_workload_id_has_a_path_and_trust_domain_id_has_none() -> None:
    assert SpiffeId.parse("spiffe://example.org/w").is_workload
    assert not SpiffeId.parse("spiffe://example.org").is_workload
    assert TrustDomain("example.org").id == SpiffeId.parse("spiffe://example.org")


def test_member_of_compares_trust_domains() -> None:
    spiffe_id = SpiffeId.parse("spiffe://example.org/w")
    assert spiffe_id.member_of(TrustDomain("example.org"))
    assert not spiffe_id.member_of(TrustDomain("example.com"))


# --- invalid IDs: each says what is wrong ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("spiffe://Example.org/w", r"'E'.*must be lowercase"),
        ("spiffe://example.org:8443/w", "port"),
        ("spiffe://user@example.org/w", "userinfo"),
        ("spiffe://user:secret@example.org/w", "userinfo"),
        ("spiffe://example.org/w?x=1", "query"),
        ("spiffe://example.org/w#frag", "fragment"),
        ("spiffe://example.org//w", "empty segment"),
        ("spiffe://example.org/w//x", "empty segment"),
        ("spiffe://example.org/w/", "trailing '/'"),
        ("spiffe://example.org/", "trailing '/'"),
        ("spiffe://example.org/./w", r"segment '\.' is not allowed"),
        ("spiffe://example.org/w/..", r"segment '\.\.' is not allowed"),
        ("spiffe://example.org/w/%41", "path character '%'"),
        ("spiffe://example.org/w x", "path character ' '"),
        ("spiffe://example.org/wé", "path character 'é'"),
        ("spiffe://exa mple.org/w", "trust domain character ' '"),
        ("https://example.org/w", "scheme must be 'spiffe', not 'https'"),
        ("SPIFFE://example.org/w", "scheme must be lowercase"),
        ("Spiffe://example.org/w", "scheme must be lowercase"),
        ("example.org/w", "missing scheme"),
        ("spiffe:example.org/w", "missing scheme"),
        ("spiffe:///w", "trust domain is missing"),
        ("spiffe://", "trust domain is missing"),
    ],
)
def test_invalid_spiffe_id_is_rejected_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(InvalidSpiffeId, match=problem):
        SpiffeId.parse(text)


def test_spiffe_id_longer_than_2048_bytes_is_rejected() -> None:
    prefix = "spiffe://example.org/"
    text = prefix + "a" * (MAX_ID_BYTES - len(prefix) + 1)
    with pytest.raises(InvalidSpiffeId, match="longer than 2048 bytes"):
        SpiffeId.parse(text)


def test_spiffe_id_length_limit_counts_utf8_bytes_not_characters() -> None:
    # 1500 two-byte characters: under 2048 characters, over 2048 bytes.
    text = "spiffe://example.org/" + "é" * 1500
    with pytest.raises(InvalidSpiffeId, match="longer than 2048 bytes"):
        SpiffeId.parse(text)


def test_trust_domain_longer_than_255_bytes_is_rejected() -> None:
    with pytest.raises(InvalidSpiffeId, match="trust domain is longer than 255 bytes"):
        SpiffeId.parse("spiffe://" + "a" * (MAX_TRUST_DOMAIN_BYTES + 1) + "/w")


def test_non_string_spiffe_id_is_rejected() -> None:
    with pytest.raises(InvalidSpiffeId, match="must be a string"):
        SpiffeId.parse(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [["spiffe://example.org/w"], {"id": "spiffe://example.org/w"}],
    ids=["list", "dict"],
)
def test_unhashable_spiffe_id_value_is_rejected_with_invalid_spiffe_id(value: object) -> None:
    # Values decoded from JSON (a JWT's sub, an API body) can be any JSON type.
    with pytest.raises(InvalidSpiffeId, match="must be a string"):
        SpiffeId.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    ["spiffe://example.org/w\ud800", "spiffe://exa\udc00mple.org/w", "\udfff"],
    ids=["path", "trust-domain", "alone"],
)
def test_spiffe_id_with_lone_surrogate_is_rejected_with_invalid_spiffe_id(text: str) -> None:
    # json.loads('"\\ud800"') produces such strings, so a JWT's sub can carry one.
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(text)


# --- trust domains ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["example.org", "spiffe://example.org"])
def test_trust_domain_parses_from_name_or_trust_domain_id(text: str) -> None:
    assert TrustDomain.parse(text) == TrustDomain("example.org")
    assert str(TrustDomain.parse(text)) == "example.org"


def test_trust_domain_id_with_path_is_rejected() -> None:
    with pytest.raises(InvalidSpiffeId, match="must not have a path"):
        TrustDomain.parse("spiffe://example.org/workload")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Example.org", "must be lowercase"),
        ("example.org:443", "port"),
        ("", "missing"),
        ("https://example.org", "scheme must be 'spiffe'"),
        ("a" * 256, "longer than 255 bytes"),
    ],
)
def test_invalid_trust_domain_is_rejected_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(InvalidSpiffeId, match=problem):
        TrustDomain.parse(text)


def test_trust_domain_spiffe_id_builds_a_workload_id() -> None:
    td = TrustDomain("example.org")
    assert td.spiffe_id("/ns/web") == SpiffeId.parse("spiffe://example.org/ns/web")
    with pytest.raises(InvalidSpiffeId):
        td.spiffe_id("/bad path")


# --- properties -------------------------------------------------------------------------

trust_domain_names = st.text(alphabet=TD_CHARS, min_size=1, max_size=60)
segments = st.text(alphabet=PATH_CHARS, min_size=1, max_size=20).filter(
    lambda s: s not in (".", "..")
)
paths = st.lists(segments, max_size=8).map(lambda parts: "".join("/" + p for p in parts))


@DETERMINISTIC
@given(trust_domain_names, paths)
def test_generated_valid_spiffe_ids_parse_and_round_trip(name: str, path: str) -> None:
    text = f"spiffe://{name}{path}"
    parsed = SpiffeId.parse(text)
    assert parsed.trust_domain.name == name
    assert parsed.path == path
    assert str(parsed) == text
    assert SpiffeId.parse(str(parsed)) == parsed


# '/' ends the trust domain, so it cannot be "inside" one; everything else outside the
# allowed set must be refused wherever it appears in the name.
forbidden_td_chars = st.characters(codec="utf-8").filter(lambda c: c not in TD_CHARS + "/")


@DETERMINISTIC
@given(st.text(alphabet=TD_CHARS, max_size=30), forbidden_td_chars, st.text(TD_CHARS), paths)
def test_trust_domain_with_any_forbidden_character_is_rejected(
    before: str, bad: str, after: str, path: str
) -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(f"spiffe://{before}{bad}{after}{path}")
    with pytest.raises(InvalidSpiffeId):
        TrustDomain.parse(f"{before}{bad}{after}")


@DETERMINISTIC
@given(trust_domain_names, paths, forbidden_td_chars.filter(lambda c: c not in PATH_CHARS))
def test_path_with_any_forbidden_character_is_rejected(name: str, path: str, bad: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(f"spiffe://{name}{path}/x{bad}y")


@DETERMINISTIC
@given(st.text())
def test_parse_of_arbitrary_text_raises_only_invalid_spiffe_id(text: str) -> None:
    try:
        parsed = SpiffeId.parse(text)
    except InvalidSpiffeId as exc:
        assert str(exc)
    else:
        assert str(parsed) == text


@DETERMINISTIC
@given(st.text(alphabet=st.sampled_from("spiffe:/.?#@%aZ9-_é \x00")))
def test_parse_of_id_like_text_raises_only_invalid_spiffe_id(text: str) -> None:
    try:
        parsed = SpiffeId.parse(text)
    except InvalidSpiffeId as exc:
        assert str(exc)
    else:
        assert str(parsed) == text

"""The minimal DER encoder behind the leaf template: lengths, integers, OIDs and times.

pyca/cryptography is the independent oracle wherever it exposes an encoding.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from ca import der
from ca.certificate_authority import CertificateAuthority
from ca.clock import FakeClock
from ca.spiffe_id import SpiffeId

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=300)


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, "0400"),
        (0x7F, "047f"),
        (0x80, "048180"),
        (0xFF, "0481ff"),
        (0x100, "04820100"),
        (0xFFFF, "0482ffff"),
        (0x10000, "0483010000"),
    ],
)
def test_length_uses_short_form_below_128_and_minimal_long_form_above(
    size: int, header: str
) -> None:
    encoded = der.octet_string(b"\x00" * size)
    assert encoded[: len(header) // 2].hex() == header
    assert len(encoded) == len(header) // 2 + size


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        (0, "020100"),
        (1, "020101"),
        (127, "02017f"),
        (128, "02020080"),
        (255, "020200ff"),
        (256, "02020100"),
        (0x7FFF, "02027fff"),
        (0x8000, "0203008000"),
    ],
)
def test_integer_is_minimal_and_positive(value: int, encoding: str) -> None:
    assert der.integer(value).hex() == encoding


def test_integer_refuses_negative_values() -> None:
    with pytest.raises(ValueError, match="negative"):
        der.integer(-1)


@DETERMINISTIC
@given(st.integers(min_value=0, max_value=2**200))
def test_integer_content_is_minimal_twos_complement(value: int) -> None:
    encoded = der.integer(value)
    assert encoded[0] == 0x02
    content = encoded[2:] if encoded[1] < 0x80 else encoded[2 + (encoded[1] & 0x7F) :]
    assert int.from_bytes(content, "big", signed=True) == value
    if len(content) > 1:  # no redundant leading octet
        assert not (content[0] == 0x00 and content[1] < 0x80)


@pytest.mark.parametrize(
    ("dotted", "encoding"),
    [
        ("2.5.29.19", "0603551d13"),
        ("1.2.840.10045.4.3.2", "06082a8648ce3d040302"),
        ("1.2.840.113549.1.1.11", "06092a864886f70d01010b"),
        ("1.3.6.1.5.5.7.3.1", "06082b06010505070301"),
        ("0.9.2342.19200300.100.1.1", "060a0992268993f22c640101"),
        ("2.999.3", "0603883703"),  # X.690 8.19.5's own example: first subidentifier 1079
        ("2.100.3", "0603813403"),
    ],
)
def test_oid_encodes_known_identifiers(dotted: str, encoding: str) -> None:
    assert der.oid(dotted).hex() == encoding


def _pyca_oid_der(dotted: str) -> bytes:
    """The DER of an OID as pyca writes it, dug out of a one-attribute Name."""
    name = x509.Name([x509.NameAttribute(x509.ObjectIdentifier(dotted), "v")])
    encoded = name.public_bytes()
    # SEQUENCE { SET { SEQUENCE { OID, UTF8String } } }, all short lengths here: OID at 6.
    assert encoded[6] == 0x06
    return encoded[6 : 8 + encoded[7]]


oid_arcs = st.one_of(
    st.tuples(st.sampled_from([0, 1]), st.integers(0, 39)),
    st.tuples(st.just(2), st.integers(0, 2000)),
)


@DETERMINISTIC
@given(oid_arcs, st.lists(st.integers(0, 2**40), min_size=1, max_size=6))
def test_oid_matches_pyca_for_any_identifier(head: tuple[int, int], tail: list[int]) -> None:
    dotted = ".".join(str(a) for a in (*head, *tail))
    assert der.oid(dotted) == _pyca_oid_der(dotted)


@pytest.mark.parametrize(
    ("when", "encoding"),
    [
        (dt.datetime(1950, 1, 1, tzinfo=dt.UTC), b"\x17\x0d500101000000Z"),
        (dt.datetime(2026, 9, 21, 14, 13, 20, tzinfo=dt.UTC), b"\x17\x0d260921141320Z"),
        (dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC), b"\x17\x0d491231235959Z"),
        (dt.datetime(2050, 1, 1, tzinfo=dt.UTC), b"\x18\x0f20500101000000Z"),
        (dt.datetime(1949, 12, 31, 23, 59, 59, tzinfo=dt.UTC), b"\x18\x0f19491231235959Z"),
        (dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC), b"\x18\x0f99991231235959Z"),
    ],
)
def test_time_is_utctime_from_1950_through_2049_and_generalized_time_otherwise(
    when: dt.datetime, encoding: bytes
) -> None:
    assert der.time(when) == encoding


def test_time_converts_to_utc() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert der.time(dt.datetime(2030, 1, 1, 2, 0, 0, tzinfo=plus_two)) == b"\x17\x0d300101000000Z"
    # crossing into 2050 only after conversion
    late = dt.datetime(2050, 1, 1, 1, 0, 0, tzinfo=plus_two)
    assert der.time(late) == b"\x17\x0d491231230000Z"


def test_boolean_octet_and_bit_strings() -> None:
    assert der.boolean(True).hex() == "0101ff"
    assert der.boolean(False).hex() == "010100"
    assert der.octet_string(b"ab").hex() == "04026162"
    assert der.bit_string(b"\x88", unused_bits=3).hex() == "03020388"
    assert der.bit_string(b"").hex() == "030100"


def test_tags_sequence_explicit_and_implicit() -> None:
    assert der.sequence().hex() == "3000"
    assert der.sequence(der.boolean(True), der.integer(1)).hex() == "30060101ff020101"
    assert der.explicit(0, der.integer(2)).hex() == "a003020102"
    assert der.explicit(3, b"").hex() == "a300"
    assert der.implicit(6, b"spiffe://x/y").hex() == "860c" + b"spiffe://x/y".hex()
    assert der.implicit(2, b"a.b").hex() == "8203612e62"


def test_extension_omits_critical_when_false() -> None:
    value = x509.BasicConstraints(ca=False, path_length=None).public_bytes()
    critical = der.extension(der.oid("2.5.29.19"), value, critical=True)
    assert critical.hex() == "300c" + "0603551d13" + "0101ff" + "0402" + value.hex()
    plain = der.extension(der.oid("2.5.29.19"), value, critical=False)
    assert plain.hex() == "3009" + "0603551d13" + "0402" + value.hex()


@pytest.mark.parametrize(
    ("start", "ttl"),
    [
        (dt.datetime(2049, 12, 31, 23, 0, 0, tzinfo=dt.UTC), 7200),  # UTCTime to GeneralizedTime
        (dt.datetime(2051, 6, 1, 12, 0, 0, tzinfo=dt.UTC), 3600),  # GeneralizedTime only
    ],
)
def test_leaves_issued_near_and_after_2050_carry_exact_validity(
    open_ca: Any, tmp_path: Any, key: Any, make_csr: Any, start: dt.datetime, ttl: int
) -> None:
    clock = FakeClock(start=start.timestamp())
    ca: CertificateAuthority = open_ca(tmp_path, clock=clock)
    svid = ca.issue_x509_svid(
        make_csr(key("P-256")),
        spiffe_id=SpiffeId.parse("spiffe://example.org/w"),
        ttl=ttl,
        requester="t",
    )
    assert svid.leaf.not_valid_before_utc == start - dt.timedelta(seconds=10)
    assert svid.leaf.not_valid_after_utc == start + dt.timedelta(seconds=ttl)
    assert ca.verify_x509_svid(svid.chain).path == "/w"

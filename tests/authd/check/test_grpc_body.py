"""gRPC request bodies decoded with a protoset, as the OPA-Envoy plugin decodes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from authd.check.grpc_body import (
    NOT_DECODED,
    TRUNCATED,
    Decoded,
    GrpcBodyError,
    GrpcMessages,
    ProtosetError,
)
from tests.support.protoset import SERVICE, grpc_frame, message_class, protoset_bytes

PROTOSET = protoset_bytes()
MESSAGES = GrpcMessages(PROTOSET)
OrderRequest = message_class(PROTOSET, "shop.v1.OrderRequest")
PLACE = [SERVICE, "Place"]


def order(**fields: Any) -> Any:
    return OrderRequest(**fields)


def test_the_first_message_is_given_as_protojson() -> None:
    message = order(
        customer_id="c1",
        total_cents=12345,
        items=[{"sku": "a", "count": 2}],
        labels={"k": "v"},
        colour=2,
        blob=b"\x00\xff",
        gift=True,
        ratio=0.5,
    )
    message.placed_at.seconds = 10
    raw = grpc_frame(message.SerializeToString()) + grpc_frame(b"second message ignored")
    assert MESSAGES.decode(raw, PLACE) == Decoded(
        {
            "customerId": "c1",
            "totalCents": "12345",  # int64 as a string
            "items": [{"sku": "a", "count": 2}],
            "labels": {"k": "v"},
            "colour": "BLUE",
            "blob": "AP8=",
            "gift": True,
            "placedAt": "1970-01-01T00:00:10Z",
            "ratio": 0.5,
        }
    )


def test_zero_values_are_left_out() -> None:
    assert MESSAGES.decode(grpc_frame(b""), PLACE) == Decoded({})


def test_a_server_streaming_method_is_decoded_but_not_a_client_streaming_one() -> None:
    raw = grpc_frame(order(customer_id="c").SerializeToString())
    assert MESSAGES.decode(raw, [SERVICE, "Watch"]) == Decoded({"customerId": "c"})
    assert MESSAGES.decode(raw, [SERVICE, "Upload"]) is NOT_DECODED


@pytest.mark.parametrize(
    "path", [["shop.v1.Nope", "Place"], [SERVICE, "Nope"], ["shop.v1.Item", "Place"], ["", ""]]
)
def test_an_unknown_service_or_method_is_not_decoded(path: list[str]) -> None:
    assert MESSAGES.decode(grpc_frame(b""), path) is NOT_DECODED


def test_a_compressed_message_is_not_decoded_and_a_short_one_is_truncated() -> None:
    payload = order(customer_id="c").SerializeToString()
    assert MESSAGES.decode(grpc_frame(payload, compressed=True), PLACE) is NOT_DECODED
    assert MESSAGES.decode(grpc_frame(payload)[:-1], PLACE) is TRUNCATED


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x00\x00", grpc_frame(b"\xff\xff\xff")])
def test_bytes_that_are_not_a_message_are_an_error(raw: bytes) -> None:
    with pytest.raises(GrpcBodyError):
        MESSAGES.decode(raw, PLACE)


def test_a_message_nesting_past_the_bound_is_an_error() -> None:
    message = order()
    nest = message.nest
    for _ in range(70):
        nest = nest.inner
    nest.leaf = "deep"
    with pytest.raises(GrpcBodyError, match="deeper"):
        MESSAGES.decode(grpc_frame(message.SerializeToString()), PLACE)


def test_a_message_holding_more_values_than_the_bound_is_an_error() -> None:
    labels = grpc_frame(order(labels={"a": "1", "b": "2", "c": "3"}).SerializeToString())
    assert MESSAGES.decode(labels, PLACE, max_fields=3) == Decoded(
        {"labels": {"a": "1", "b": "2", "c": "3"}}
    )
    with pytest.raises(GrpcBodyError, match="more than 2 values"):
        MESSAGES.decode(labels, PLACE, max_fields=2)
    # Values inside repeated messages count too: 2 items of 2 fields each, plus the list.
    items = grpc_frame(order(items=[{"sku": "a", "count": 1}] * 2).SerializeToString())
    assert MESSAGES.decode(items, PLACE, max_fields=6) != NOT_DECODED
    with pytest.raises(GrpcBodyError):
        MESSAGES.decode(items, PLACE, max_fields=5)


def test_a_protoset_must_hold_its_imports(tmp_path: Path) -> None:
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(PROTOSET)
    without = descriptor_pb2.FileDescriptorSet(
        file=[f for f in fds.file if not f.name.startswith("google/")]
    )
    with pytest.raises(ProtosetError, match="not in the set"):
        GrpcMessages(without.SerializeToString())
    with pytest.raises(ProtosetError):
        GrpcMessages(b"\xff\xff not a descriptor set")
    with pytest.raises(ProtosetError, match="cannot read"):
        GrpcMessages.load(tmp_path / "missing.protoset")
    path = tmp_path / "ok.protoset"
    path.write_bytes(PROTOSET)
    assert GrpcMessages.load(path).decode(grpc_frame(b""), PLACE) == Decoded({})


_ITEMS = st.lists(
    st.fixed_dictionaries({"sku": st.text(max_size=10), "count": st.integers(-(2**31), 2**31 - 1)}),
    max_size=4,
)


@settings(max_examples=50)
@given(
    st.text(max_size=30),
    st.integers(-(2**63), 2**63 - 1),
    _ITEMS,
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.binary(max_size=20),
)
def test_any_message_reads_back_as_its_json_form(
    customer: str, cents: int, items: list[dict[str, Any]], labels: dict[str, str], blob: bytes
) -> None:
    message = order(customer_id=customer, total_cents=cents, items=items, labels=labels, blob=blob)
    decoded = MESSAGES.decode(grpc_frame(message.SerializeToString()), PLACE)
    assert decoded == Decoded(json_format.MessageToDict(message))


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_are_a_grpc_body_error(raw: bytes) -> None:
    try:
        result = MESSAGES.decode(raw, PLACE)
    except GrpcBodyError:
        return
    assert result is TRUNCATED or isinstance(result, Decoded)

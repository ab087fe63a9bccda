"""``parsed_body`` / ``truncated_body`` as the OPA-Envoy plugin sets them (getParsedBody)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from hypothesis import given
from hypothesis import strategies as st

from authd.check.errors import MalformedRequest
from authd.check.grpc_body import GrpcMessages
from authd.check.input_document import input_document, pruned_input_document
from authd.check.model import CheckContext
from authd.check.opa_envoy_input import DEFAULT_BODY_PARSING, BodyParsing, check_parsable
from tests.support.protoset import SERVICE, grpc_frame, message_class, protoset_bytes

PROTOSET = protoset_bytes()
GRPC = BodyParsing(grpc=GrpcMessages(PROTOSET))
MULTIPART = "multipart/form-data; boundary=XyZ"
FORM = b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--XyZ--\r\n'


def ctx(
    body: bytes = b"",
    path: str = "/",
    check_request: Any = None,
    **headers: str,
) -> CheckContext:
    return CheckContext(
        method="POST",
        host="h",
        path=path,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
        body=body,
        check_request=check_request,
    )


def body_of(c: CheckContext, parsing: BodyParsing = DEFAULT_BODY_PARSING) -> tuple[Any, Any]:
    check_parsable(c, parsing)
    document = input_document(c, opa_envoy=True)
    return document.get("parsed_body", "absent"), document.get("truncated_body", "absent")


def test_multipart_bodies_are_parsed() -> None:
    assert body_of(ctx(FORM, content_type=MULTIPART)) == ({"a": ["1"]}, False)


def test_the_content_type_is_tested_in_the_plugins_order() -> None:
    # "contains", JSON first: a multipart type naming application/json is read as JSON.
    odd = "multipart/form-data; boundary=XyZ; x=application/json"
    with pytest.raises(MalformedRequest):
        check_parsable(ctx(FORM, content_type=odd))
    assert body_of(ctx(b'{"a": 1}', content_type="application/json+multipart/form-data")) == (
        {"a": 1},
        False,
    )


def test_multipart_without_a_boundary_is_null_and_a_bad_type_is_malformed() -> None:
    assert body_of(ctx(FORM, content_type="multipart/form-data")) == (None, False)
    with pytest.raises(MalformedRequest):
        check_parsable(ctx(FORM, content_type="multipart/form-data; boundary"))
    with pytest.raises(MalformedRequest):
        check_parsable(ctx(b"--XyZ\r\nbroken", content_type=MULTIPART))


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/x-www-form-urlencoded", MULTIPART]
)
def test_a_body_shorter_than_content_length_is_truncated(content_type: str) -> None:
    assert body_of(ctx(FORM, content_type=content_type, content_length="9999")) == (None, True)
    assert body_of(ctx(FORM, content_type=content_type, x_envoy_auth_partial_body="true")) == (
        None,
        True,
    )
    with pytest.raises(MalformedRequest):
        check_parsable(ctx(FORM, content_type=content_type, content_length="9" * 20))


def test_content_length_is_read_as_gos_parse_int() -> None:
    assert body_of(
        ctx(b"a=1", content_type="application/x-www-form-urlencoded", content_length="+03")
    ) == (
        {"a": ["1"]},
        False,
    )
    assert body_of(
        ctx(b"a=1", content_type="application/x-www-form-urlencoded", content_length="-1")
    ) == (
        {"a": ["1"]},
        False,
    )
    for bad in ("", "+", "1.0", "0x3", "9223372036854775808"):
        with pytest.raises(MalformedRequest):
            check_parsable(ctx(b"a=1", content_type="application/json", content_length=bad))


def test_skip_request_body_parse_leaves_both_members_out() -> None:
    skip = BodyParsing(skip=True)
    assert body_of(ctx(b"{not json", content_type="application/json"), skip) == ("absent", "absent")
    c = ctx(b"{}", content_type="application/json")
    check_parsable(c, skip)
    assert pruned_input_document(c, [("parsed_body",), ("truncated_body",)], opa_envoy=True) == {}


def test_a_body_past_the_parse_cap_is_malformed() -> None:
    small = BodyParsing(max_bytes=8)
    with pytest.raises(MalformedRequest, match="longer than 8"):
        check_parsable(ctx(b'{"a": "123456"}', content_type="application/json"), small)


def _order(**fields: Any) -> bytes:
    return grpc_frame(message_class(PROTOSET, "shop.v1.OrderRequest")(**fields).SerializeToString())


def grpc_request(raw: bytes = b"", body: str = "") -> Any:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.raw_body = raw
    request.attributes.request.http.body = body
    return request


def test_grpc_bodies_are_decoded_with_the_protoset() -> None:
    raw = _order(customer_id="c1", total_cents=5)
    path = f"/{SERVICE}/Place"
    expected = ({"customerId": "c1", "totalCents": "5"}, False)
    # Over gRPC the plugin reads raw_body (pack_as_bytes), over HTTP mode the body as sent.
    assert (
        body_of(ctx(raw, path, grpc_request(raw), content_type="application/grpc"), GRPC)
        == expected
    )
    assert body_of(ctx(raw, path, content_type="application/grpc+proto"), GRPC) == expected
    text_only = grpc_request(body="not raw")
    assert body_of(ctx(b"x", path, text_only, content_type="application/grpc"), GRPC) == (
        None,
        False,
    )
    # No protoset: not decoded.
    assert body_of(ctx(raw, path, content_type="application/grpc")) == (None, False)
    # A message longer than what arrived.
    assert body_of(ctx(raw[:-1], path, content_type="application/grpc"), GRPC) == (None, True)


def test_a_grpc_path_of_other_than_two_segments_or_a_bad_message_is_malformed() -> None:
    raw = _order(customer_id="c1")
    with pytest.raises(MalformedRequest, match="body"):
        check_parsable(ctx(raw, f"/api/{SERVICE}/Place", content_type="application/grpc"), GRPC)
    with pytest.raises(MalformedRequest, match="body"):
        check_parsable(ctx(b"\x00\x00", f"/{SERVICE}/Place", content_type="application/grpc"), GRPC)


@given(
    body=st.one_of(st.binary(max_size=400), st.just(FORM), st.just(_order(customer_id="x"))),
    content_type=st.sampled_from(
        [
            MULTIPART,
            'multipart/form-data; boundary="XyZ"',
            "multipart/form-data; boundary*=utf-8''XyZ",
            "multipart/form-data",
            "application/grpc",
            "application/x-www-form-urlencoded",
            "application/json",
        ]
    ),
    path=st.sampled_from([f"/{SERVICE}/Place", f"/{SERVICE}/Upload", "/a/b/c", "/"]),
    length=st.sampled_from(["", "0", "10", "400", "-1"]),
)
def test_hostile_bodies_are_parsed_or_malformed_never_an_error(
    body: bytes, content_type: str, path: str, length: str
) -> None:
    headers = {"content_type": content_type}
    if length:
        headers["content_length"] = length
    c = ctx(body, path, **headers)
    try:
        check_parsable(c, GRPC)
    except MalformedRequest:
        return
    input_document(c, opa_envoy=True)


def test_json_is_read_as_utf_8_only_as_gos_decoder_reads_it() -> None:
    assert body_of(ctx(b'{"a": "x\xffy"}', content_type="application/json")) == (
        {"a": "x\ufffdy"},
        False,
    )
    for body in (b'\xef\xbb\xbf{"a": 1}', '{"a": 1}'.encode("utf-16")):
        with pytest.raises(MalformedRequest):
            check_parsable(ctx(body, content_type="application/json"))


def test_a_grpc_message_past_the_parse_cap_is_malformed() -> None:
    raw = _order(customer_id="x" * 2000)
    capped = BodyParsing(grpc=GRPC.grpc, max_bytes=1024)
    with pytest.raises(MalformedRequest, match="longer than 1024"):
        check_parsable(ctx(raw, f"/{SERVICE}/Place", content_type="application/grpc"), capped)
    # Not decoded anyway (unknown method): nothing to refuse.
    unknown = ctx(raw, f"/{SERVICE}/Nope", content_type="application/grpc")
    assert body_of(unknown, capped) == (None, False)


def test_a_query_or_form_with_more_fields_than_gos_bound_is_malformed() -> None:
    # Go's url.ParseQuery refuses more than 10,000 parameters (GODEBUG urlmaxqueryparams).
    at_bound = "&".join(["a=1"] * 10_000)
    assert body_of(ctx(path="/?" + at_bound)) == (None, False)
    with pytest.raises(MalformedRequest, match="query"):
        check_parsable(ctx(path="/?" + at_bound + "&b=2"))
    form = "application/x-www-form-urlencoded"
    assert len(body_of(ctx(at_bound.encode(), content_type=form))[0]["a"]) == 10_000
    with pytest.raises(MalformedRequest, match="body"):
        check_parsable(ctx((at_bound + "&b=2").encode(), content_type=form))


def test_a_refused_body_is_never_quoted_in_the_reason() -> None:
    secret = b"s3cr3t-t0ken"
    bodies = [
        (
            b'--XyZ\r\nContent-Disposition: form-data; name="' + secret + b'"\r\n'
            b"Content-Type: application/json\r\n\r\n{" + secret + b"\r\n--XyZ--",
            MULTIPART,
        ),
        (b"--XyZ\r\n" + secret + b"\r\n\r\n--XyZ--", MULTIPART),
        (secret + b"=%zz", "application/x-www-form-urlencoded"),
        (b'{"' + secret, "application/json"),
    ]
    for body, content_type in bodies:
        with pytest.raises(MalformedRequest) as refused:
            check_parsable(ctx(body, content_type=content_type))
        assert secret.decode() not in str(refused.value)

"""`authd xds status`: each stream judged against what authd serves for the names it asked,
and a node without the revocation filter named (it does not refuse revoked IDs natively)."""

from __future__ import annotations

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.xds_commands import missing_filters, node_state, unserved_filters

RULES, REVOKED = "authd.rbac", "authd.rbac.revoked"


def reply(*nodes: tuple[str, str]) -> admin_pb2.ListXdsNodesResponse:
    message = admin_pb2.ListXdsNodesResponse(enabled=True, version="r1")
    message.resources.add(filter_name=RULES, version="r1", config_bytes=9000)
    message.resources.add(filter_name=REVOKED, version="v1", config_bytes=400)
    for node_id, name in nodes:
        message.nodes.add(node_id=node_id, resource_names=[name])
    return message


def test_a_node_without_the_revocation_filter_is_named() -> None:
    answer = reply(("both", RULES), ("both", REVOKED), ("old", RULES))
    assert missing_filters(answer) == {"old": [REVOKED]}


def test_a_node_asking_for_nothing_authd_serves_is_not_ours_to_judge() -> None:
    assert missing_filters(reply(("other", "some.other.filter"))) == {}


def test_each_stream_is_in_step_with_its_own_resource() -> None:
    rules = admin_pb2.XdsNode(acked_version="r1", sent_version="r1", serving_version="r1")
    revoked = admin_pb2.XdsNode(acked_version="v1", sent_version="v1", serving_version="v1")
    behind = admin_pb2.XdsNode(acked_version="v0", sent_version="v1", serving_version="v1")
    assert node_state(rules, "r1") == "in step"
    assert node_state(revoked, "r1") == "in step"  # not compared with the rules' version
    assert node_state(behind, "r1") == "awaiting ack"
    refused = admin_pb2.XdsNode(
        acked_version="v0",
        sent_version="v1",
        serving_version="v1",
        last_nack="no",
        nacked_version="v1",
    )
    assert node_state(refused, "r1") == "refused"


def test_a_node_asking_for_a_filter_authd_does_not_serve_is_named() -> None:
    # A native-only sidecar against an authd with [xds] native_only off: it finds no config.
    answer = reply(("only", "authd.rbac.native_only"), ("only", REVOKED), ("both", RULES))
    assert unserved_filters(answer) == {"only": ["authd.rbac.native_only"]}

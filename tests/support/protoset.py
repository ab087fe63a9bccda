"""A FileDescriptorSet for tests of gRPC body decoding, compiled from a test proto with
grpcio-tools (``protoc --include_imports``), and gRPC frames of its messages."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

TEST_PROTO = """\
syntax = "proto3";
package shop.v1;

import "google/protobuf/timestamp.proto";

enum Colour { COLOUR_UNSPECIFIED = 0; RED = 1; BLUE = 2; }

message Item { string sku = 1; int32 count = 2; }

message Nest { Nest inner = 1; string leaf = 2; }

message OrderRequest {
  string customer_id = 1;
  int64 total_cents = 2;
  repeated Item items = 3;
  map<string, string> labels = 4;
  Colour colour = 5;
  bytes blob = 6;
  bool gift = 7;
  google.protobuf.Timestamp placed_at = 8;
  double ratio = 9;
  Nest nest = 10;
}

message OrderReply { string id = 1; }

service Orders {
  rpc Place(OrderRequest) returns (OrderReply);
  rpc Watch(OrderRequest) returns (stream OrderReply);
  rpc Upload(stream OrderRequest) returns (OrderReply);
}
"""

SERVICE = "shop.v1.Orders"


def compile_protoset(out_dir: Path, proto: str = TEST_PROTO) -> Path:
    """``out_dir/test.protoset``: ``proto`` and every file it imports."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    source = out_dir / "shop.proto"
    source.write_text(proto)
    target = out_dir / "test.protoset"
    code = protoc.main(
        [
            "protoc",
            f"-I{out_dir}",
            f"-I{include}",
            "--include_imports",
            f"--descriptor_set_out={target}",
            str(source),
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed ({code})")
    return target


def protoset_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return compile_protoset(Path(tmp)).read_bytes()


def message_class(descriptor_set: bytes, name: str) -> Any:
    """A message class of the set, from a pool of its own (not the default pool)."""
    pool = descriptor_pool.DescriptorPool()
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    added: set[str] = set()
    files = {f.name: f for f in fds.file}

    def add(file: Any) -> None:
        if file.name in added:
            return
        for dep in file.dependency:
            add(files[dep])
        pool.Add(file)
        added.add(file.name)

    for file in fds.file:
        add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def grpc_frame(payload: bytes, *, compressed: bool = False) -> bytes:
    """One gRPC length-prefixed message."""
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload

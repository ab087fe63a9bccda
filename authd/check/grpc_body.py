"""gRPC request bodies decoded with a protoset, as the OPA-Envoy plugin decodes them.

``GrpcMessages.load(path)`` reads a FileDescriptorSet (``protoc --include_imports
--descriptor_set_out``); every import must be in the set, as Go's ``protodesc.NewFiles``
requires. ``decode(raw, parsed_path)`` reads the first message of a gRPC body (5-byte frame
header: compressed flag, big-endian length) as the input type of method
``parsed_path[1]`` of service ``parsed_path[0]`` (full name) and gives it as protojson
would: camelCase names, zero values left out, 64-bit integers as strings, enums by name.
Its answers, the plugin's: ``Decoded(value)``, ``NOT_DECODED`` (a compressed frame, an
unknown service or method, a client-streaming method), ``TRUNCATED`` (the frame says more
than arrived), or ``GrpcBodyError`` (fewer than 5 bytes, not that message, not JSON-able).
An ``Any`` is resolved among the types authd links (well-known and Envoy's), as the plugin
resolves among the Go types it links. A message longer than ``max_bytes``, holding more than
``max_fields`` values or nesting deeper than ``max_depth`` levels is a ``GrpcBodyError``
(authd's bounds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError

from authd.check.bounded_json import MAX_JSON_BYTES, MAX_JSON_DEPTH, nesting_depth

_FRAME_HEADER: Final = 5
# Values (fields set, list and map entries) in one decoded message: converting each costs
# Python time on the event loop, so a message of more is refused, as a form of more fields.
MAX_FIELDS: Final = 10_000


class GrpcBodyError(ValueError):
    """The gRPC body cannot be read as the method's input message."""


class ProtosetError(ValueError):
    """The protoset file is not a FileDescriptorSet whose imports it all holds."""


@dataclass(frozen=True, slots=True)
class Decoded:
    value: Any


NOT_DECODED: Final = Decoded(None)
TRUNCATED: Final = object()


def _ordered(files: list[descriptor_pb2.FileDescriptorProto]) -> list[Any]:
    """The files with every import before its importer; raises on a missing import."""
    by_name = {f.name: f for f in files}
    if len(by_name) != len(files):
        raise ProtosetError("a file appears twice in the protoset")
    ordered: list[Any] = []
    done: set[str] = set()
    for root in files:
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            item, expanded = stack.pop()
            if item.name in done:
                continue
            if expanded:
                done.add(item.name)
                ordered.append(item)
                continue
            stack.append((item, True))
            for dep in item.dependency:
                if dep not in by_name:
                    raise ProtosetError(f"{item.name} imports {dep}, which is not in the set")
                if dep not in done:
                    stack.append((by_name[dep], False))
    return ordered


def _check_size(message: Any, limit: int) -> None:
    """Raise ``GrpcBodyError`` once ``message`` holds more than ``limit`` values; stops there."""
    count = 0
    stack = [message]
    while stack:
        for field, value in stack.pop().ListFields():
            nested = field.message_type
            if nested is not None and nested.GetOptions().map_entry:
                count += len(value)
                if nested.fields_by_name["value"].message_type is not None:
                    stack.extend(value.values())
            elif field.is_repeated:
                count += len(value)
                if nested is not None:
                    stack.extend(value)
            else:
                count += 1
                if nested is not None:
                    stack.append(value)
            if count > limit:
                raise GrpcBodyError(f"the message holds more than {limit} values")


class GrpcMessages:
    """The services of one protoset, and the decoding of their methods' request bodies."""

    def __init__(self, descriptor_set: bytes) -> None:
        try:
            fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
        except DecodeError as exc:
            raise ProtosetError("not a FileDescriptorSet") from exc
        self._pool = descriptor_pool.DescriptorPool()
        try:
            for file in _ordered(list(fds.file)):
                self._pool.Add(file)
        except ProtosetError:
            raise
        except Exception as exc:  # the pool's own checks: duplicate or unresolved names
            raise ProtosetError(f"the protoset does not load: {exc}") from exc
        self._classes: dict[str, Any] = {}

    @classmethod
    def load(cls, path: Path) -> GrpcMessages:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ProtosetError(f"cannot read {path}: {exc.strerror}") from exc
        return cls(data)

    def _input_class(self, service: str, method: str) -> Any:
        key = f"{service}/{method}"
        cls = self._classes.get(key)
        if cls is None:
            try:
                svc = self._pool.FindServiceByName(service)
            except (KeyError, TypeError):
                return None
            m = svc.methods_by_name.get(method)
            if m is None or m.client_streaming:
                return None
            cls = self._classes[key] = message_factory.GetMessageClass(m.input_type)
        return cls

    def decode(
        self,
        raw: bytes,
        parsed_path: list[str],
        *,
        max_depth: int = MAX_JSON_DEPTH,
        max_bytes: int = MAX_JSON_BYTES,
        max_fields: int = MAX_FIELDS,
    ) -> Any:
        """``Decoded``, ``NOT_DECODED`` or ``TRUNCATED`` for ``raw``; see the module."""
        if len(raw) < _FRAME_HEADER:
            raise GrpcBodyError("less than 5 bytes")
        if raw[0] != 0:
            return NOT_DECODED  # compressed: the plugin does not decompress
        size = int.from_bytes(raw[1:5], "big")
        if size > len(raw) - _FRAME_HEADER:
            return TRUNCATED
        cls = self._input_class(parsed_path[0], parsed_path[1])
        if cls is None:
            return NOT_DECODED
        if size > max_bytes:
            raise GrpcBodyError(f"the message is longer than {max_bytes} bytes")
        try:
            message = cls.FromString(raw[_FRAME_HEADER : _FRAME_HEADER + size])
        except (DecodeError, RecursionError) as exc:
            raise GrpcBodyError("the body is not the method's input message") from exc
        _check_size(message, max_fields)
        try:
            value = json_format.MessageToDict(message)
        except Exception as exc:  # protojson fails too: bad Any, out-of-range time, bad UTF-8
            raise GrpcBodyError(f"the message has no JSON form: {type(exc).__name__}") from exc
        if nesting_depth(value, max_depth) > max_depth:
            raise GrpcBodyError(f"the message nests deeper than {max_depth} levels")
        return Decoded(value)

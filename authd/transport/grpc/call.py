"""One gRPC call on the native server: its method, its state, and the context a servicer sees."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc

from authd.transport.eager import EagerTask
from authd.transport.grpc.status import GrpcError


class CallWriter(Protocol):
    """What a context needs of its connection."""

    peer: str

    def send_message(self, call: Call, payload: bytes) -> None: ...

    def write_out(self) -> None: ...

    async def room_for(self, call: Call) -> None: ...


@dataclass(frozen=True, slots=True)
class Method:
    """A servicer method and how its requests are read."""

    handler: Callable[..., Any]
    deserialize: Callable[[bytes], Any]
    request_streaming: bool
    response_streaming: bool


class Call:
    """A call in flight on one stream."""

    __slots__ = (
        "body",
        "context",
        "held",
        "id",
        "metadata",
        "method",
        "more",
        "request_ended",
        "reset",
        "responded",
        "sent_headers",
        "task",
    )

    def __init__(self, stream_id: int, method: Method, metadata: tuple[tuple[str, str], ...]):
        self.id = stream_id
        self.method = method
        self.metadata = metadata
        self.body = bytearray()
        self.held = 0  # flow-controlled bytes received and not yet acknowledged
        self.request_ended = False
        self.responded = False
        self.reset = False  # gone: reset by either side, or the connection is lost
        self.sent_headers = False
        # A call that waits, to cancel on reset.
        self.task: asyncio.Future[Any] | EagerTask[Any] | None = None
        self.more: asyncio.Future[None] | None = None  # a stream call waiting for data
        self.context: ServicerContext | None = None


class ServicerContext:
    """The part of grpc.aio's ServicerContext that servicers use here."""

    __slots__ = ("_call", "_connection", "code", "details")

    def __init__(self, connection: CallWriter, call: Call) -> None:
        self._connection = connection
        self._call = call
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> NoReturn:
        raise GrpcError(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def write(self, message: Any) -> None:
        """Send a message of a streaming answer; waits while the peer does not take them."""
        call, connection = self._call, self._connection
        if call.reset:
            raise asyncio.CancelledError
        connection.send_message(call, message.SerializeToString())
        connection.write_out()
        await connection.room_for(call)
        if call.reset:
            raise asyncio.CancelledError

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._call.metadata

    def peer(self) -> str:
        return self._connection.peer

    def cancelled(self) -> bool:
        return self._call.reset

    def done(self) -> bool:
        return self._call.reset or self._call.responded

"""gRPC over HTTP/2 as header blocks: response headers, status trailers, how a call ends."""

from __future__ import annotations

import asyncio
import logging

import grpc

from authd.transport.http2.frames import literal

log = logging.getLogger(__name__)

MAX_STATUS_MESSAGE = 1024
_PERCENT_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}
_STATUS_200 = b"\x88"  # static table entry 8, ":status: 200"
RESPONSE_HEADERS = _STATUS_200 + literal(b"content-type", b"application/grpc")
OK_TRAILERS = literal(b"grpc-status", b"0")


class GrpcError(Exception):
    """End a call with a gRPC status (``context.abort`` raises this)."""

    def __init__(self, code: grpc.StatusCode, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def percent_encode(message: str) -> bytes:
    """grpc-message encoding: printable ASCII except '%' as is, every other byte as %XX."""
    return b"".join(
        bytes((b,)) if b in _PERCENT_SAFE else b"%%%02X" % b for b in message.encode("utf-8")
    )


def status_trailers(code: int, message: str = "") -> bytes:
    block = literal(b"grpc-status", str(code).encode("ascii"))
    if message:
        block += literal(b"grpc-message", percent_encode(message[:MAX_STATUS_MESSAGE]))
    return block


def http_status(status: bytes) -> bytes:
    """A plain HTTP answer (405, 415) for a request that is not gRPC at all."""
    return literal(b":status", status)


def status_of(exc: BaseException | None) -> tuple[grpc.StatusCode, str]:
    """The status a call that raised ``exc`` ends with; unexpected errors are logged, not sent."""
    if isinstance(exc, GrpcError):
        return exc.code, exc.message
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the call was cancelled"
    log.error("gRPC handler failed", exc_info=exc)
    return grpc.StatusCode.UNKNOWN, f"unexpected {type(exc).__name__}"

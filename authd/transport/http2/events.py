"""What the HTTP/2 connection core reports to its user: one small value per happening."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_REGULAR_PSEUDO = (b":method", b":scheme", b":authority", b":path")
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
# A field name is a lowercase token (RFC 9113 §8.2.1, RFC 9110 §5.1); a value has no NUL,
# CR or LF, and no leading or trailing whitespace.
_BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")


class MalformedRequest(ValueError):
    """A header list that RFC 9113 §8.1.1 calls malformed: a stream PROTOCOL_ERROR."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request's header list: its pseudo-headers, content-type and the rest as metadata."""

    method: bytes
    path: bytes
    scheme: bytes
    authority: bytes | None
    content_type: bytes | None
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, headers: Iterable[tuple[bytes, bytes]]) -> RequestHead:
        """The head of a valid request; raises MalformedRequest naming what is wrong."""
        pseudo: dict[bytes, bytes] = {}
        content_type = None
        metadata = []
        regular_seen = False
        for name, value in headers:
            if _BAD_VALUE.search(value):
                raise MalformedRequest(f"bad value of {name!r}")
            if name[:1] == b":":
                if regular_seen:
                    raise MalformedRequest("pseudo-header after a regular field")
                if name not in _REGULAR_PSEUDO:
                    raise MalformedRequest(f"unknown pseudo-header {name!r}")
                if name in pseudo:
                    raise MalformedRequest(f"duplicate {name!r}")
                pseudo[name] = value
                continue
            regular_seen = True
            if not name or _BAD_NAME.search(name):
                raise MalformedRequest(f"bad field name {name!r}")
            if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
                raise MalformedRequest(f"connection-specific field {name!r}")
            if name == b"content-type":
                content_type = value
            metadata.append((name.decode("latin-1"), value.decode("latin-1")))
        method, path, scheme = pseudo.get(b":method"), pseudo.get(b":path"), pseudo.get(b":scheme")
        if not method or not path or not scheme:
            raise MalformedRequest("missing :method, :path or :scheme")
        return cls(method, path, scheme, pseudo.get(b":authority"), content_type, tuple(metadata))


def check_trailers(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Trailers carry no pseudo-headers and follow the field rules of any header list."""
    for name, value in headers:
        if not name or _BAD_NAME.search(name) or _BAD_VALUE.search(value):
            raise MalformedRequest(f"bad trailer field {name!r}")


@dataclass(slots=True)
class RequestReceived:
    """A new stream's request headers (``end_stream``: the request has no body)."""

    stream_id: int
    head: RequestHead
    end_stream: bool


@dataclass(slots=True)
class DataReceived:
    """Request body bytes; ``flow_size`` (padding included) is what to acknowledge later."""

    stream_id: int
    data: bytes
    flow_size: int
    end_stream: bool


@dataclass(slots=True)
class StreamEnded:
    """The client ended its side with trailers (or an empty frame carrying END_STREAM)."""

    stream_id: int


@dataclass(slots=True)
class StreamReset:
    """The stream is gone: reset by the peer, or by us for a stream error (RST_STREAM sent)."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(slots=True)
class GoAwayReceived:
    """The peer opens no more streams; the ones open may finish."""

    error_code: int


@dataclass(slots=True)
class ConnectionTerminated:
    """A connection error: our GOAWAY is in ``data_to_send()``; close after writing it."""

    error_code: int
    message: str


Event = (
    RequestReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | GoAwayReceived
    | ConnectionTerminated
)

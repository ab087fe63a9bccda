"""What the HTTP/2 connection core reports to its user: one small value per happening."""

from __future__ import annotations

from dataclasses import dataclass

from authd.transport.http2.headers import RequestHead


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

"""What one listener allows a client, whatever the protocol: the bounds every server obeys.

One value is handed to every listener authd runs (ext_authz gRPC and HTTP service mode, the
admin API, the Workload API and SDS). Past a bound a client gets a protocol answer (GOAWAY,
RST_STREAM, 413, 414, 431, or a refused connection), the listener counts it and logs it at
most once a second, and no other client notices.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    # Open connections per listener; a connection beyond it is closed at once.
    max_connections: int = 1024
    # Seconds a connection may stay open with no request in flight.
    idle_timeout: float = 300.0
    # Decoded size of one request's header list (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE,
    # RFC 9113 6.5.2: name + value + 32 per field; HTTP/1.1: the header block's bytes).
    max_header_list_size: int = 64 * KIB
    # Request target length in HTTP service mode.
    max_url_length: int = 8 * KIB
    # One request body (HTTP service mode) or one gRPC message.
    max_request_bytes: int = 4 * MIB
    # Streams open at once on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    max_concurrent_streams: int = 1000
    # Bytes held for one connection: request data not yet answered plus answers the client
    # has not yet taken (its flow-control window is closed, or it does not read).
    max_connection_buffer: int = 16 * MIB

"""The grpc.aio server options that carry a listener's :class:`ListenerLimits`.

grpcio enables SO_REUSEPORT by default, which lets a stale server keep taking traffic on the
same port; every server turns it off so a second bind fails loudly.

``direct`` servers accept their clients themselves (the remote admin API over TCP) and cap
connections with ``grpc.max_allowed_incoming_connections``. Servers behind the
peer-credential gateway leave that to the gateway, which accepts, counts and refuses; they
ping an open connection every third of ``idle_timeout``, so a watch stream with nothing to say
(the Workload API between rotations) keeps bytes moving and is not taken for idle by the
gateway, while a connection with no call in flight is closed by ``max_connection_idle_ms``.
"""

from __future__ import annotations

from authd.transport.limits import ListenerLimits

__all__ = ["grpc_server_options"]

_HANDSHAKE_TIMEOUT_MS = 120_000  # grpc's own default: a shorter idle_timeout shortens it


def grpc_server_options(limits: ListenerLimits, *, direct: bool = False) -> list[tuple[str, int]]:
    """Options for ``grpc.aio.server(options=...)`` that enforce ``limits``."""
    idle_ms = max(1, int(limits.idle_timeout * 1000))
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.max_receive_message_length", limits.max_request_bytes),
        ("grpc.max_metadata_size", limits.max_header_list_size),
        ("grpc.max_connection_idle_ms", idle_ms),
        ("grpc.server_handshake_timeout_ms", min(idle_ms, _HANDSHAKE_TIMEOUT_MS)),
    ]
    if direct:
        options.append(("grpc.max_allowed_incoming_connections", limits.max_connections))
    else:
        options += [
            ("grpc.keepalive_time_ms", max(1, idle_ms // 3)),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return options

"""HTTP/2 wire vocabulary (RFC 9113 §6, §7) and authd's one HPACK encoder (RFC 7541).

Frame types, flags, settings and error codes as named constants; one function that lays out
a frame; and the header-block encoding authd sends: literals that never touch the dynamic
table, so the encoder keeps no state and the peer's table size never matters to us.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Settings.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
# Error codes (RFC 9113 §7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
FRAME_SIZE = 16_384  # the largest frame we accept: the protocol default, never raised

FRAME_HEADER = struct.Struct(">IBI")  # 24-bit length and type in one word, flags, stream id
SETTING = struct.Struct(">HI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return FRAME_HEADER.pack((len(payload) << 8) | kind, flags, stream_id) + payload


def hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing (the dynamic table is untouched)."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def _hpack_int_end(block: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    """The HPACK integer at ``position`` (RFC 7541 §5.1): its value and where it ends."""
    value = block[position] & ((1 << prefix_bits) - 1)
    position += 1
    if value < (1 << prefix_bits) - 1:
        return value, position
    shift = 0
    while True:
        byte = block[position]
        position += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def changes_dynamic_table(block: bytes) -> bool:
    """Whether a (valid) header block adds to or resizes the HPACK dynamic table.

    Indexed fields and literals without indexing or never indexed leave it as it is; a
    literal with incremental indexing or a table size update changes it (RFC 7541 §6).
    """
    position, end = 0, len(block)
    while position < end:
        first = block[position]
        if first & 0x80:  # indexed field
            _, position = _hpack_int_end(block, position, 7)
        elif first & 0xE0 != 0:  # 01xxxxxx incremental indexing, 001xxxxx size update
            return True
        else:  # 0000xxxx without indexing, 0001xxxx never indexed: skip name and value
            name_index, position = _hpack_int_end(block, position, 4)
            for _ in range(1 if name_index else 2):
                length, position = _hpack_int_end(block, position, 7)
                position += length
    return False


class ProtocolError(Exception):
    """A connection error: the GOAWAY code, a message for its debug data, a refusal reason."""

    def __init__(self, code: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or ("flow_control" if code == FLOW_CONTROL_ERROR else "protocol_error")


def unpad(payload: bytes) -> bytes:
    if not payload:
        raise ProtocolError(PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ProtocolError(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]

"""Request header lists: HPACK decoding with its one-block cache, and RFC 9113 §8.3 checks."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import hpack

from authd.transport.http2.frames import (
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    ProtocolError,
    changes_dynamic_table,
)

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


class HeaderDecoder:
    """The connection's HPACK decoding context; stops any list above ``max_header_list_size``."""

    def __init__(self, max_header_list_size: int) -> None:
        self._hpack = hpack.Decoder()
        self._hpack.max_header_list_size = max_header_list_size
        self._table_version = 0  # counts header blocks that may have changed the table
        self._last_block = b""
        self._last_version = -1
        self._last_head: RequestHead | None = None

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """Decode a header block (every one, even of a refused stream: the table must follow)."""
        try:
            headers = self._hpack.decode(block, raw=True)
        except hpack.OversizedHeaderListError:
            raise ProtocolError(
                ENHANCE_YOUR_CALM, "header list larger than advertised", "header_list_size"
            ) from None
        except (hpack.HPACKError, IndexError, ValueError) as exc:
            raise ProtocolError(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        if changes_table(block):
            self._table_version += 1
        return headers  # type: ignore[return-value]

    def request_head(self, block: bytes) -> RequestHead:
        """The head of a request block; raises MalformedRequest.

        Once Envoy's headers are in the dynamic table, it sends the same bytes each time:
        indexed fields and a ``:path`` literal it never indexes. A block that does not change
        the dynamic table decodes the same way until the table changes, so the last such block
        is remembered with the table's version and not decoded again (Huffman decoding in
        Python is the dearest part of a call otherwise).
        """
        if block == self._last_block and self._table_version == self._last_version:
            assert self._last_head is not None
            return self._last_head
        version = self._table_version
        headers = self.decode(block)
        head = RequestHead.of(headers)
        if self._table_version == version:
            self._last_block, self._last_version, self._last_head = block, version, head
        return head


def changes_table(block: bytes) -> bool:
    """``frames.changes_dynamic_table``, but a block too broken to walk counts as a change."""
    try:
        return changes_dynamic_table(block)
    except IndexError:
        return True

"""A raw HTTP/1.1 client for authd's HTTP-service-mode listener, and a resolver that waits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from authd.check.model import CheckContext, Identities

TIMEOUT = 10.0


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]  # lower-case names, in order, repeats kept
    body: bytes
    head: bytes = field(repr=False, default=b"")

    def header(self, name: str) -> str:
        values = [v for k, v in self.headers if k == name]
        assert len(values) == 1, f"{name}: {values}"
        return values[0]

    def names(self) -> list[str]:
        return [k for k, _ in self.headers]


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One response from ``reader`` (content-length framed, as authd always answers)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=TIMEOUT)
    status_line, *lines = head[:-4].split(b"\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
    length = int(next((v for k, v in headers if k == "content-length"), "0"))
    body = await asyncio.wait_for(reader.readexactly(length), timeout=TIMEOUT)
    return RawResponse(int(status_line.split()[1]), headers, body, head)


async def exchange(port: int, raw: bytes) -> tuple[RawResponse, bool]:
    """Send ``raw``, read one response; also say whether the server then closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        response = await read_response(reader)
        closed = await closed_by_server(reader)
        return response, closed
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bool:
    """True once the server closes (EOF or reset) within ``timeout``; False if it does not."""
    try:
        rest = await asyncio.wait_for(reader.read(), timeout=timeout)
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    assert rest == b"", f"unexpected bytes after the response: {rest[:200]!r}"
    return True


def get(path: str = "/public", *headers: str, body: bytes = b"") -> bytes:
    """A GET as Envoy sends it to authd, with ``headers`` ("name: value") added."""
    lines = [f"GET {path} HTTP/1.1", "host: api.example.com", *headers]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class GatedIdentities:
    """A resolver that answers only once ``gate`` is set: a check kept in flight at will."""

    def __init__(self, identities: Identities) -> None:
        self.identities = identities
        self.gate = asyncio.Event()
        self.seen: list[CheckContext] = []
        self.arrived = asyncio.Event()

    async def resolve(self, ctx: CheckContext) -> Identities:
        self.seen.append(ctx)
        self.arrived.set()
        await self.gate.wait()
        return self.identities

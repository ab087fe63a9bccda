"""What parsing a request body costs in OPA-Envoy mode, body kind by kind, worst cases included.

Run on purpose, never as a timed test:

    python bench/opa_envoy_bodies.py [--repeat N]

Each row builds a CheckContext with a body near the 1 MiB parse cap and times
``check_parsable`` (which parses the body as the plugin would), best of N; the ratio column
compares it with the same-size JSON body, the case authd parsed before multipart, form and
gRPC bodies. The hostile rows are the shapes that would be slow in a naive reader (a run
of empty lines, many folded header lines, many near-boundaries, dense escapes); a bounded row
is refused by one of authd's bounds and shows what the refusal costs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from authd.check.errors import MalformedRequest
from authd.check.grpc_body import GrpcMessages
from authd.check.model import CheckContext
from authd.check.opa_envoy_input import BodyParsing, check_parsable
from tests.support.protoset import SERVICE, compile_protoset, grpc_frame, message_class

MIB = 1 << 20
MULTIPART = "multipart/form-data; boundary=b"


def _context(body: bytes, content_type: str, path: str = "/submit") -> CheckContext:
    headers = {"content-type": content_type, "content-length": str(len(body))}
    return CheckContext(method="POST", host="h", path=path, headers=headers, body=body)


def _part(headers: bytes, body: bytes) -> bytes:
    return b"--b\r\n" + headers + b"\r\n\r\n" + body + b"\r\n"


def _cases(protoset: bytes) -> list[tuple[str, bytes, str, str]]:
    named = b'Content-Disposition: form-data; name="f"'
    order = message_class(protoset, "shop.v1.OrderRequest")
    items = [{"sku": "tea", "count": 3}] * 3000
    return [
        (
            "json 1 MiB",
            json.dumps({"a": ["x" * 60] * (MIB // 70)}).encode(),
            "application/json",
            "",
        ),
        (
            "form, 10k fields",
            "&".join(["field=value+" + "x" * 90] * 9_999).encode(),
            "application/x-www-form-urlencoded",
            "",
        ),
        ("multipart, 1 field", _part(named, b"x" * (MIB - 100)) + b"--b--", MULTIPART, ""),
        (
            "multipart, 1000 parts",
            b"".join(_part(named, b"x" * 900) for _ in range(1000)) + b"--b--",
            MULTIPART,
            "",
        ),
        (
            "multipart, quoted-printable escapes",
            _part(
                named + b"\r\nContent-Transfer-Encoding: quoted-printable",
                (b"=C3=A9" * 12 + b"\r\n") * (MIB // 80),
            )
            + b"--b--",
            MULTIPART,
            "",
        ),
        (
            "hostile: quoted-printable empty lines",
            _part(named + b"\r\nContent-Transfer-Encoding: quoted-printable", b"\n" * (MIB - 200))
            + b"--b--",
            MULTIPART,
            "",
        ),
        (
            "hostile: folded header lines",
            _part(named + b" \r\n x" * (MIB // 7), b"v") + b"--b--",
            MULTIPART,
            "",
        ),
        (
            "hostile: near-boundaries in a part",
            _part(named, b"\r\n--bX" * (MIB // 7)) + b"--b--",
            MULTIPART,
            "",
        ),
        ("hostile: preamble of near-boundaries", b"--bx\n" * (MIB // 6) + b"--b--", MULTIPART, ""),
        (
            "grpc, 3000 items",
            grpc_frame(order(items=items).SerializeToString()),
            "application/grpc",
            f"/{SERVICE}/Place",
        ),
        (
            "bounded: grpc, 99000 items",
            grpc_frame(order(items=items * 33).SerializeToString()),
            "application/grpc",
            f"/{SERVICE}/Place",
        ),
    ]


def _best(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        protoset = compile_protoset(Path(tmp)).read_bytes()
    parsing = BodyParsing(grpc=GrpcMessages(protoset))
    rows = []
    for name, body, content_type, path in _cases(protoset):

        def run(body: bytes = body, content_type: str = content_type, path: str = path) -> str:
            try:
                check_parsable(_context(body, content_type, path or "/submit"), parsing)
            except MalformedRequest as exc:
                return f"refused ({exc})"
            return "parsed"

        rows.append((name, len(body), run(), _best(run, args.repeat)))
    baseline = rows[0][3]
    print(f"{'body':<40} {'bytes':>9} {'ms':>8} {'vs json':>8}  outcome")
    for name, size, outcome, seconds in rows:
        ratio = seconds / baseline
        print(f"{name:<40} {size:>9} {seconds * 1000:>8.1f} {ratio:>8.2f}  {outcome[:60]}")


if __name__ == "__main__":
    main()

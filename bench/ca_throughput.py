"""CA throughput on one core: X.509-SVIDs issued from CSRs, JWT-SVIDs minted, and both verified.

Run on purpose, never as a timed test:

    python bench/ca_throughput.py [--seconds N] [--clock system|fake]

Each X.509 row issues through ``CertificateAuthority.issue_x509_svid`` from real PKCS#10 CSRs
(parse + proof of possession + signing + issuance log), so it measures what a caller gets.
At the end every CA is closed and its issuance log is checked to hold every SVID issued.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.certificate_authority import CASettings, CertificateAuthority
from ca.clock import Clock, FakeClock, SystemClock
from ca.keys import KeyStore, KeyType
from ca.spiffe_id import SpiffeId, TrustDomain
from ca.store import SQLiteStore

TRUST_DOMAIN = TrustDomain("example.org")
WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
AUDIENCE = ["spiffe://example.org/ns/prod/sa/db"]
CSR_POOL = 32
X509_TARGET = 4_000
JWT_TARGET = 15_000
WARMUP = 50


@dataclass
class Row:
    operation: str
    variant: str
    count: int
    seconds: float
    target: int | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def cells(self) -> list[str]:
        target = status = ""
        if self.target is not None:
            target = f">= {self.target:,}/s"
            status = "ok" if self.rate >= self.target else "BELOW"
        return [
            self.operation,
            self.variant,
            f"{self.rate:,.0f}",
            f"{1e6 / self.rate:,.1f}",
            target,
            status,
        ]


def measure(operation: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Call ``operation`` in batches until ``seconds`` have passed; return (calls, elapsed)."""
    for _ in range(WARMUP):  # warm caches and allocators
        operation()
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(64):
            operation()
        count += 64
        now = time.perf_counter()
        if now >= deadline:
            return count, now - start


def csr_pool() -> list[bytes]:
    csrs = []
    for _ in range(CSR_POOL):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        csrs.append(csr.public_bytes(serialization.Encoding.DER))
    return csrs


def open_ca(directory: Path, clock: Clock, settings: CASettings) -> CertificateAuthority:
    directory.mkdir(parents=True)
    return CertificateAuthority(
        trust_domain=TRUST_DOMAIN,
        store=SQLiteStore(directory / "store.db"),
        keystore=KeyStore(directory / "keys"),
        clock=clock,
        settings=settings,
    )


def pin_to_one_core() -> str:
    try:
        os.sched_setaffinity(0, {0})
    except (AttributeError, OSError) as exc:  # not Linux, or core 0 not allowed
        return f"not pinned ({exc})"
    return "pinned to core 0"


def run(seconds: float, clock: Clock) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    log_lines: list[str] = []
    csrs = csr_pool()
    with tempfile.TemporaryDirectory(prefix="authd-bench-") as tmp:
        root = Path(tmp)
        cas: dict[str, tuple[CertificateAuthority, int]] = {}

        for label, key_type, target in (
            ("P-256 CA", KeyType.EC_P256, X509_TARGET),
            ("P-384 CA", KeyType.EC_P384, None),
            ("RSA-2048 CA", KeyType.RSA_2048, None),
        ):
            ca = open_ca(root / label, clock, CASettings(key_type=key_type))
            next_csr = itertools.cycle(csrs).__next__

            def issue(
                ca: CertificateAuthority = ca, next_csr: Callable[[], bytes] = next_csr
            ) -> object:
                return ca.issue_x509_svid(next_csr(), spiffe_id=WORKLOAD, requester="bench")

            count, elapsed = measure(issue, seconds)
            rows.append(Row("X.509-SVID issue (P-256 CSR)", label, count, elapsed, target))
            cas[label] = (ca, count + WARMUP)

        for label, key_type, target in (
            ("ES256", KeyType.EC_P256, JWT_TARGET),
            ("RS256", KeyType.RSA_2048, None),
        ):
            ca = open_ca(root / f"jwt-{label}", clock, CASettings(jwt_key_type=key_type))

            def mint(ca: CertificateAuthority = ca) -> object:
                return ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=AUDIENCE)

            count, elapsed = measure(mint, seconds)
            rows.append(Row("JWT-SVID mint", label, count, elapsed, target))

            token = ca.mint_jwt_svid(spiffe_id=WORKLOAD, audience=AUDIENCE).token

            def verify_jwt(ca: CertificateAuthority = ca, token: str = token) -> object:
                return ca.verify_jwt_svid(token, AUDIENCE)

            count, elapsed = measure(verify_jwt, seconds)
            rows.append(Row("JWT-SVID verify", label, count, elapsed))
            cas[f"jwt-{label}"] = (ca, 0)

        for label in ("P-256 CA", "RSA-2048 CA"):
            ca, _ = cas[label]
            chain = ca.issue_x509_svid(csrs[0], spiffe_id=WORKLOAD, requester="bench").chain
            cas[label] = (ca, cas[label][1] + 1)

            def verify_x509(
                ca: CertificateAuthority = ca, chain: Sequence[x509.Certificate] = chain
            ) -> object:
                return ca.verify_x509_svid(chain)

            count, elapsed = measure(verify_x509, seconds)
            rows.append(Row("X.509-SVID verify", label, count, elapsed))

        for label, (ca, issued) in cas.items():
            start = time.perf_counter()
            ca.close()
            close_ms = (time.perf_counter() - start) * 1000
            recorded = len(ca.store.list_issuances(kind="x509"))
            ca.store.close()
            if issued:
                verdict = "all flushed" if recorded == issued else f"MISSING {issued - recorded}"
                log_lines.append(
                    f"issuance log, {label}: {recorded:,} of {issued:,} records ({verdict}),"
                    f" close() took {close_ms:.1f} ms"
                )
    return rows, log_lines


def print_table(rows: list[Row]) -> None:
    header = ["operation", "variant", "per second", "µs/op", "target", "status"]
    table = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    right = {2, 3}
    for n, line in enumerate(table):
        print(
            "  ".join(
                cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                for i, cell in enumerate(line)
            ).rstrip()
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per row (default 2)")
    parser.add_argument(
        "--clock", choices=("system", "fake"), default="system", help="clock the CAs use"
    )
    args = parser.parse_args(argv)
    pinning = pin_to_one_core()  # before any CA starts its issuance-log thread
    clock: Clock = SystemClock() if args.clock == "system" else FakeClock()
    print(
        f"authd CA throughput: {args.seconds:g} s per row, {args.clock} clock, {pinning},"
        f" Python {sys.version.split()[0]}"
    )
    print()
    rows, log_lines = run(args.seconds, clock)
    print_table(rows)
    print()
    for line in log_lines:
        print(line)
    failed = any("MISSING" in line for line in log_lines)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

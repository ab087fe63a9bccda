"""What the demo does to the topology: HTTP calls at its ports, and the decision log read
back by offset, so each step sees exactly the decisions its own calls caused."""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authd.authz.txn_tokens import b64url_sha256
from authd.demo.processes import DemoError, wait_for

HOST = "127.0.0.1"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def call(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    tls: ssl.SSLContext | None = None,
    method: str = "GET",
) -> Reply:
    """One HTTP/1.1 request to 127.0.0.1:``port`` (over TLS with ``tls``)."""
    if tls is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(HOST, port, timeout=10)
    else:
        conn = http.client.HTTPSConnection(HOST, port, timeout=10, context=tls)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def mtls(cert_dir: Path | None, bundle: Path) -> ssl.SSLContext:
    """A client presenting ``cert_dir``'s SVID (none if None), trusting ``bundle``. SPIFFE
    peers are named by URI SAN, not host name, so only the chain is checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(bundle)
    if cert_dir is not None:
        context.load_cert_chain(cert_dir / "svid.pem", cert_dir / "svid.key")
    return context


def user_token(idp_port: int, subject: str, scope: str = "", x5t: str = "") -> str:
    """A JWT for ``subject`` from the local IdP (deploy/local/services/idp.py), with
    ``scope`` and bound to the certificate whose ``x5t#S256`` is ``x5t`` if given."""
    query = {"sub": subject} | ({"scope": scope} if scope else {}) | ({"x5t": x5t} if x5t else {})
    url = f"http://{HOST}:{idp_port}/token?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(url, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (http only)
        return str(json.loads(response.read())["access_token"])


class DecisionLog:
    """authd's decision log (JSON lines), read from a remembered offset."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, offset: int) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.startswith(b"{")]

    def wait(self, offset: int, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The decisions after ``offset`` once there are ``count`` of them (more may follow:
        the caller asked for at least ``count``)."""

        def enough() -> list[dict[str, Any]] | None:
            found = self.since(offset)
            return found if len(found) >= count else None

        return wait_for(f"{count} decision(s) in {self.path}", enough, timeout)

    def find(
        self, offset: int, match: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any] | None:
        """The first decision after ``offset`` that ``match`` accepts, or None after
        ``timeout`` (authd flushes its decision log every second)."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((d for d in self.since(offset) if match(d)), None)
            if found is not None or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


class AccessLogs:
    """The Envoys' JSON access logs; each line carries the decision id authd gave that
    request, which names the hop that asked."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths

    def hop_of(self, decision_id: str, timeout: float = 5.0) -> str | None:
        def find() -> str | None:
            for service, path in self.paths.items():
                if not path.exists():
                    continue
                for line in path.read_text(errors="replace").splitlines():
                    if decision_id in line and json.loads(line).get("decision_id") == decision_id:
                        return service
            return None

        try:
            return wait_for(f"decision {decision_id} in an access log", find, timeout)
        except DemoError:
            return None

    def annotate(self, decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``decisions``, each with ``hop``: the Envoy that asked for it."""
        for decision in decisions:
            decision["hop"] = self.hop_of(decision["decision_id"]) or "?"
        return decisions


def arrived(reply: Reply) -> tuple[dict[str, Any], dict[str, Any]]:
    """What reached orders and payments past their sidecars (deploy/local/services/arrived.py),
    from orders' answer: end-user credential headers, and the Txn-Token's claims."""
    doc = reply.json()
    if not isinstance(doc, dict):
        return {}, {}
    payments = (doc.get("payments") or {}).get("body")
    at_payments = payments.get("arrived") if isinstance(payments, dict) else None
    return doc.get("arrived") or {}, at_payments or {}


def certificate_thumbprint(pem: Path) -> str:
    """RFC 8705's ``x5t#S256`` of the certificate in ``pem``: what binds a token to it."""
    leaf = x509.load_pem_x509_certificates(pem.read_bytes())[0]
    return b64url_sha256(leaf.public_bytes(Encoding.DER))


def hop(decision: dict[str, Any]) -> str:
    """Which Envoy asked (set by :meth:`AccessLogs.annotate`)."""
    return str(decision.get("hop") or "?")


def describe(decision: dict[str, Any]) -> str:
    who = decision.get("caller") or decision.get("user") or decision.get("api_key") or "nobody"
    rule = decision.get("rule") or "-"
    problems = "".join(f"  problem={p['reason']}" for p in decision.get("problems", []))
    return (
        f"{hop(decision):<9} {decision['decision']:<5} {decision['status']}  "
        f"caller={who}  rule={rule}  reason={decision['reason']}{problems}"
    )

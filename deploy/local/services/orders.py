"""The orders service of the local topology: GET /orders/<id> asks payments, then answers.

It listens on 127.0.0.1 in plaintext behind its Envoy sidecar, and calls payments through
the same sidecar's outbound listener (plaintext to the sidecar, mTLS with orders' SVID from
there on). It forwards the headers that let one call be followed across hops.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from arrived import arrived  # beside this file

# What travels with the call to the next hop: `txn-token`, the transaction token authd minted
# at the front door (or the narrower one orders' sidecar got from authd), which payments'
# sidecar verifies; x-request-id joins the hops' access logs.
FORWARDED = ("x-request-id", "txn-token")
_local = threading.local()


class Orders(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: OrdersServer

    def do_GET(self) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] != "orders":
            self.reply(404, {"error": "not found"})
            return
        headers = {name: value for name in FORWARDED if (value := self.headers.get(name))}
        status, payments = self.call_payments(f"/payments/{parts[1]}", headers)
        self.reply(
            200 if status == 200 else 502,
            {
                "service": "orders",
                "order": parts[1],
                "caller": self.headers.get("x-authd-caller"),
                "user": self.headers.get("x-authd-subject"),
                "decision_id": self.headers.get("x-authd-decision-id"),
                "payments": {"status": status, "body": payments},
                "arrived": arrived(self.headers),
            },
        )

    def call_payments(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        # One keep-alive connection to the sidecar per handler thread; a new one if it broke.
        for attempt in (1, 2):
            conn = getattr(_local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(
                    "127.0.0.1", self.server.payments_port, timeout=10
                )
                _local.conn = conn
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                _local.conn = None
                if attempt == 2:
                    return 0, {"error": f"payments unreachable: {exc}"}
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, data.decode("utf-8", "replace")

    def reply(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class OrdersServer(ThreadingHTTPServer):
    daemon_threads = True
    payments_port = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--payments-port", type=int, required=True, help="the sidecar's outbound listener"
    )
    args = parser.parse_args()
    server = OrdersServer(("127.0.0.1", args.port), Orders)
    server.payments_port = args.payments_port
    server.serve_forever()


if __name__ == "__main__":
    main()

"""The payments service of the local topology: answers GET /payments/<id> with JSON.

It listens on 127.0.0.1 in plaintext behind its Envoy sidecar, which alone decides (with
authd) who may call it; the verified caller arrives in x-authd-caller.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from arrived import arrived  # beside this file


class Payments(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def do_GET(self) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] != "payments":
            self.reply(404, {"error": "not found"})
            return
        self.reply(
            200,
            {
                "service": "payments",
                "payment": {"order": parts[1], "status": "settled"},
                "caller": self.headers.get("x-authd-caller"),
                "decision_id": self.headers.get("x-authd-decision-id"),
                "arrived": arrived(self.headers),
            },
        )

    def reply(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Payments)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()

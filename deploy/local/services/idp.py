"""A local test identity provider: one ES256 key, its JWKS, and tokens on request.

GET /jwks is what authd's [[authz.issuers]] jwks_uri points at; POST /token?sub=alice
answers with a JWT for that subject (issuer http://idp.authd.local, audience "api", ten
minutes). Optional query parameters: ``scope`` (the token's ``scope`` claim, space-separated,
e.g. ``scope=orders:read+pay``) and ``x5t`` (binds the token to a client certificate, RFC
8705: ``cnf.x5t#S256``, the base64url SHA-256 of the certificate's DER). It signs for anyone
who asks: it stands in for a real IdP on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "http://idp.authd.local"
AUDIENCE = "api"
KID = "local-idp-1"


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()

    def b64(value: int) -> str:
        raw = value.to_bytes(32, "big")
        return jwt.utils.base64url_encode(raw).decode()

    return {"kty": "EC", "crv": "P-256", "x": b64(numbers.x), "y": b64(numbers.y)}


class Idp(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: IdpServer

    def do_GET(self) -> None:
        if self.path != "/jwks":
            self.reply(404, b'{"error": "not found"}')
            return
        jwk = {**public_jwk(self.server.key), "kid": KID, "use": "sig", "alg": "ES256"}
        self.reply(200, json.dumps({"keys": [jwk]}).encode())

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        subject = query.get("sub", [""])[0]
        if url.path != "/token" or not subject:
            self.reply(400, b'{"error": "POST /token?sub=NAME[&scope=S][&x5t=THUMBPRINT]"}')
            return
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + 600,
        }
        if "scope" in query:
            claims["scope"] = query["scope"][0]
        if "x5t" in query:
            claims["cnf"] = {"x5t#S256": query["x5t"][0]}
        token = jwt.encode(claims, self.server.key, algorithm="ES256", headers={"kid": KID})
        self.reply(200, json.dumps({"access_token": token, "token_type": "Bearer"}).encode())

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class IdpServer(ThreadingHTTPServer):
    daemon_threads = True
    key: ec.EllipticCurvePrivateKey


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = IdpServer(("127.0.0.1", args.port), Idp)
    server.key = ec.generate_private_key(ec.SECP256R1())
    server.serve_forever()


if __name__ == "__main__":
    main()

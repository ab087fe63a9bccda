"""An end-user token issuer on 127.0.0.1: one ES256 key served as a JWKS, and tokens it signs."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from ca.bundle import public_jwk

KID = "idp-es256-1"


class TokenIssuer:
    """Serves its JWKS at ``jwks_uri`` and signs end-user JWTs with any claims."""

    def __init__(self, issuer: str = "https://idp.example.com", audience: str = "api") -> None:
        self.issuer = issuer
        self.audience = audience
        self._key = ec.generate_private_key(ec.SECP256R1())
        body = json.dumps(
            {"keys": [{**public_jwk(self._key.public_key()), "kid": KID, "use": "sig"}]}
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def jwks_uri(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/jwks"

    def token(self, subject: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": self.audience, "sub": subject}
        payload.update(iat=now, exp=now + 600, **claims)
        return jwt.encode(payload, self._key, algorithm="ES256", headers={"kid": KID})

    def authd_toml(self, name: str = "idp") -> str:
        """The ``[[authz.issuers]]`` table that makes authd trust this issuer."""
        return (
            f'[[authz.issuers]]\nname = "{name}"\nissuer = "{self.issuer}"\n'
            f'jwks_uri = "{self.jwks_uri}"\naudiences = ["{self.audience}"]\n'
            'algorithms = ["ES256"]\n'
        )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

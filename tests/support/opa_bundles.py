"""Building OPA bundles for tests: tar.gz archives (hostile ones too) and signatures made the
way ``opa sign`` makes them, with digests computed here independently of authd's code."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

POLICY = """\
package envoy.authz

import rego.v1

default allow := false

allow if input.attributes.request.http.path in data.envoy.authz.open_paths
"""


def tar_gz(files: Mapping[str, bytes | str] | Iterable[tuple[str, bytes | str]]) -> bytes:
    """A gzipped tar of regular files, in the given order (names used exactly as given)."""
    items = files.items() if isinstance(files, Mapping) else files
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in items:
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_gz_with_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        archive.addfile(info)
    return buffer.getvalue()


def policy_files(open_paths: list[str], revision: str = "r1") -> dict[str, str]:
    """A bundle as ``opa build`` lays it out: leading slashes, a manifest with roots."""
    return {
        "/.manifest": json.dumps({"revision": revision, "roots": ["envoy"]}),
        "/envoy/authz/policy.rego": POLICY,
        "/envoy/authz/data.json": json.dumps({"open_paths": open_paths}),
    }


def digest(name: str, content: bytes | str) -> str:
    """SHA-256 as OPA signs: JSON files by their sorted, compact form; others by bytes."""
    raw = content.encode() if isinstance(content, str) else content
    if name.rsplit("/", 1)[-1] in ("data.json", ".manifest"):
        compact = json.dumps(
            json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        raw = compact.encode()
    return hashlib.sha256(raw).hexdigest()


@dataclass
class SigningKey:
    """A key pair, its JWT algorithm and its OPA ``keys`` entry."""

    key_id: str
    algorithm: str
    private: Any = field(repr=False)

    @classmethod
    def generate(cls, key_id: str = "global_key", algorithm: str = "ES256") -> SigningKey:
        if algorithm.startswith("ES"):
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}
            private: Any = ec.generate_private_key(curve[algorithm])
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key_id, algorithm, private)

    @property
    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def opa_key(self) -> dict[str, str]:
        return {"algorithm": self.algorithm, "key": self.public_pem}


def signatures(
    files: Mapping[str, bytes | str],
    key: SigningKey,
    *,
    kid_in_header: bool = True,
    scope: str = "",
    extra_payload: Mapping[str, Any] | None = None,
) -> str:
    """``.signatures.json`` for ``files``, as ``opa sign`` writes it."""
    listed = [
        {"name": name.lstrip("/"), "hash": digest(name, content), "algorithm": "SHA-256"}
        for name, content in files.items()
    ]
    payload: dict[str, Any] = {"files": listed, **(extra_payload or {})}
    if scope:
        payload["scope"] = scope
    headers = {"kid": key.key_id} if kid_in_header else {}
    token = jwt.encode(payload, key.private, algorithm=key.algorithm, headers=headers)
    return json.dumps({"signatures": [token]})


def signed_bundle(files: Mapping[str, bytes | str], key: SigningKey) -> bytes:
    return tar_gz({**files, "/.signatures.json": signatures(files, key)})


class BundleServer:
    """An in-test bundle server: serves ``bundle`` with an ETag, 304 on If-None-Match, or a
    forced status; counts requests and remembers their headers."""

    def __init__(self) -> None:
        self.bundle = b""
        self.etag = '"0"'
        self.status: int | None = None  # force this status instead of serving
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append({k.lower(): v for k, v in self.headers.items()})
                if server.status is not None:
                    self.send_response(server.status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if self.headers.get("if-none-match") == server.etag:
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/gzip")
                self.send_header("etag", server.etag)
                self.send_header("content-length", str(len(server.bundle)))
                self.end_headers()
                self.wfile.write(server.bundle)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, bundle: bytes, etag: str) -> None:
        self.bundle, self.etag = bundle, etag

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Go away: stop serving and close the listening socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def restart(self) -> None:
        """Come back on the same port."""
        handler = self._httpd.RequestHandlerClass
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.start()

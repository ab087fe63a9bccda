"""Signed OPA bundles: ``.signatures.json`` verified as OPA's ``bundle`` package does.

``.signatures.json`` is ``{"signatures": ["<JWT>"]}`` with exactly one compact JWS. Its key is
the bundle's configured ``signing.keyid``, else the JWT header's ``kid``, else the payload's
deprecated ``keyid``; the key (from the OPA config's ``keys`` section) fixes the algorithm, so
a token cannot pick a weaker one. The payload's ``scope`` must equal the configured scope
(the bundle's, else the key's). Its ``files`` list ``{name, hash, algorithm}`` for every file of
the bundle but ``.signatures.json`` (less ``exclude_files`` globs): each file must be listed
with a matching digest, and each listed file must be present.

Digests are hex. ``data.json``, ``data.yaml`` and ``.manifest`` are hashed as OPA hashes them:
parsed, then written back with object keys sorted, no whitespace, numbers as written, strings
as Go's encoder writes them; every other file by its bytes. (YAML floats are written as Python
writes them, which Go agrees with for the usual values.)

A bundle with no ``.signatures.json`` is refused when the bundle's signing config names a
``keyid`` (OPA: "bundle missing .signatures.json file"); a signed bundle is refused when no
signing config is given ("verification key not provided").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authd.policy.base import PolicyError

__all__ = [
    "ALGORITHMS",
    "HASHES",
    "BundleVerification",
    "SignatureError",
    "VerificationKey",
    "canonical_json",
    "file_digest",
    "verify_bundle",
]

ALGORITHMS: Final = frozenset(
    {
        "RS256", "RS384", "RS512",
        "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512",
        "HS256", "HS384", "HS512",
        "EdDSA",
    }
)  # fmt: skip
HASHES: Final = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-224": "sha224",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
    "SHA-512-224": "sha512_224",
    "SHA-512-256": "sha512_256",
}
STRUCTURED: Final = frozenset({"data.json", "data.yaml", ".manifest", ".signatures.json"})
MAX_SIGNATURES_BYTES: Final = 1024 * 1024


class SignatureError(PolicyError):
    """A bundle's signature is missing, malformed or does not cover the bundle."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One entry of OPA's ``keys`` section, parsed: algorithm and the key to verify with."""

    key_id: str
    algorithm: str
    key: Any  # a cryptography public key, or bytes for HS*
    scope: str = ""

    @classmethod
    def parse(cls, key_id: str, algorithm: str, key: str, scope: str = "") -> VerificationKey:
        """From the config's strings; a ``SignatureError`` names the key and what is wrong."""
        algorithm = algorithm or "RS256"
        if algorithm not in ALGORITHMS:
            raise SignatureError(f"key {key_id!r}: unsupported algorithm {algorithm!r}")
        if algorithm.startswith("HS"):
            if not key:
                raise SignatureError(f"key {key_id!r}: empty HMAC secret")
            return cls(key_id, algorithm, key.encode("utf-8"), scope)
        return cls(key_id, algorithm, _public_key(key_id, key), scope)


def _public_key(key_id: str, pem: str) -> Any:
    data = pem.encode("utf-8")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        if b"PRIVATE KEY-----" in data:
            return serialization.load_pem_private_key(data, password=None).public_key()
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"key {key_id!r}: not a PEM public key: {exc}") from None


@dataclass(frozen=True, slots=True)
class BundleVerification:
    """A bundle's ``signing`` config with the ``keys`` it may use."""

    keys: Mapping[str, VerificationKey]
    key_id: str = ""
    scope: str = ""
    exclude_files: tuple[str, ...] = ()


class _Number(str):
    """A JSON number kept as written (Go's ``json.Number``)."""


def _go_string(value: str) -> str:
    """A string as Go's encoding/json writes it with HTML escaping off."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _go_float(value: float) -> str:
    """A float as Go's encoding/json writes it (a YAML float reaches the hash this way)."""
    if value != value or value in (float("inf"), float("-inf")):
        raise SignatureError("cannot hash a non-finite number")
    magnitude = abs(value)
    if magnitude == 0 or 1e-6 <= magnitude < 1e21:
        text = format(Decimal(repr(value)), "f")  # shortest digits, positional
        return text.removesuffix(".0") if "." in text and text.endswith(".0") else text
    text = repr(value)  # shortest digits, exponent form: 1e-07 -> 1e-7, as Go trims it
    mantissa, _, exponent = text.partition("e")
    sign = exponent[0] if exponent[0] in "+-" else "+"
    return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def canonical_json(value: Any) -> bytes:
    """OPA's digest input for a structured document: sorted keys, no whitespace."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Literal):
            out.append(item.text)
        elif isinstance(item, dict):
            parts: list[Any] = [_Literal("{")]
            for index, key in enumerate(sorted(item)):
                if index:
                    parts.append(_Literal(","))
                parts.append(_Literal(_go_string(key) + ":"))
                parts.append(item[key])
            parts.append(_Literal("}"))
            stack.extend(reversed(parts))
        elif isinstance(item, list):
            parts = [_Literal("[")]
            for index, element in enumerate(item):
                if index:
                    parts.append(_Literal(","))
                parts.append(element)
            parts.append(_Literal("]"))
            stack.extend(reversed(parts))
        elif isinstance(item, _Number):
            out.append(str.__str__(item))
        elif isinstance(item, str):
            out.append(_go_string(item))
        elif isinstance(item, float):
            out.append(_go_float(item))
        elif item is True or item is False or item is None or isinstance(item, int):
            out.append(json.dumps(item))
        else:
            raise SignatureError(f"cannot hash a {type(item).__name__}")
    return "".join(out).encode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class _Literal:
    text: str


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _structured(raw: bytes) -> bytes:
    """The canonical form of a structured file's content (JSON, else YAML as OPA reads it)."""
    try:
        return _canonical_json_text(raw)
    except (ValueError, UnicodeError):
        pass
    # Not JSON: OPA reads it as YAML (converted to JSON).
    return canonical_json(yaml.safe_load(raw.decode("utf-8")))


def _canonical_json_text(raw: bytes) -> bytes:
    """JSON text's canonical form: through ``json.dumps`` when every number reads back as
    written (the usual case, many times faster), else number by number."""
    as_written = True

    def number(text: str) -> int | float:
        nonlocal as_written
        value = float(text) if any(c in text for c in ".eE") else int(text)
        if as_written and json.dumps(value) != text:
            as_written = False
        return value

    value = json.loads(raw, parse_int=number, parse_float=number, parse_constant=_reject_constant)
    if not as_written:
        return canonical_json(
            json.loads(raw, parse_int=_Number, parse_float=_Number, parse_constant=_reject_constant)
        )
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text.encode("utf-8", "replace")


def file_digest(name: str, content: bytes, algorithm: str) -> bytes:
    """The digest OPA signs for the bundle file ``name``."""
    hash_name = HASHES.get(algorithm)
    if hash_name is None:
        raise SignatureError(f"{name}: unsupported hashing algorithm: {algorithm}")
    base = name.rsplit("/", 1)[-1]
    if base in STRUCTURED:
        try:
            content = _structured(content)
        except (ValueError, UnicodeError, yaml.YAMLError, RecursionError) as exc:
            raise SignatureError(f"{name}: cannot parse to hash: {exc}") from None
    return hashlib.new(hash_name, content).digest()


def _b64json(part: str, what: str) -> Any:
    try:
        padded = part + "=" * (-len(part) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise SignatureError(f".signatures.json: cannot decode the JWT {what}: {exc}") from None


def _signed_files(signatures: bytes, verification: BundleVerification) -> dict[str, dict[str, Any]]:
    if len(signatures) > MAX_SIGNATURES_BYTES:
        raise SignatureError(".signatures.json is too large")
    try:
        document = json.loads(signatures)
    except (ValueError, UnicodeError) as exc:
        raise SignatureError(f".signatures.json is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SignatureError(".signatures.json is not a JSON object")
    if document.get("plugin"):
        raise SignatureError(f".signatures.json: verifier plugin {document['plugin']!r} unknown")
    tokens = document.get("signatures") or []
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise SignatureError(".signatures.json: signatures must be a list of strings")
    if not tokens:
        raise SignatureError(".signatures.json: missing JWT (expected exactly one)")
    if len(tokens) > 1:
        raise SignatureError(".signatures.json: multiple JWTs not supported (expected exactly one)")
    token = tokens[0]
    parts = token.split(".")
    if len(parts) != 3:
        raise SignatureError(".signatures.json: the JWT is not a compact JWS")
    header = _b64json(parts[0], "header")
    payload = _b64json(parts[1], "payload")
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise SignatureError(".signatures.json: the JWT header and payload must be objects")
    key_id = verification.key_id
    if not key_id and isinstance(header.get("kid"), str):
        key_id = header["kid"]
    if not key_id and isinstance(payload.get("keyid"), str):
        key_id = payload["keyid"]
    if not key_id:
        raise SignatureError(".signatures.json: verification key ID is empty")
    key = verification.keys.get(key_id)
    if key is None:
        raise SignatureError(f"verification key corresponding to ID {key_id} not found")
    try:
        jwt.PyJWS().decode(token, key.key, algorithms=[key.algorithm])
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise SignatureError(f".signatures.json: bad signature (key {key_id}): {exc}") from None
    if payload.get("scope", "") != (verification.scope or key.scope):
        raise SignatureError(".signatures.json: scope mismatch")
    listed = payload.get("files")
    if not isinstance(listed, list):
        raise SignatureError(".signatures.json: the JWT lists no files")
    files: dict[str, dict[str, Any]] = {}
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise SignatureError(".signatures.json: a files entry has no name")
        files[entry["name"].removeprefix("/")] = entry
    return files


def _glob(pattern: str) -> re.Pattern[str]:
    """Go's ``filepath.Match`` for ``*`` and ``?`` (neither crosses a ``/``)."""
    out = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in pattern)
    return re.compile(out + r"\Z")


def verify_bundle(
    signatures: bytes | None,
    files: Mapping[str, bytes],
    verification: BundleVerification | None,
) -> bool:
    """Check a bundle's signature against its files; True if it was signed and verified."""
    if signatures is None:
        if verification is not None and verification.key_id:
            raise SignatureError("bundle missing .signatures.json file")
        return False
    if verification is None:
        raise SignatureError("bundle is signed but verification key not provided")
    signed = _signed_files(signatures, verification)
    excluded = [_glob(p) for p in verification.exclude_files]
    for name, content in files.items():
        if any(pattern.match(name) for pattern in excluded):
            signed.pop(name, None)
            continue
        entry = signed.pop(name, None)
        if entry is None:
            raise SignatureError(f"file {name} not included in bundle signature")
        algorithm = entry.get("algorithm")
        if not isinstance(algorithm, str) or not algorithm:
            raise SignatureError(f"no hashing algorithm provided for file {name}")
        want = entry.get("hash")
        try:
            wanted = bytes.fromhex(want) if isinstance(want, str) else None
        except ValueError:
            wanted = None
        if wanted is None:
            raise SignatureError(f"{name}: the signed hash is not hex")
        got = file_digest(name, content, algorithm)
        if wanted != got:
            raise SignatureError(
                f"{name}: digest mismatch (want: {wanted.hex()}, got: {got.hex()})"
            )
    if signed:
        raise SignatureError(
            f"file(s) {sorted(signed)} specified in bundle signatures but not found in the bundle"
        )
    return True

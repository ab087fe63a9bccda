"""OPA bundles: a ``.tar.gz`` of Rego modules, data documents and a manifest, read as OPA does.

A bundle is hostile input until proven otherwise (it may come from a bundle server): it is
read from memory, never extracted to disk, and refused with one ``BundleError`` line when

- the compressed blob is over ``max_size`` or it inflates to more than ``max_uncompressed_size``
  (gzip bombs are cut off while inflating), or it holds more than ``max_files`` files;
- an entry is not a regular file or directory (symlinks, hard links, devices, FIFOs), its name
  has a ``..`` or ``.`` segment, an empty segment, a backslash or a NUL, or two entries name the
  same file. A single leading ``/`` or ``./`` is the bundle root, as ``opa build`` writes it;
- ``.manifest`` is not a JSON object, its ``roots`` overlap, or a module's package or a data
  document lies outside the roots (OPA's rules and messages);
- it is a delta bundle (``patch.json``) or carries Wasm (``policy.wasm``) or a plan
  (``plan.json``), which authd cannot evaluate;
- its signature does not verify (``authd.policy.opa_bundle_signing``).

Data documents (``data.json``, ``data.yaml``, ``data.yml``) land at their directory's path:
``/a/b/data.json`` becomes ``data.a.b``. Other files are ignored, as OPA ignores them (but are
still covered by a signature).
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from authd.policy.base import PolicyError
from authd.policy.opa_bundle_signing import BundleVerification, verify_bundle
from authd.policy.rego_source import COMMENT_OR_STRING, PACKAGE

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MAX_UNCOMPRESSED_SIZE",
    "Bundle",
    "BundleError",
    "BundleLimits",
    "read_bundle",
    "root_paths_contain",
    "root_paths_overlap",
]

DEFAULT_MAX_SIZE: Final = 64 * 1024 * 1024
DEFAULT_MAX_UNCOMPRESSED_SIZE: Final = 256 * 1024 * 1024
DEFAULT_MAX_FILES: Final = 10_000

MANIFEST: Final = ".manifest"
SIGNATURES: Final = ".signatures.json"
DATA_FILES: Final = frozenset({"data.json", "data.yaml", "data.yml"})
UNSUPPORTED: Final = {
    "patch.json": "delta bundles (patch.json) are not supported",
    "policy.wasm": "Wasm modules (policy.wasm) are not supported",
    "plan.json": "plan bundles (plan.json) are not supported",
}
_INFLATE_CHUNK: Final = 64 * 1024


class BundleError(PolicyError):
    """A bundle cannot be activated; the message says which file and why, on one line."""


@dataclass(frozen=True, slots=True)
class BundleLimits:
    """Bounds on one bundle: compressed bytes, inflated bytes, and files."""

    max_size: int = DEFAULT_MAX_SIZE
    max_uncompressed_size: int = DEFAULT_MAX_UNCOMPRESSED_SIZE
    max_files: int = DEFAULT_MAX_FILES


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle read and checked: its manifest, modules by file name, and merged data."""

    revision: str
    roots: tuple[str, ...]
    modules: Mapping[str, str]
    data: Mapping[str, Any]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    signed: bool = False


def _inflate(blob: bytes, limits: BundleLimits) -> bytes:
    if len(blob) > limits.max_size:
        raise BundleError(f"bundle is {len(blob)} bytes, over bundle_max_size {limits.max_size}")
    out = bytearray()
    data = blob
    try:
        while data:  # a gzip file may hold several members, as gzip(1) reads them
            inflater = zlib.decompressobj(wbits=31)
            while data:
                room = limits.max_uncompressed_size - len(out) + 1
                out += inflater.decompress(data, min(room, _INFLATE_CHUNK))
                if len(out) > limits.max_uncompressed_size:
                    raise BundleError(
                        "bundle inflates to more than bundle_max_uncompressed_size "
                        f"{limits.max_uncompressed_size} bytes"
                    )
                data = inflater.unconsumed_tail
            if not inflater.eof:
                raise BundleError("bundle is not a complete gzip stream")
            data = inflater.unused_data
    except zlib.error as exc:
        raise BundleError(f"bundle is not gzip: {exc}") from None
    return bytes(out)


def _entry_name(raw: str) -> str:
    """The bundle-relative name of a tar entry, or a BundleError for an unsafe one."""
    name = raw
    if name.startswith("./"):
        name = name[2:]
    elif name.startswith("/"):
        name = name[1:]
    name = name.rstrip("/") if name.endswith("/") else name
    shown = json.dumps(raw)
    if not name:
        return ""
    if "\\" in name or "\x00" in name:
        raise BundleError(f"bundle entry {shown}: backslash or NUL in the name")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise BundleError(f"bundle entry {shown}: unsafe path (absolute, empty, . or ..)")
    return name


def _files(tar_bytes: bytes, limits: BundleLimits) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as archive:
            entries = 0
            for member in archive:
                entries += 1
                if entries > limits.max_files:
                    raise BundleError(f"bundle holds more than bundle_max_files {limits.max_files}")
                name = _entry_name(member.name)
                if member.isdir():
                    continue
                if member.issparse():  # holes inflate to any size from a few bytes
                    raise BundleError(
                        f"bundle entry {json.dumps(member.name)}: a sparse file, not supported"
                    )
                if not member.isreg():
                    kind = "link" if member.issym() or member.islnk() else "special file"
                    raise BundleError(
                        f"bundle entry {json.dumps(member.name)}: a {kind}, not a regular file"
                    )
                if not name:
                    raise BundleError("bundle entry with an empty name")
                if name in files:
                    raise BundleError(f"bundle entry {json.dumps(name)} appears twice")
                extracted = archive.extractfile(member)
                files[name] = extracted.read() if extracted is not None else b""
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, ValueError, OSError, UnicodeError) as exc:
        raise BundleError(f"bundle is not a tar archive: {type(exc).__name__}: {exc}") from None
    return files


def _manifest(raw: bytes | None) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    if raw is None:
        return "", ("",), {}
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeError) as exc:
        raise BundleError(f".manifest is not JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(".manifest is not a JSON object")
    revision = manifest.get("revision", "")
    roots = manifest.get("roots", [""])
    metadata = manifest.get("metadata") or {}
    if not isinstance(revision, str):
        raise BundleError(".manifest: revision must be a string")
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise BundleError(".manifest: roots must be a list of strings")
    if not isinstance(metadata, dict):
        raise BundleError(".manifest: metadata must be an object")
    if manifest.get("wasm"):
        raise BundleError(".manifest: Wasm modules are not supported")
    trimmed = tuple(r.strip("/") for r in roots)
    for i, a in enumerate(trimmed):
        for b in trimmed[i + 1 :]:
            if root_paths_overlap(a, b):
                raise BundleError(f".manifest has overlapped roots: '{a}' and '{b}'")
    return revision, trimmed, metadata


def _root_contains(root: list[str], other: list[str]) -> bool:
    if root == [""]:
        return True
    return len(root) <= len(other) and other[: len(root)] == root


def root_paths_overlap(a: str, b: str) -> bool:
    """Whether one root contains the other (OPA's ``RootPathsOverlap``)."""
    sa, sb = a.split("/"), b.split("/")
    return _root_contains(sa, sb) or _root_contains(sb, sa)


def root_paths_contain(roots: tuple[str, ...] | list[str], path: str) -> bool:
    """Whether ``path`` (``a/b/c``) lies under one of ``roots`` (OPA's ``RootPathsContain``)."""
    segments = path.split("/")
    return any(_root_contains(r.split("/"), segments) for r in roots)


def _load_document(name: str, raw: bytes) -> Any:
    try:
        if name.endswith(".json"):
            return json.loads(raw, parse_constant=_not_json)
        text = raw.decode("utf-8")
        # An alias is shared in memory but copied when the data reaches Rego: refuse them,
        # or a few hundred bytes of nested aliases would inflate to gigabytes.
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text)):
            raise BundleError(f"bundle load failed on {name}: YAML aliases are not supported")
        value = yaml.safe_load(text)
        json.dumps(value)  # dates, binary and the like are not JSON: refused here
        return value
    except (ValueError, TypeError, UnicodeError, yaml.YAMLError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BundleError(f"bundle load failed on {name}: {reason}") from None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _insert(data: dict[str, Any], key: list[str], value: Any, name: str) -> None:
    """Put ``value`` at ``key`` in ``data``, merging objects (OPA's ``insertData``)."""
    if not key:
        if not isinstance(value, dict):
            raise BundleError(f"bundle load failed on {name}: root data must be an object")
        _merge(data, value, name)
        return
    node = data
    for segment in key[:-1]:
        child = node.setdefault(segment, {})
        if not isinstance(child, dict):
            raise BundleError(f"bundle load failed on {name}: data conflicts at {segment}")
        node = child
    last = key[-1]
    if last in node:
        existing = node[last]
        if not (isinstance(existing, dict) and isinstance(value, dict)):
            raise BundleError(f"bundle load failed on {name}: data conflicts at {last}")
        _merge(existing, value, name)
    else:
        node[last] = value


def _merge(into: dict[str, Any], value: dict[str, Any], name: str) -> None:
    for k, v in value.items():
        if k in into and isinstance(into[k], dict) and isinstance(v, dict):
            _merge(into[k], v, name)
        elif k in into:
            raise BundleError(f"bundle load failed on {name}: data conflicts at {k}")
        else:
            into[k] = v


def _check_data_roots(value: Any, path: str, roots: tuple[str, ...]) -> None:
    """OPA's data walk: every leaf lies under a root; an object may lie above one."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        current, node = stack.pop()
        trimmed = current.strip("/")
        if root_paths_contain(roots, trimmed):
            continue
        if isinstance(node, dict) and any(
            _root_contains(trimmed.split("/"), r.split("/")) for r in roots
        ):
            stack.extend((f"{current}/{k}", v) for k, v in node.items())
            continue
        raise BundleError(
            f"manifest roots {list(roots)} do not permit data at path '/{trimmed}' "
            "(hint: check bundle directory structure)"
        )


def _package_path(name: str, text: str) -> str:
    code = COMMENT_OR_STRING.sub(lambda m: "" if m.group(0).startswith("#") else " ", text)
    match = PACKAGE.search(code)
    if match is None:
        raise BundleError(f"{name}: no package declaration")
    return match.group(1).replace(".", "/")


def read_bundle(
    blob: bytes,
    limits: BundleLimits | None = None,
    verification: BundleVerification | None = None,
) -> Bundle:
    """Read, bound, verify and check a ``.tar.gz`` bundle; every refusal is a ``BundleError``."""
    limits = limits or BundleLimits()
    files = _files(_inflate(blob, limits), limits)
    signatures = files.pop(SIGNATURES, None)
    signed = verify_bundle(signatures, files, verification)
    for name in files:
        base = name.rsplit("/", 1)[-1]
        if base in UNSUPPORTED:
            raise BundleError(f"{name}: {UNSUPPORTED[base]}")
    revision, roots, metadata = _manifest(files.get(MANIFEST))
    modules: dict[str, str] = {}
    data: dict[str, Any] = {}
    for name in sorted(files):
        raw = files[name]
        base = name.rsplit("/", 1)[-1]
        if name.endswith(".rego"):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BundleError(f"{name}: policy is not UTF-8: {exc.reason}") from None
            package = _package_path(name, text)
            if not root_paths_contain(roots, package):
                shown = package.replace("/", ".")
                raise BundleError(
                    f"manifest roots {list(roots)} do not permit 'package {shown}' in module "
                    f"'/{name}'"
                )
            modules["/" + name] = text
        elif base in DATA_FILES:
            directory = name.rsplit("/", 1)[0] if "/" in name else ""
            key = directory.split("/") if directory else []
            _insert(data, key, _load_document(name, raw), name)
    _check_data_roots(data, "", roots)
    return Bundle(revision, roots, modules, data, metadata, signed)

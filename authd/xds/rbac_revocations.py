"""A compiled rules filter with other revocations, without compiling the rules again (pure).

The rules filter's matcher is a map of revoked SPIFFE IDs on the peer's URI SAN with
everything else below it (``rbac_compiler``), and nothing below it depends on the
revocations. When they alone change (``[xds] native_only``, or no revocation filter, or a
registration entry revoked) the config is re-assembled: the new revoked map is built and
serialised, and the cached bytes of the part below it (``RulesPart``, megabytes at 10,000
callers) are framed around it by hand, each field where deterministic serialisation puts
it. The result is the bytes, and so the version, a full compile gives
(``tests/authd/xds/test_rbac_revocations.py`` checks it for random rules and revocations).
Only the revoked map is validated; the rest was, when it was compiled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, Final

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from google.protobuf import any_pb2
from xds.type.matcher.v3 import matcher_pb2

from authd.xds.rbac_compiler import (
    CompiledRbac,
    revoked_branches,
    revoked_map_matcher,
    root_without_revocations,
)
from authd.xds.rbac_validation import validate_rbac

__all__ = ["with_revocations"]

_ON_NO_MATCH: Final = matcher_pb2.Matcher.DESCRIPTOR.fields_by_name["on_no_match"].number
_RBAC_MATCHER: Final = rbac_pb2.RBAC.DESCRIPTOR.fields_by_name["matcher"].number
_ANY_TYPE_URL: Final = any_pb2.Any.DESCRIPTOR.fields_by_name["type_url"].number
_ANY_VALUE: Final = any_pb2.Any.DESCRIPTOR.fields_by_name["value"].number
_CONFIG_NAME: Final = extension_pb2.TypedExtensionConfig.DESCRIPTOR.fields_by_name["name"].number
_CONFIG_TYPED: Final = extension_pb2.TypedExtensionConfig.DESCRIPTOR.fields_by_name[
    "typed_config"
].number
_RBAC_TYPE_URL: Final = b"type.googleapis.com/" + rbac_pb2.RBAC.DESCRIPTOR.full_name.encode()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2), as protobuf writes it."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _root(branches: dict[str, Any], below: bytes) -> bytes:
    """The root Matcher's bytes, shaped as ``compile_rbac`` shapes it."""
    if branches:
        # Deterministic serialisation writes fields by number: the tree, then on_no_match.
        tree = revoked_map_matcher(branches, None)  # on_no_match framed here
        return bytes(tree.SerializeToString(deterministic=True)) + _field(_ON_NO_MATCH, below)
    root = root_without_revocations(matcher_pb2.Matcher.OnMatch.FromString(below))
    return bytes(root.SerializeToString(deterministic=True))


def with_revocations(
    compiled: CompiledRbac,
    *,
    revoked: Iterable[str],
    to_extauthz: Iterable[str],
    validate: Callable[[Any], None] = validate_rbac,
) -> CompiledRbac | None:
    """``compiled`` with ``revoked`` and ``to_extauthz`` in place of its revocations: the
    same result as compiling its rules again with them. None when ``compiled`` keeps no
    ``rules_part`` (compile it in full then). ``validate`` sees the revoked map alone."""
    part = compiled.rules_part
    if part is None:
        return None
    revoked_ids = frozenset(revoked)
    branches = revoked_branches(revoked_ids, to_extauthz, native_only=compiled.native_only)
    if branches:
        validate(rbac_pb2.RBAC(matcher=revoked_map_matcher(branches, None)))
    rbac = _field(_RBAC_MATCHER, _root(branches, part.below))
    packed = _field(_ANY_TYPE_URL, _RBAC_TYPE_URL) + _field(_ANY_VALUE, rbac)
    name = compiled.filter_name.encode()
    payload = (_field(_CONFIG_NAME, name) if name else b"") + _field(_CONFIG_TYPED, packed)
    return CompiledRbac(
        filter_name=compiled.filter_name,
        config=extension_pb2.TypedExtensionConfig.FromString(payload),
        payload=payload,
        version=hashlib.sha256(payload).hexdigest()[:16],
        routing=compiled.routing,
        identities=len(branches.keys() | part.named),
        revoked=len(revoked_ids),
        native_only=compiled.native_only,
        rules_part=part,
    )

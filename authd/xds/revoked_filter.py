"""The revocation filter: revoked SPIFFE IDs as a small RBAC filter of their own (pure).

A second ECDS resource (``[xds] revoked_filter_name``, ``authd.rbac.revoked``) that Envoy
runs before the rules filter: an ``exact_match_map`` on the peer certificate's URI SAN, each
revoked SPIFFE ID a ``DENY``; every other request passes on to the rules filter. A revocation
then pushes this config alone, a few dozen bytes per revoked ID, whatever the size of the
policy (the rules filter's config, megabytes at 10,000 callers, is not recompiled).

A request that passes gets the action ``extauthz:not revoked``. The rules filter behind it
overwrites that name in the RBAC dynamic metadata with its own decision; should it ever not,
the name hands the request to ext_authz (fails safe, never open).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2

from authd.xds.rbac_compiler import (
    EXTAUTHZ_PREFIX,
    REVOKED_ACTION,
    CompiledRbac,
    _action,
    _list,
    _predicate_uri_san_prefix,
    _tree,
    _uri_san_input,
)

__all__ = ["PASS_ACTION", "compile_revoked"]

PASS_ACTION: Final = f"{EXTAUTHZ_PREFIX}not revoked"


def compile_revoked(revoked: Iterable[str], *, filter_name: str) -> CompiledRbac:
    """The revocation filter's config: each of ``revoked`` denied, everything else passed on.

    Deterministic (sorted map, deterministic serialisation): the same IDs give the same bytes
    and the same version.
    """
    revoked_ids = sorted(set(revoked))
    passes = _action(PASS_ACTION)
    if revoked_ids:
        deny = _action(REVOKED_ACTION)
        root = _tree(_uri_san_input(), dict.fromkeys(revoked_ids, deny), passes)
    else:  # a matcher must match on something: any SPIFFE peer, or none, passes
        root = _list([(_predicate_uri_san_prefix("spiffe://"), passes)], passes)
    config = rbac_pb2.RBAC(matcher=root, rules_stat_prefix="revoked_")
    typed = extension_pb2.TypedExtensionConfig(name=filter_name)
    typed.typed_config.Pack(config, deterministic=True)
    payload = typed.SerializeToString(deterministic=True)
    return CompiledRbac(
        filter_name=filter_name,
        config=typed,
        payload=payload,
        version=hashlib.sha256(payload).hexdigest()[:16],
        routing=(),
        identities=len(revoked_ids),
        revoked=len(revoked_ids),
    )

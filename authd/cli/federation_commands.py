"""`authd bundle list` and `authd bundle show --trust-domain TD`: our bundle and the foreign
ones federation trusts, with how each foreign bundle endpoint's polling fares."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from authd.api.authd.admin.v1 import admin_pb2
from authd.cli.client import CommandError, ask
from authd.cli.errors import Exit
from authd.cli.output import print_json, table, when
from ca.errors import InvalidSpiffeId
from ca.spiffe_id import TrustDomain

__all__ = ["cmd_bundle_list", "foreign_bundle_show"]


def _when(timestamp: float) -> str:
    return when(int(timestamp)) if timestamp else "-"


def _json(bundle: admin_pb2.FederatedBundle) -> dict[str, Any]:
    return {
        "trust_domain": bundle.trust_domain,
        "sequence": bundle.sequence if bundle.has_bundle else None,
        "endpoint_url": bundle.endpoint_url,
        "profile": bundle.profile,
        "refreshed_at": _when(bundle.refreshed_at),
        "last_attempt": _when(bundle.last_attempt),
        "next_refresh": _when(bundle.next_refresh),
        "last_error": bundle.last_error,
    }


def cmd_bundle_list(args: argparse.Namespace) -> int:
    own = ask(args, "ShowCA", admin_pb2.ShowCARequest())
    foreign = ask(args, "ListFederatedBundles", admin_pb2.ListFederatedBundlesRequest()).bundles
    if args.json:
        print_json(
            {
                "trust_domain": own.trust_domain,
                "sequence": own.bundle_sequence,
                "federated": [_json(b) for b in foreign],
            }
        )
        return 0
    rows = [[own.trust_domain, str(own.bundle_sequence), "(ours)", "-", "-", ""]]
    rows += [
        [
            b.trust_domain,
            str(b.sequence) if b.has_bundle else "-",
            b.endpoint_url or "(stored)",
            _when(b.refreshed_at),
            _when(b.next_refresh),
            b.last_error,
        ]
        for b in foreign
    ]
    headers = ["TRUST DOMAIN", "SEQUENCE", "ENDPOINT", "REFRESHED", "NEXT", "LAST ERROR"]
    print("\n".join(table(headers, rows)))
    return 0


def foreign_bundle_show(args: argparse.Namespace) -> bool:
    """Print the bundle of ``--trust-domain`` if it is a foreign one; False if it is ours."""
    try:
        wanted = TrustDomain.parse(args.trust_domain).name
    except InvalidSpiffeId as exc:
        raise CommandError(f"--trust-domain: {exc}", Exit.USAGE) from None
    own = ask(args, "ShowCA", admin_pb2.ShowCARequest()).trust_domain
    if wanted == own:
        return False
    foreign = ask(args, "ListFederatedBundles", admin_pb2.ListFederatedBundlesRequest()).bundles
    found = next((b for b in foreign if b.trust_domain == wanted and b.has_bundle), None)
    if found is None:
        raise CommandError(
            f"not found: no bundle of trust domain {wanted} (see `authd bundle list`)",
            Exit.NOT_FOUND,
        )
    sys.stdout.write(found.pem if args.format == "pem" else found.spiffe_jwks.rstrip("\n") + "\n")
    return True

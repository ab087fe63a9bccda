"""The parser of ``[[federation.trust_domains]]``: the foreign bundle endpoints to poll."""

from __future__ import annotations

from urllib.parse import urlsplit

from authd.config.model import ForeignTrustDomain
from authd.config.values import parse_path, parse_spiffe_id, parse_str, parse_trust_domain

__all__ = ["PROFILES", "parse_foreign_trust_domains"]

PROFILES = ("https_spiffe", "https_web")


def parse_foreign_trust_domains(value: object) -> tuple[ForeignTrustDomain, ...]:
    if not isinstance(value, list):
        raise ValueError("must be an array of tables ([[federation.trust_domains]])")
    found: list[ForeignTrustDomain] = []
    for index, item in enumerate(value):
        where = f"trust domain #{index + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a table")
        unknown = set(item) - set(ForeignTrustDomain.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        for required in ("trust_domain", "bundle_endpoint_url"):
            if not isinstance(item.get(required), str) or not item[required]:
                raise ValueError(f"{where}: {required!r} is required")
        try:
            name = parse_trust_domain(item["trust_domain"])
        except ValueError as exc:
            raise ValueError(f"{where}: trust_domain {exc}") from None
        where = f"trust domain {name}"
        if any(f.trust_domain == name for f in found):
            raise ValueError(f"{where} is listed twice")
        url = parse_str(item["bundle_endpoint_url"])
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{where}: bundle_endpoint_url must be an https:// URL, not {url!r}")
        profile = parse_str(item.get("profile", "https_spiffe"))
        if profile not in PROFILES:
            raise ValueError(f"{where}: profile must be one of {', '.join(PROFILES)}")
        endpoint_id = item.get("endpoint_spiffe_id", "")
        bootstrap = parse_path(item.get("bootstrap_bundle", ""))
        if profile == "https_spiffe":
            if not endpoint_id:
                raise ValueError(f"{where}: https_spiffe needs 'endpoint_spiffe_id'")
            try:
                endpoint_id = parse_spiffe_id(endpoint_id)
            except ValueError as exc:
                raise ValueError(f"{where}: endpoint_spiffe_id {exc}") from None
        found.append(
            ForeignTrustDomain(
                trust_domain=name,
                bundle_endpoint_url=url,
                profile=profile,
                endpoint_spiffe_id=endpoint_id,
                bootstrap_bundle=bootstrap,
                ca_file=parse_path(item.get("ca_file", "")),
            )
        )
    return tuple(found)

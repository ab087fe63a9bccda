"""The rules that relate several config keys, checked once every key parsed on its own."""

from __future__ import annotations

import os
from collections.abc import Mapping

from authd.config.durations import format_duration
from authd.config.errors import ConfigError
from authd.config.model import Config
from ca.spiffe_id import SpiffeId
from ca.store.urls import is_shared

__all__ = ["check_consistency"]

_MIN_CA_TTL = 60
_MAX_UNIX_SOCKET_PATH = 107  # sun_path is 108 bytes including the terminating NUL


def check_consistency(config: Config, sources: Mapping[str, str]) -> None:
    """The rules that relate several keys."""
    if (problem := config.decision_logs.problem()) is not None:
        raise ConfigError(*problem, sources.get(problem[0]))
    ca = config.ca
    if ca.ca_ttl < _MIN_CA_TTL:
        raise ConfigError(
            "ca.ca_ttl",
            f"must be at least {format_duration(_MIN_CA_TTL)}",
            sources.get("ca.ca_ttl"),
        )
    # An SVID must never outlive the authority that signed it across a rotation.
    for key, ttl in (("ca.x509_svid_ttl", ca.x509_svid_ttl), ("ca.jwt_svid_ttl", ca.jwt_svid_ttl)):
        if 2 * ttl > ca.ca_ttl:
            why = f"must not exceed ca.ca_ttl / 2 ({format_duration(ca.ca_ttl // 2)})"
            if key not in sources:
                why += f"; its default {format_duration(ttl)} does not fit, so set it too"
            raise ConfigError(key, why, sources.get(key))
    if bool(ca.upstream_cert) != bool(ca.upstream_key):
        key = "ca.upstream_key" if ca.upstream_cert else "ca.upstream_cert"
        other = "ca.upstream_cert" if ca.upstream_cert else "ca.upstream_key"
        raise ConfigError(key, f"must be set together with {other}", sources.get(other))
    if ca.upstream_bundle and not ca.upstream_cert:
        raise ConfigError(
            "ca.upstream_bundle",
            "needs ca.upstream_cert and ca.upstream_key",
            sources.get("ca.upstream_bundle"),
        )
    if config.store.durability == "replicas" and not is_shared(config.store.url):
        raise ConfigError(
            "store.durability",
            "'replicas' needs a Redis store.url; SQLite has no replicas",
            sources.get("store.durability"),
        )
    authz = config.authz
    if authz.policy_engine == "rego" and not authz.rego_files and not authz.rego_bundle:
        raise ConfigError(
            "authz.rego_files",
            "policy_engine 'rego' needs at least one .rego file (or authz.rego_bundle)",
            None,
        )
    if authz.rego_bundle and authz.policy_engine != "rego":
        raise ConfigError(
            "authz.rego_bundle",
            f"a bundle needs policy_engine = 'rego', not {authz.policy_engine!r}",
            sources.get("authz.rego_bundle"),
        )
    if authz.rego_bundle and authz.rego_files:
        raise ConfigError(
            "authz.rego_bundle",
            "give either authz.rego_files or authz.rego_bundle, not both",
            sources.get("authz.rego_bundle"),
        )
    server_id = config.admin.server_id(config.trust_domain)
    if SpiffeId.parse(server_id).trust_domain.name != config.trust_domain:
        raise ConfigError(
            "admin.server_spiffe_id",
            f"{server_id} is not in the trust domain {config.trust_domain}",
            sources.get("admin.server_spiffe_id"),
        )
    _check_federation(config, sources)
    _check_xds(config, sources)
    for key, socket_path in (
        ("admin.socket_path", config.admin_socket_path),
        ("workload.socket_path", config.workload_socket_path),
    ):
        if len(os.fsencode(socket_path)) > _MAX_UNIX_SOCKET_PATH:
            raise ConfigError(
                key,
                f"{socket_path} is longer than a Unix socket path may be "
                f"({_MAX_UNIX_SOCKET_PATH} bytes)",
                sources.get(key, sources.get("data_dir")),
            )


def _check_federation(config: Config, sources: Mapping[str, str]) -> None:
    federation = config.federation
    if federation.bundle_endpoint_profile == "https_web" and federation.bundle_endpoint_address:
        for key in ("bundle_endpoint_cert", "bundle_endpoint_key"):
            if not getattr(federation, key):
                raise ConfigError(
                    f"federation.{key}",
                    "the https_web bundle endpoint needs a web certificate and key",
                    sources.get("federation.bundle_endpoint_profile"),
                )
    endpoint_id = federation.endpoint_id(config.trust_domain)
    if SpiffeId.parse(endpoint_id).trust_domain.name != config.trust_domain:
        raise ConfigError(
            "federation.bundle_endpoint_spiffe_id",
            f"{endpoint_id} is not in the trust domain {config.trust_domain}",
            sources.get("federation.bundle_endpoint_spiffe_id"),
        )
    if federation.min_refresh > federation.max_refresh:
        raise ConfigError(
            "federation.min_refresh",
            f"must not exceed federation.max_refresh ({format_duration(federation.max_refresh)})",
            sources.get("federation.min_refresh"),
        )
    for foreign in federation.trust_domains:
        if foreign.trust_domain == config.trust_domain:
            raise ConfigError(
                "federation.trust_domains",
                f"{foreign.trust_domain} is our own trust domain, not a foreign one",
                sources.get("federation.trust_domains"),
            )


def _check_xds(config: Config, sources: Mapping[str, str]) -> None:
    xds = config.xds
    if xds.native_only and xds.revoked_filter_name and "xds.revoked_filter_name" in sources:
        raise ConfigError(
            "xds.revoked_filter_name",
            "native_only puts revoked SPIFFE IDs into the rules filter (one RBAC filter, as in "
            "deploy/envoy/sidecar-rbac-only.yaml), so there is no revocation filter to name: "
            'remove the key or set it to ""',
            sources["xds.revoked_filter_name"],
        )
    revoked = xds.served_revoked_filter_name
    if revoked and revoked in (xds.filter_name, xds.served_filter_name):
        raise ConfigError(
            "xds.revoked_filter_name",
            f"must differ from the rules filter ({xds.served_filter_name!r}): two filters, "
            "two names",
            sources.get("xds.revoked_filter_name") or sources.get("xds.filter_name"),
        )
    if xds.native_only and config.authz.dry_run:
        raise ConfigError(
            "xds.native_only",
            "a dry run (authz.dry_run) needs ext_authz to log and allow; native_only denies "
            "every request that would reach it",
            sources.get("xds.native_only"),
        )

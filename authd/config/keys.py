"""The key table: every config key, "section.key" or "key", with the parser of its value,
and the environment variable that sets it (``AUTHD_<SECTION>_<KEY>``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from authd.config.decision_logs import parse_data_path, parse_labels, parse_service_url
from authd.config.errors import ConfigError
from authd.config.federation_values import parse_foreign_trust_domains
from authd.config.model import KEY_TYPES, OPA_ENVOY_EXTRAS
from authd.config.values import (
    parse_address,
    parse_bool,
    parse_choice,
    parse_choice_list,
    parse_cpus,
    parse_filter_name,
    parse_header_list,
    parse_header_name,
    parse_int_at_least,
    parse_issuers,
    parse_log_level,
    parse_non_negative_duration,
    parse_non_negative_int,
    parse_optional_filter_name,
    parse_path,
    parse_positive_duration,
    parse_positive_int,
    parse_spiffe_id,
    parse_store_url,
    parse_str,
    parse_str_list,
    parse_subject,
    parse_trust_domain,
    parse_uids,
)
from ca.store.durability import DURABILITY_LEVELS

__all__ = ["ENV_KEYS", "ENV_PREFIX", "PARSERS", "SECTIONS", "env_name", "unknown_key"]

ENV_PREFIX = "AUTHD_"

SECTIONS = (
    "ca",
    "store",
    "admin",
    "authz",
    "txn_token",
    "workload",
    "limits",
    "federation",
    "xds",
    "decision_logs",
    "agent",
)

# Every key, "section.key" or "key", with the parser that checks and converts its value.
PARSERS: dict[str, Callable[[object], object]] = {
    "trust_domain": parse_trust_domain,
    "data_dir": parse_path,
    "log_level": parse_log_level,
    "ca.key_type": parse_choice(KEY_TYPES),
    "ca.jwt_key_type": parse_choice(KEY_TYPES),
    "ca.ca_ttl": parse_positive_duration,
    "ca.x509_svid_ttl": parse_positive_duration,
    "ca.jwt_svid_ttl": parse_positive_duration,
    "ca.subject": parse_subject,
    "ca.upstream_bundle": parse_path,
    "ca.upstream_cert": parse_path,
    "ca.upstream_key": parse_path,
    "ca.bundle_refresh_hint": parse_positive_duration,
    "ca.rotation_check_interval": parse_positive_duration,
    "ca.crl_refresh": parse_positive_duration,
    "ca.rotates": parse_bool,
    "ca.http_address": parse_address,
    "ca.key_encryption_key": parse_path,
    "ca.rotation_lease_ttl": parse_positive_duration,
    "store.url": parse_store_url,
    "store.max_staleness": parse_positive_duration,
    "store.durability": parse_choice(DURABILITY_LEVELS),
    "store.durability_replicas": parse_positive_int,
    "store.durability_timeout": parse_positive_duration,
    "store.allow_weak_durability": parse_bool,
    "store.auto_reseed": parse_bool,
    "admin.socket_path": parse_path,
    "admin.allowed_uids": parse_uids,
    "admin.mtls_address": parse_address,
    "admin.server_spiffe_id": parse_spiffe_id,
    "authz.grpc_address": parse_address,
    "authz.grpc_socket": parse_path,
    "authz.grpc_engine": parse_choice(("native", "grpcio")),
    "authz.http_address": parse_address,
    "authz.http_path_prefix": parse_str,
    "authz.metrics_address": parse_address,
    "authz.policy_engine": parse_choice(("rules", "rego", "opa")),
    "authz.policy_file": parse_path,
    "authz.policy_compat": parse_choice(("", "authd", "opa-envoy")),
    "authz.opa_envoy_extras": parse_choice_list(OPA_ENVOY_EXTRAS),
    "authz.rego_files": parse_str_list,
    "authz.rego_entrypoint": parse_str,
    "authz.rego_decision_cache": parse_non_negative_int,
    "authz.rego_workers": parse_non_negative_int,
    "authz.rego_worker_cpus": parse_cpus,
    "authz.opa_url": parse_str,
    "authz.opa_path": parse_str,
    "authz.opa_timeout_ms": parse_positive_int,
    "authz.dry_run": parse_bool,
    "authz.decision_log": parse_path,
    "authz.caller_header": parse_header_name,
    "authz.subject_header": parse_header_name,
    "authz.decision_id_header": parse_header_name,
    "authz.remove_headers": parse_header_list,
    "authz.peer_uri_header": parse_header_name,
    "authz.peer_cert_header": parse_header_name,
    "authz.context_header_prefix": parse_header_name,
    "authz.jwt_svid_header": parse_header_name,
    "authz.jwt_svid_audiences": parse_str_list,
    "authz.api_key_header": parse_header_name,
    "authz.api_keys_file": parse_path,
    "authz.trust_principal_without_certificate": parse_bool,
    "authz.issuers": parse_issuers,
    "authz.rego_bundle": parse_str,
    "authz.bundle_max_size": parse_positive_int,
    "authz.bundle_max_uncompressed_size": parse_positive_int,
    "authz.bundle_max_files": parse_positive_int,
    "authz.opa_config": parse_path,
    "authz.skip_request_body_parse": parse_bool,
    "authz.grpc_reflection": parse_bool,
    "authz.opa_envoy_protoset": parse_path,
    "authz.opa_envoy_max_body_bytes": parse_int_at_least(1024),
    "txn_token.mint": parse_bool,
    "txn_token.workload_id": parse_spiffe_id,
    "txn_token.lifetime": parse_positive_duration,
    "txn_token.header": parse_header_name,
    "txn_token.claims": parse_str_list,
    "txn_token.leeway": parse_non_negative_duration,
    "workload.socket_path": parse_path,
    "workload.enabled": parse_bool,
    "workload.rotation_check_interval": parse_positive_duration,
    "xds.enabled": parse_bool,
    "xds.filter_name": parse_filter_name,
    "xds.rule_set": parse_str,
    "xds.revoked_filter_name": parse_optional_filter_name,
    "xds.native_only": parse_bool,
    "limits.max_connections": parse_positive_int,
    "limits.idle_timeout": parse_positive_duration,
    "limits.max_header_list_size": parse_int_at_least(1024),
    "limits.max_url_length": parse_int_at_least(256),
    "limits.max_request_bytes": parse_int_at_least(1024),
    "limits.max_concurrent_streams": parse_positive_int,
    "limits.max_connection_buffer": parse_int_at_least(64 * 1024),
    "federation.bundle_endpoint_address": parse_address,
    "federation.bundle_endpoint_profile": parse_choice(("https_spiffe", "https_web")),
    "federation.bundle_endpoint_spiffe_id": parse_spiffe_id,
    "federation.bundle_endpoint_cert": parse_path,
    "federation.bundle_endpoint_key": parse_path,
    "federation.min_refresh": parse_positive_duration,
    "federation.max_refresh": parse_positive_duration,
    "federation.trust_domains": parse_foreign_trust_domains,
    "decision_logs.file": parse_path,
    "decision_logs.console": parse_bool,
    "decision_logs.service_url": parse_service_url,
    "decision_logs.service_token_path": parse_path,
    "decision_logs.resource": parse_str,
    "decision_logs.min_delay_seconds": parse_positive_duration,
    "decision_logs.max_delay_seconds": parse_positive_duration,
    "decision_logs.upload_size_limit_bytes": parse_int_at_least(1024),
    "decision_logs.buffer_size_limit_bytes": parse_int_at_least(1024),
    "decision_logs.queue_size": parse_positive_int,
    "decision_logs.max_decisions_per_second": parse_non_negative_int,
    "decision_logs.mask_decision": parse_data_path,
    "decision_logs.drop_decision": parse_data_path,
    "decision_logs.labels": parse_labels,
    "agent.attestation_address": parse_address,
    "agent.node_api_address": parse_address,
    "agent.svid_ttl": parse_positive_duration,
    "agent.join_token_ttl": parse_positive_duration,
    "agent.x509pop_ca_path": parse_path,
    "agent.trust_bundle_path": parse_path,
    "agent.insecure_bootstrap": parse_bool,
    "agent.join_token": parse_str,
    "agent.x509pop_cert_path": parse_path,
    "agent.x509pop_key_path": parse_path,
    "agent.sync_interval": parse_positive_duration,
    "agent.metrics_address": parse_address,
}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


ENV_KEYS = {env_name(key): key for key in PARSERS}


def unknown_key(key: str, source: str) -> ConfigError:
    why = "unknown key"
    close = difflib.get_close_matches(key, PARSERS, n=1)
    if close:
        why += f"; did you mean {close[0]!r}?"
    return ConfigError(key, why, source)

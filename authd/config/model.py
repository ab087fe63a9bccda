"""The configuration model: one frozen dataclass per section, validated by the loader.

Durations are int seconds; every relative path is relative to ``data_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509

from authd.config.decision_logs import DecisionLogSettings
from authd.config.opa_config import OpaSettings
from authd.transport.limits import ListenerLimits
from ca.store.durability import Durability

__all__ = [
    "KEY_TYPES",
    "LOG_LEVELS",
    "OPA_ENVOY_EXTRAS",
    "AdminConfig",
    "AgentConfig",
    "AuthzConfig",
    "CAConfig",
    "Config",
    "FederationConfig",
    "ForeignTrustDomain",
    "IssuerConfig",
    "KeyType",
    "LimitsConfig",
    "LogLevel",
    "StoreConfig",
    "TxnTokenConfig",
    "WorkloadConfig",
]

KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"]
LogLevel = Literal["debug", "info", "warning", "error"]
KEY_TYPES: tuple[KeyType, ...] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-4096")
# What authd may add to the OPA-Envoy plugin's answers (authd.authz.opa_envoy_outcome).
# The same as authd.authz.opa_envoy_outcome.EXTRAS (config sits above authz; a test checks).
OPA_ENVOY_EXTRAS: tuple[str, ...] = (
    "decision_id_header",
    "identity_headers",
    "credential_denials",
    "json_deny_body",
)
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class CAConfig:
    """The certificate authority: key types, lifetimes, and an optional upstream CA."""

    key_type: KeyType = "ec-p256"
    jwt_key_type: KeyType = "ec-p256"
    ca_ttl: int = 24 * 3600
    x509_svid_ttl: int = 3600
    jwt_svid_ttl: int = 300
    subject: str = "O=authd"
    upstream_bundle: str = ""
    upstream_cert: str = ""
    upstream_key: str = ""
    bundle_refresh_hint: int = 300
    rotation_check_interval: int = 10
    crl_refresh: int = 900
    rotates: bool = True  # with several replicas on one store, true on exactly one
    http_address: str = ""  # the bundle and CRL endpoint, host:port; "" disables
    # High availability on a shared store: the replicas' key-encryption key (a 0600 file of
    # 64 hex digits); set, every replica holding it signs and rotates = true ones take turns
    # leading rotation under a lease of rotation_lease_ttl.
    key_encryption_key: str = ""
    rotation_lease_ttl: int = 15

    @property
    def subject_name(self) -> x509.Name:
        """The authority's subject as a cryptography ``x509.Name``."""
        return x509.Name.from_rfc4514_string(self.subject)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where state lives: ``sqlite://<path>`` (relative to data_dir) or a Redis URL."""

    url: str = "sqlite://authd.db"
    # With a shared (Redis) store: how long a replica that lost the store keeps deciding
    # from its last revocation view before ext_authz fails closed (503).
    max_staleness: int = 30
    # When a write is acknowledged: "none", "local" (the store's own disk) or "replicas"
    # (also durability_replicas Redis replicas, within durability_timeout seconds).
    durability: str = "local"
    durability_replicas: int = 1
    durability_timeout: int = 5
    # Start on a Redis that cannot give the durability (with a warning) instead of refusing.
    allow_weak_durability: bool = False
    # The rotating replica writes its copy back into a store that went backwards by itself
    # (as `authd store reseed` does), unless another replica saw more.
    auto_reseed: bool = False

    @property
    def write_durability(self) -> Durability:
        """The durability the store must reach before it acknowledges a write."""
        return Durability(self.durability, self.durability_replicas, self.durability_timeout)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin API: its Unix socket and who may use it, and its optional mTLS listener."""

    socket_path: str = ""
    allowed_uids: tuple[int, ...] = ()
    mtls_address: str = ""  # host:port for remote admins over mutual TLS; "" disables
    server_spiffe_id: str = ""  # "" means spiffe://<trust_domain>/authd/admin

    def allows_uid(self, uid: int) -> bool:
        """Root is always allowed; anyone else must be listed in ``allowed_uids``."""
        return uid == 0 or uid in self.allowed_uids

    def server_id(self, trust_domain: str) -> str:
        """The SPIFFE ID the mTLS listener presents."""
        return self.server_spiffe_id or f"spiffe://{trust_domain}/authd/admin"


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """An external issuer of end-user JWTs, trusted through its JWKS."""

    name: str
    issuer: str
    jwks_uri: str
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    header: str = "authorization"
    leeway: int = 60


@dataclass(frozen=True, slots=True)
class AuthzConfig:
    """The ext_authz decision point: listeners, policy, identities, responses, logs."""

    grpc_address: str = "127.0.0.1:9191"
    grpc_socket: str = ""
    grpc_engine: str = "native"
    http_address: str = "127.0.0.1:9192"
    http_path_prefix: str = ""
    metrics_address: str = "127.0.0.1:9464"
    policy_engine: str = "rules"
    policy_file: str = ""
    # "" means by engine: "opa-envoy" for rego and opa, "authd" for rules.
    policy_compat: str = ""
    opa_envoy_extras: tuple[str, ...] = ()
    rego_files: tuple[str, ...] = ()
    rego_entrypoint: str = "envoy/authz/allow"
    rego_decision_cache: int = 4096
    rego_workers: int = 4
    # "auto", "all" or a CPU list ("1", "2-3"): where the Rego worker threads run.
    rego_worker_cpus: str = "auto"
    opa_url: str = "http://127.0.0.1:8181"
    opa_path: str = "envoy/authz/allow"
    opa_timeout_ms: int = 500
    dry_run: bool = False
    decision_log: str = ""
    caller_header: str = "x-authd-caller"
    subject_header: str = "x-authd-subject"
    decision_id_header: str = "x-authd-decision-id"
    remove_headers: tuple[str, ...] = ("authorization", "x-api-key")
    peer_uri_header: str = "x-authd-peer-uri-san"
    peer_cert_header: str = "x-authd-peer-cert"
    context_header_prefix: str = "x-authd-ctx-"
    jwt_svid_header: str = "authorization"
    jwt_svid_audiences: tuple[str, ...] = ()
    api_key_header: str = "x-api-key"
    api_keys_file: str = ""
    trust_principal_without_certificate: bool = True
    issuers: tuple[IssuerConfig, ...] = ()
    # An OPA bundle (a path or an http(s) URL) instead of rego_files, and its bounds.
    rego_bundle: str = ""
    bundle_max_size: int = 64 * 1024 * 1024
    bundle_max_uncompressed_size: int = 256 * 1024 * 1024
    bundle_max_files: int = 10_000
    # The OPA config file OPA-Envoy runs with (authd.config.opa_config), read into Config.opa.
    opa_config: str = ""
    grpc_reflection: bool = True
    # OPA-Envoy mode's request bodies (authd.check.opa_envoy_input): the plugin's
    # skip-request-body-parse and proto-descriptor, and authd's bound on a parsed body.
    skip_request_body_parse: bool = False
    opa_envoy_protoset: str = ""
    opa_envoy_max_body_bytes: int = 1 << 20

    @property
    def compat(self) -> str:
        """How checks are answered: "authd" or "opa-envoy" (exactly as the OPA-Envoy plugin)."""
        if self.policy_compat:
            return self.policy_compat
        return "authd" if self.policy_engine == "rules" else "opa-envoy"


@dataclass(frozen=True, slots=True)
class TxnTokenConfig:
    """[txn_token]: transaction tokens minted at the front door and verified at every hop."""

    mint: bool = False  # mint on every allowed check, unless a route says txn_token: off
    workload_id: str = ""  # req_wl of minted tokens; "" means spiffe://<trust_domain>/gateway
    lifetime: int = 60
    header: str = "txn-token"
    claims: tuple[str, ...] = ()  # end-user claims copied into tctx.claims
    leeway: int = 5  # clock skew allowed on a Txn-Token's exp and iat


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """The SPIFFE Workload API and Envoy SDS, served together on one Unix socket."""

    socket_path: str = ""  # "" means <data_dir>/workload.sock
    enabled: bool = True
    rotation_check_interval: int = 1


@dataclass(frozen=True, slots=True)
class XdsConfig:
    """[xds]: the native fast path, the rules compiled into Envoy's RBAC filter over ECDS."""

    enabled: bool = False
    filter_name: str = "authd.rbac"  # the ECDS resource name the Envoy filter asks for
    rule_set: str = ""  # "" means the policy's default_rule_set
    # The revocation filter's ECDS resource name ("": revoked IDs go into the rules filter).
    revoked_filter_name: str = "authd.rbac.revoked"
    # Sidecars without ext_authz: what would go to ext_authz is compiled as a deny, the
    # rules filter is served as "<filter_name>.native_only" (see served_filter_name), and
    # revocations go into it (see served_revoked_filter_name).
    native_only: bool = False

    @property
    def served_filter_name(self) -> str:
        """The rules filter's ECDS name: with ``native_only`` a name of its own, so an Envoy
        config and an authd that disagree about ext_authz find no config (deny all)."""
        return f"{self.filter_name}.native_only" if self.native_only else self.filter_name

    @property
    def served_revoked_filter_name(self) -> str:
        """The revocation filter's ECDS name, "" when revoked IDs go into the rules filter:
        always with ``native_only``, whose sidecar runs one RBAC filter (each filter in the
        chain costs every request more than a revocation's recompile costs once)."""
        return "" if self.native_only else self.revoked_filter_name


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """[limits]: the bounds every listener enforces (see ``authd.transport.limits``)."""

    max_connections: int = 1024
    idle_timeout: int = 300
    max_header_list_size: int = 64 * 1024
    max_url_length: int = 8 * 1024
    max_request_bytes: int = 4 * 1024 * 1024
    max_concurrent_streams: int = 1000
    max_connection_buffer: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ForeignTrustDomain:
    """A foreign trust domain whose bundle is polled from its SPIFFE bundle endpoint."""

    trust_domain: str
    bundle_endpoint_url: str
    profile: str = "https_spiffe"  # or "https_web"
    endpoint_spiffe_id: str = ""  # https_spiffe: the SPIFFE ID the endpoint must present
    bootstrap_bundle: str = ""  # https_spiffe: the first bundle (SPIFFE JSON or PEM), a path
    ca_file: str = ""  # https_web: PEM roots for the web certificate; "" = the system's


@dataclass(frozen=True, slots=True)
class FederationConfig:
    """[federation]: our SPIFFE bundle endpoint, and the foreign ones we poll."""

    bundle_endpoint_address: str = ""  # host:port; "" serves none
    bundle_endpoint_profile: str = "https_spiffe"  # or "https_web"
    bundle_endpoint_spiffe_id: str = ""  # "" means spiffe://<trust_domain>/authd
    bundle_endpoint_cert: str = ""  # https_web: PEM chain
    bundle_endpoint_key: str = ""  # https_web: PEM key
    min_refresh: int = 30
    max_refresh: int = 3600
    trust_domains: tuple[ForeignTrustDomain, ...] = ()

    def endpoint_id(self, trust_domain: str) -> str:
        """The SPIFFE ID the https_spiffe bundle endpoint presents."""
        return self.bundle_endpoint_spiffe_id or f"spiffe://{trust_domain}/authd"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """[agent]: node agents. The server listens on the two addresses; an agent dials them."""

    attestation_address: str = ""  # host:port, server TLS: Node.Attest; "" = no agents
    node_api_address: str = ""  # host:port, mutual TLS with the agent SVID
    svid_ttl: int = 3600  # server: the agent SVIDs' lifetime
    join_token_ttl: int = 600  # server: default lifetime of a join token
    x509pop_ca_path: str = ""  # server: PEM roots node certificates must chain to
    trust_bundle_path: str = ""  # agent: PEM roots the server's certificate must chain to
    insecure_bootstrap: bool = False  # agent: trust the server's first certificate (tests)
    join_token: str = ""  # agent: attest with this token
    x509pop_cert_path: str = ""  # agent: attest with this node certificate (PEM chain) ...
    x509pop_key_path: str = ""  # ... and its key
    sync_interval: int = 5  # agent: fetch entries and renew what is due this often
    metrics_address: str = ""  # agent: Prometheus /metrics on host:port


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration, validated. Durations are int seconds."""

    data_dir: Path
    trust_domain: str = "example.org"
    log_level: LogLevel = "info"
    ca: CAConfig = field(default_factory=CAConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    authz: AuthzConfig = field(default_factory=AuthzConfig)
    txn_token: TxnTokenConfig = field(default_factory=TxnTokenConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    xds: XdsConfig = field(default_factory=XdsConfig)
    decision_logs: DecisionLogSettings = field(default_factory=DecisionLogSettings)
    # What authz.opa_config's file says (services, bundles, keys, decision_logs, labels).
    opa: OpaSettings = field(default_factory=OpaSettings)
    agent: AgentConfig = field(default_factory=AgentConfig)

    def resolve_path(self, path: str | Path) -> Path:
        """``path`` made absolute against ``data_dir`` (absolute paths are returned as is)."""
        return self.data_dir / Path(path).expanduser()

    def listener_limits(self) -> ListenerLimits:
        """The ``[limits]`` section as the value every listener is given."""
        limits = self.limits
        return ListenerLimits(
            max_connections=limits.max_connections,
            idle_timeout=float(limits.idle_timeout),
            max_header_list_size=limits.max_header_list_size,
            max_url_length=limits.max_url_length,
            max_request_bytes=limits.max_request_bytes,
            max_concurrent_streams=limits.max_concurrent_streams,
            max_connection_buffer=limits.max_connection_buffer,
        )

    @property
    def admin_socket_path(self) -> Path:
        return self.resolve_path(self.admin.socket_path or "admin.sock")

    @property
    def workload_socket_path(self) -> Path:
        return self.resolve_path(self.workload.socket_path or "workload.sock")

    @property
    def store_url(self) -> str:
        """The store URL with a relative SQLite path made absolute against ``data_dir``."""
        scheme, _, rest = self.store.url.partition("://")
        if scheme != "sqlite" or rest == ":memory:":
            return self.store.url
        return f"sqlite://{self.resolve_path(rest)}"

    @property
    def upstream(self) -> bool:
        """True when the authority is signed by an upstream CA rather than self-signed."""
        return bool(self.ca.upstream_cert)

    @property
    def upstream_cert_path(self) -> Path | None:
        return self.resolve_path(self.ca.upstream_cert) if self.ca.upstream_cert else None

    @property
    def upstream_key_path(self) -> Path | None:
        return self.resolve_path(self.ca.upstream_key) if self.ca.upstream_key else None

    @property
    def key_encryption_key_path(self) -> Path | None:
        kek = self.ca.key_encryption_key
        return self.resolve_path(kek) if kek else None

    @property
    def upstream_bundle_path(self) -> Path | None:
        """The upstream trust bundle; defaults to the upstream certificate itself."""
        bundle = self.ca.upstream_bundle or self.ca.upstream_cert
        return self.resolve_path(bundle) if bundle else None

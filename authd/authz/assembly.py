"""Assembling the decision point from the config: resolver, policy, pipeline, listeners.

``build_authorizer`` is shared by ``authd run`` and the offline ``authd policy check``, so
both decide with exactly the same pieces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authd.authz.api_keys import ApiKeyStore
from authd.authz.decision_log import DecisionSink
from authd.authz.identity import (
    IdentityResolver,
    IdentitySettings,
    IssuerSettings,
)
from authd.authz.metrics import AuthzMetrics
from authd.authz.pipeline import Authorizer, AuthzSettings
from authd.authz.txn_tokens import TxnTokens, TxnTokenSettings
from authd.check.grpc_body import GrpcMessages, ProtosetError
from authd.check.model import Reason
from authd.check.opa_envoy_input import BodyParsing
from authd.config.errors import ConfigError
from authd.config.model import Config
from authd.policy.base import Policy, PolicyError
from authd.policy.opa_envoy_result import opa_envoy_decision
from authd.policy.result import ResultMapping, decision_from_result
from authd.ports.bundle_view import BundleView
from authd.ports.revocation_view import RevocationView
from authd.ports.token_signer import TokenSigner
from ca.clock import Clock
from ca.spiffe_id import TrustDomain

log = logging.getLogger(__name__)

# With no policy file, a workload of our own trust domain that proves who it is may call;
# anyone else is denied. Zero trust's baseline: authenticated, then authorized.
DEFAULT_RULES = """\
version: 1
rule_sets:
  default:
    rules:
      - name: same-trust-domain
        effect: allow
        callers: ["spiffe://{trust_domain}/*"]
"""


@dataclass(frozen=True, slots=True)
class PolicySource:
    """How to (re)load the configured policy, and which files to watch for changes."""

    load: Callable[[], Policy]
    files: tuple[Path, ...]
    # A task to run beside the listeners (e.g. polling a bundle server), if any.
    background: Callable[[], Coroutine[Any, Any, None]] | None = None


def policy_source(config: Config) -> PolicySource:
    authz = config.authz
    results: ResultMapping = decision_from_result
    if authz.compat == "opa-envoy":
        results = opa_envoy_decision
    if config.decision_logs.enabled:
        from authd.authz.opa_log_sink import traced

        results = traced(results)
    if authz.policy_engine == "rego" and authz.rego_bundle:
        from authd.policy.bundle_source import bundle_policy_source

        return PolicySource(*bundle_policy_source(config, results))
    if authz.policy_engine == "rego":
        from authd.policy.rego import RegoPolicy
        from authd.policy.rego_offload import configured_off_loop

        files = tuple(config.resolve_path(f) for f in authz.rego_files)

        def load_rego() -> Policy:
            policy = RegoPolicy.load(
                list(files),
                entrypoint=authz.rego_entrypoint,
                decision_cache=authz.rego_decision_cache,
                results=results,
            )
            return configured_off_loop(policy, authz)

        return PolicySource(load_rego, files)
    if authz.policy_engine == "opa":
        from authd.policy.opa import OpaPolicy

        policy = OpaPolicy(
            url=authz.opa_url,
            path=authz.opa_path,
            timeout=authz.opa_timeout_ms / 1000,
            results=results,
        )
        return PolicySource(lambda: policy, ())
    from authd.policy.rules import RulesPolicy, load_rules_policy

    if authz.policy_file:
        path = config.resolve_path(authz.policy_file)
        return PolicySource(lambda: load_rules_policy(path), (path,))
    text = DEFAULT_RULES.format(trust_domain=config.trust_domain)
    return PolicySource(lambda: RulesPolicy.from_text(text, "<default policy>"), ())


def identity_settings(config: Config) -> IdentitySettings:
    authz = config.authz
    # In OPA-Envoy mode a bearer is the policy's to judge: authd verifies JWT-SVIDs only when
    # their audiences are configured (issuers and API keys only when configured, as always).
    verify_svids = authz.compat == "authd" or bool(authz.jwt_svid_audiences)
    return IdentitySettings(
        jwt_svid_header=authz.jwt_svid_header if verify_svids else "",
        # Unset: a JWT-SVID must be minted for this trust domain (spiffe://<trust domain>).
        jwt_svid_audiences=authz.jwt_svid_audiences or (f"spiffe://{config.trust_domain}",),
        issuers=tuple(
            IssuerSettings(
                name=i.name,
                issuer=i.issuer,
                jwks_uri=i.jwks_uri,
                audiences=i.audiences,
                algorithms=i.algorithms,
                header=i.header,
                leeway=i.leeway,
            )
            for i in authz.issuers
        ),
        api_key_header=authz.api_key_header,
        trust_principal_without_certificate=authz.trust_principal_without_certificate,
    )


def authz_settings(config: Config) -> AuthzSettings:
    authz = config.authz
    return AuthzSettings(
        caller_header=authz.caller_header,
        subject_header=authz.subject_header,
        decision_id_header=authz.decision_id_header,
        remove_headers=authz.remove_headers,
        dry_run=authz.dry_run,
        compat=authz.compat,
        extras=frozenset(authz.opa_envoy_extras),
        body_parsing=body_parsing(config),
    )


def body_parsing(config: Config) -> BodyParsing:
    """OPA-Envoy mode's body settings; the protoset is read now (a bad one stops start-up)."""
    authz = config.authz
    grpc = None
    if authz.opa_envoy_protoset:
        path = config.resolve_path(authz.opa_envoy_protoset)
        try:
            grpc = GrpcMessages.load(path)
        except ProtosetError as exc:
            raise ConfigError("authz.opa_envoy_protoset", str(exc)) from None
    return BodyParsing(
        skip=authz.skip_request_body_parse,
        grpc=grpc,
        max_bytes=authz.opa_envoy_max_body_bytes,
    )


def build_txn_tokens(
    config: Config, *, clock: Clock, signer: TokenSigner | None = None
) -> TxnTokens:
    """Txn-Token verification (always on: a hop judges what it is sent) and minting."""
    section = config.txn_token
    return TxnTokens(
        trust_domain=TrustDomain.parse(config.trust_domain),
        clock=clock,
        settings=TxnTokenSettings(
            mint=section.mint,
            workload_id=section.workload_id,
            lifetime=float(section.lifetime),
            header=section.header,
            claims=section.claims,
            leeway=float(section.leeway),
        ),
        signer=signer,
    )


def build_resolver(
    config: Config,
    *,
    bundles: BundleView,
    clock: Clock,
    revocations: RevocationView | None = None,
    txn_tokens: TxnTokens | None = None,
) -> IdentityResolver:
    api_keys = None
    if config.authz.api_keys_file:
        try:
            api_keys = ApiKeyStore.load(config.resolve_path(config.authz.api_keys_file))
        except (OSError, ValueError) as exc:
            raise PolicyError(f"authz.api_keys_file: {exc}") from None
    return IdentityResolver(
        trust_domain=TrustDomain.parse(config.trust_domain),
        bundles=bundles,
        clock=clock,
        settings=identity_settings(config),
        api_keys=api_keys,
        revocations=revocations,
        txn_tokens=txn_tokens,
    )


def build_authorizer(
    config: Config,
    *,
    resolver: IdentityResolver,
    policy: Callable[[], Policy],
    metrics: AuthzMetrics | None = None,
    decision_log: DecisionSink | None = None,
    fresh: Callable[[], bool] = lambda: True,
    stale_reason: Callable[[], Reason] = lambda: Reason.STALE,
) -> Authorizer:
    return Authorizer(
        fresh=fresh,
        stale_reason=stale_reason,
        txn_tokens=resolver.txn_tokens,
        resolver=resolver,
        policy=policy,
        settings=authz_settings(config),
        decision_log=decision_log,
        metrics=metrics,
    )

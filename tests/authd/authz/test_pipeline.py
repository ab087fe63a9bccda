"""The rules every check follows, whatever the policy engine."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from authd.authz.decision_log import DecisionLog
from authd.authz.metrics import AuthzMetrics
from authd.authz.pipeline import Authorizer, AuthzSettings, Outcome
from authd.check.model import (
    CheckContext,
    CredentialProblem,
    Decision,
    Identities,
    Reason,
    UserIdentity,
)
from authd.policy.base import InputDocument
from authd.policy.rego import prune_input
from ca.spiffe_id import SpiffeId
from tests.support.authz import FixedIdentities, PathPolicy

WEB = SpiffeId.parse("spiffe://example.org/web")


def ctx(path: str, **headers: str) -> CheckContext:
    return CheckContext(
        method="GET",
        host="api.example.com",
        path=path,
        headers={"authorization": "Bearer secret-token", **headers},
    )


def check(
    path: str,
    identities: Identities,
    *,
    settings: AuthzSettings | None = None,
    log: DecisionLog | None = None,
    metrics: AuthzMetrics | None = None,
) -> Outcome:
    policy = PathPolicy()
    authorizer = Authorizer(
        resolver=FixedIdentities(identities),
        policy=lambda: policy,
        settings=settings,
        decision_log=log,
        metrics=metrics,
    )
    return asyncio.run(authorizer.check(ctx(path)))


def test_allow_sends_verified_identities_upstream_and_strips_credentials() -> None:
    user = UserIdentity("https://idp", "alice", {"sub": "alice"})
    outcome = check("/internal/x", Identities(peer=WEB, user=user))
    assert outcome.allowed and outcome.status == 200
    assert outcome.upstream_headers["x-authd-caller"] == str(WEB)
    assert outcome.upstream_headers["x-authd-subject"] == "alice"
    assert outcome.upstream_headers["x-authd-decision-id"] == outcome.decision_id
    assert "authorization" in outcome.remove_headers
    assert "x-api-key" in outcome.remove_headers
    assert outcome.dynamic_metadata["decision_id"] == outcome.decision_id
    assert outcome.dynamic_metadata["caller"] == str(WEB)


def test_allow_without_identity_removes_client_sent_identity_headers() -> None:
    outcome = check("/public/x", Identities())
    assert outcome.allowed
    assert "x-authd-caller" not in outcome.upstream_headers
    assert "x-authd-caller" in outcome.remove_headers  # a client's copy never reaches upstream
    assert "x-authd-subject" in outcome.remove_headers


def test_deny_for_anonymous_caller_is_401_missing_credentials() -> None:
    outcome = check("/internal/x", Identities())
    assert not outcome.allowed
    assert outcome.status == 401
    assert outcome.decision.reason == Reason.MISSING_CREDENTIALS
    assert outcome.deny_headers["www-authenticate"] == 'Bearer realm="authd"'
    body = json.loads(outcome.deny_body)
    assert body == {"error": "missing_credentials", "decision_id": outcome.decision_id}


def test_deny_for_known_caller_is_403() -> None:
    outcome = check("/admin", Identities(peer=WEB))
    assert not outcome.allowed
    assert outcome.status == 403
    assert outcome.decision.reason == Reason.NO_MATCHING_RULE
    assert "www-authenticate" not in outcome.deny_headers
    assert json.loads(outcome.deny_body)["error"] == "no_matching_rule"


def test_invalid_credential_denies_401_even_where_policy_allows() -> None:
    problem = CredentialProblem("jwt_svid", "jwt-svid/signature: signature does not verify")
    outcome = check("/public/x", Identities(peer=WEB, problems=(problem,)))
    assert not outcome.allowed
    assert outcome.status == 401
    assert outcome.decision.reason == Reason.INVALID_CREDENTIALS
    assert 'error="invalid_token"' in outcome.deny_headers["www-authenticate"]
    assert "signature" not in outcome.deny_body  # no internal details to the client


def test_revoked_credential_denies_with_reason_revoked() -> None:
    problem = CredentialProblem("peer_certificate", "serial 1f is revoked", revoked=True)
    outcome = check("/internal/x", Identities(problems=(problem,)))
    assert not outcome.allowed
    assert outcome.decision.reason == Reason.REVOKED
    assert json.loads(outcome.deny_body)["error"] == "revoked"


def test_policy_status_and_body_are_passed_through() -> None:
    outcome = check("/teapot", Identities(peer=WEB))
    assert outcome.status == 418
    assert outcome.deny_body == "short and stout"


def test_dry_run_allows_and_records_the_would_be_deny() -> None:
    stream = io.StringIO()
    metrics = AuthzMetrics()
    outcome = check(
        "/admin",
        Identities(peer=WEB),
        settings=AuthzSettings(dry_run=True),
        log=DecisionLog(stream),
        metrics=metrics,
    )
    assert outcome.allowed
    assert outcome.dynamic_metadata["dry_run_would_deny"] is True
    record = json.loads(stream.getvalue())
    assert record["decision"] == "deny"
    assert record["dry_run"] is True
    assert record["status"] == 403
    assert metrics.checks[("grpc", "dry_run_deny", "no_matching_rule")] == 1


def test_decision_log_masks_credentials() -> None:
    stream = io.StringIO()
    policy = PathPolicy()
    authorizer = Authorizer(
        resolver=FixedIdentities(Identities(peer=WEB)),
        policy=lambda: policy,
        decision_log=DecisionLog(stream),
    )
    context = ctx("/internal/x?access_token=leaked&page=2", **{"x-api-key": "k-123"})
    outcome = asyncio.run(authorizer.check(context))
    line = stream.getvalue()
    for secret in ("secret-token", "leaked", "k-123"):
        assert secret not in line
    record = json.loads(line)
    assert record["decision_id"] == outcome.decision_id
    assert record["caller"] == str(WEB)
    assert record["rule"] == "internal"
    assert record["policy"] == "test:path"
    assert record["request"] == {
        "id": None,
        "method": "GET",
        "host": "api.example.com",
        "path": "/internal/x",
        "query_keys": ["access_token", "page"],
    }
    assert record["latency_us"] > 0


def test_input_document_carries_verified_identities_for_rego() -> None:
    policy = PathPolicy()
    authorizer = Authorizer(resolver=FixedIdentities(Identities(peer=WEB)), policy=lambda: policy)
    asyncio.run(authorizer.check(ctx("/rego/x")))
    (document,) = policy.inputs
    assert document["authd"]["caller"] == str(WEB)
    assert document["authd"]["authenticated"] is True
    assert document["parsed_path"] == ["rego", "x"]


class PartsPolicy:
    """Asks the pipeline's input document for the parts at ``paths``, and for all of it."""

    name = "test:parts"

    def __init__(self, paths: list[tuple[str, ...]]) -> None:
        self.paths = paths
        self.parts: dict[str, Any] = {}
        self.whole: dict[str, Any] = {}

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        self.parts = input_document.pruned(self.paths)
        self.whole = input_document()
        return Decision(allowed=True, reason=Reason.ALLOWED)


def test_input_document_gives_the_parts_a_policy_reads_as_pruning_all_of_it_would() -> None:
    paths = [
        ("attributes", "request", "http", "method"),
        ("attributes", "request", "http", "headers", "x-tenant"),
        ("authd", "caller"),
        ("authd", "user", "claims", "scope"),
        ("parsed_path",),
        ("parsed_query", "page"),
    ]
    policy = PartsPolicy(paths)
    user = UserIdentity("https://idp", "alice", {"scope": "orders:read"})
    authorizer = Authorizer(
        resolver=FixedIdentities(Identities(peer=WEB, user=user)), policy=lambda: policy
    )
    asyncio.run(authorizer.check(ctx("/orders/7?page=2", **{"x-tenant": "acme"})))
    assert policy.parts == prune_input(policy.whole, paths)
    assert policy.parts["authd"] == {
        "caller": str(WEB),
        "user": {"claims": {"scope": "orders:read"}},
    }
    assert policy.parts["attributes"]["request"]["http"] == {
        "method": "GET",
        "headers": {"x-tenant": "acme"},
    }


def test_decision_ids_are_unique() -> None:
    policy = PathPolicy()
    authorizer = Authorizer(resolver=FixedIdentities(Identities()), policy=lambda: policy)

    async def many() -> set[str]:
        return {(await authorizer.check(ctx("/public"))).decision_id for _ in range(500)}

    assert len(asyncio.run(many())) == 500


def test_metrics_count_checks_by_decision_and_reason() -> None:
    metrics = AuthzMetrics()
    check("/public", Identities(), metrics=metrics)
    check("/admin", Identities(peer=WEB), metrics=metrics)
    assert metrics.checks[("grpc", "allow", "allowed")] == 1
    assert metrics.checks[("grpc", "deny", "no_matching_rule")] == 1
    names = {m.name for m in metrics.collect()}
    assert {"authd_checks", "authd_check_duration_seconds", "authd_check_errors"} <= names


def test_stale_revocation_state_fails_closed_with_503() -> None:
    policy = PathPolicy()
    authorizer = Authorizer(
        resolver=FixedIdentities(Identities(peer=WEB)), policy=lambda: policy, fresh=lambda: False
    )
    outcome = asyncio.run(authorizer.check(ctx("/public/x")))
    assert not outcome.allowed
    assert outcome.status == 503
    assert outcome.decision.reason == Reason.STALE
    assert json.loads(outcome.deny_body)["error"] == "revocations_stale"


def test_a_replica_whose_store_went_backwards_fails_closed_naming_it() -> None:
    policy = PathPolicy()
    authorizer = Authorizer(
        resolver=FixedIdentities(Identities(peer=WEB)),
        policy=lambda: policy,
        fresh=lambda: False,
        stale_reason=lambda: Reason.STORE_REGRESSED,
    )
    outcome = asyncio.run(authorizer.check(ctx("/public/x")))
    assert (outcome.allowed, outcome.status) == (False, 503)
    assert (outcome.decision.reason, outcome.decision.rule) == (Reason.STORE_REGRESSED, "store")
    assert json.loads(outcome.deny_body)["error"] == "store_regressed"


class MetadataPolicy:
    """A policy whose result sets dynamic metadata under authd's own keys."""

    name = "test:metadata"

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        return Decision(
            allowed=self.allowed,
            reason=Reason.ALLOWED if self.allowed else Reason.POLICY_DENIED,
            rule="envoy/authz/response",
            dynamic_metadata={
                "decision_id": "forged",
                "reason": "allowed",
                "rule": "admin",
                "caller": "spiffe://example.org/admin",
                "dry_run_would_deny": False,
                "tenant": "acme",
            },
        )


def test_policy_metadata_never_overwrites_authd_keys() -> None:
    for allowed, identities in ((True, Identities(peer=WEB)), (False, Identities())):
        authorizer = Authorizer(
            resolver=FixedIdentities(identities), policy=lambda a=allowed: MetadataPolicy(a)
        )
        outcome = asyncio.run(authorizer.check(ctx("/x")))
        metadata = outcome.dynamic_metadata
        assert metadata["decision_id"] == outcome.decision_id
        assert metadata["reason"] == str(outcome.decision.reason)
        assert metadata["rule"] == "envoy/authz/response"
        assert metadata["tenant"] == "acme"  # the policy's own keys pass
        assert "dry_run_would_deny" not in metadata
        if allowed:
            assert metadata["caller"] == str(WEB)
        else:
            assert "caller" not in metadata  # authd names no caller: nor may the policy

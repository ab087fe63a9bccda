"""`authd policy check` (an offline decision, explained) and `authd apikey hash`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from authd.api.authd.admin.v1 import admin_pb2, admin_pb2_grpc
from authd.cli.client import CommandError, call, cli_config, local_channel
from authd.cli.errors import Exit, usage_error
from authd.cli.output import print_json
from authd.config import Config
from ca.bundle import TrustBundle
from ca.errors import InvalidSpiffeId
from ca.spiffe_id import SpiffeId, TrustDomain


def _bundle_for_policy_check(config: Config) -> tuple[TrustBundle, str]:
    """The daemon's trust bundle over the admin API, or an empty one and a note why not."""
    trust_domain = TrustDomain.parse(config.trust_domain)
    try:
        channel = local_channel(config)
        with channel:
            reply = call(admin_pb2_grpc.AdminStub(channel).GetBundle, admin_pb2.GetBundleRequest())
    except CommandError as exc:
        note = f"note: no trust bundle ({exc}); SVIDs and certificates cannot be verified"
        return TrustBundle(trust_domain), note
    return TrustBundle.parse(reply.spiffe_jwks, trust_domain), ""


def cmd_policy_check(args: argparse.Namespace) -> int:
    import asyncio

    from google.protobuf.json_format import ParseDict
    from google.protobuf.json_format import ParseError as ProtoParseError

    from authd.authz import assembly as authz_service
    from authd.extauthz.grpc_servicer import context_from_check_request
    from authd.policy.base import PolicyError
    from authd.ports.bundle_view import StaticBundles
    from ca.clock import SystemClock

    config = cli_config(args)
    try:
        document = json.loads(Path(args.input).read_text())
        attributes = document.get("attributes") if isinstance(document, dict) else None
        if not isinstance(attributes, dict):
            raise CommandError(
                f"{args.input}: expected a JSON object with 'attributes'", Exit.INVALID
            )
        request = ParseDict({"attributes": attributes}, CheckRequest(), ignore_unknown_fields=True)
    except OSError as exc:
        raise usage_error(f"--input: cannot read {args.input}: {exc.strerror}") from None
    except (ValueError, ProtoParseError) as exc:
        raise CommandError(
            f"{args.input}: not a CheckRequest or OPA-Envoy input: {exc}", Exit.INVALID
        ) from None
    bundle, note = _bundle_for_policy_check(config)
    try:
        policy = authz_service.policy_source(config).load()
        clock = SystemClock()
        resolver = authz_service.build_resolver(
            config,
            bundles=StaticBundles(bundle),
            clock=clock,
            txn_tokens=authz_service.build_txn_tokens(config, clock=clock),
        )
    except (PolicyError, ValueError) as exc:
        raise CommandError(str(exc), Exit.INVALID) from None
    authorizer = authz_service.build_authorizer(config, resolver=resolver, policy=lambda: policy)
    if args.at:
        try:
            SpiffeId.parse(args.at)
        except InvalidSpiffeId as exc:
            raise usage_error(f"--at: {exc}") from None
        request.attributes.destination.principal = args.at
    ctx = context_from_check_request(request)
    outcome = asyncio.run(authorizer.check(ctx))
    identities = outcome.identities
    explain = getattr(policy, "explain", None)
    # The verdict is said once, from the outcome (the pipeline may decide before the policy).
    explanation: list[str] = [
        line
        for line in (explain(ctx, identities) if explain is not None else [])
        if not line.startswith("decision: ")
    ]
    decision = outcome.decision
    rule, detail = rule_and_detail(decision.rule)
    report = {
        "allowed": outcome.allowed,
        "status": outcome.status,
        "reason": str(decision.reason),
        "rule": rule or None,
        "detail": detail or None,
        "policy": policy.name,
        "identities": {
            "peer": str(identities.peer) if identities.peer else None,
            "peer_serial": identities.peer_serial,
            "workload": str(identities.workload) if identities.workload else None,
            "user": identities.user.subject if identities.user else None,
            "api_key": identities.api_key,
            "txn": identities.txn_token.txn if identities.txn_token else None,
            "txn_req_wl": identities.txn_token.req_wl if identities.txn_token else None,
            "txn_scope": " ".join(identities.txn_token.scope) if identities.txn_token else None,
            "problems": [f"{p.kind}: {p.reason}" for p in identities.problems],
        },
        "upstream_headers": outcome.upstream_headers,
        "removed_headers": outcome.remove_headers,
        "explanation": explanation,
    }
    if note:
        print(note, file=sys.stderr)
    if args.json:
        print_json(report)
    else:
        verdict = "ALLOW" if outcome.allowed else f"DENY {outcome.status}"
        print(f"{verdict}  reason={decision.reason}  rule={rule or '-'}")
        if detail:
            print(f"detail: {detail}")
        print(f"policy: {policy.name}")
        if args.at or ctx.destination_principal:
            print(f"at: {args.at or ctx.destination_principal}")
        print("identities:")
        found = report["identities"]
        assert isinstance(found, dict)
        for key, value in found.items():
            if key == "problems":
                for problem in value:
                    print(f"  problem: {problem}")
            elif value:
                print(f"  {key}: {value}")
        if not identities.authenticated and not identities.problems:
            print("  (none: no verified credential in the request)")
        if explanation:
            print("explanation:")
        for line in explanation:
            print(f"  {line}")
        for name, value in outcome.upstream_headers.items():
            print(f"upstream header {name}: {value}")
    return Exit.OK if outcome.allowed else Exit.DENIED


def rule_and_detail(rule: str) -> tuple[str, str]:
    """A decision's ``rule`` as a name, and the sentence some deciders put there instead."""
    if " " not in rule:
        return rule, ""
    return "", rule


def cmd_apikey_hash(args: argparse.Namespace) -> int:
    from authd.authz.api_keys import hash_api_key

    name = toml_string(args.name)
    key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        raise usage_error("no API key on standard input")
    print(f'[[keys]]\nname = {name}\nsha256 = "{hash_api_key(key)}"')
    return 0


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string (JSON's escapes are TOML's), checked by reading it back."""
    import tomllib

    quoted = json.dumps(value)
    try:
        if not value or tomllib.loads(f"v = {quoted}")["v"] != value:
            raise ValueError(value)
    except (ValueError, tomllib.TOMLDecodeError):
        raise usage_error(f"--name: {value!r} cannot be a key's name") from None
    return quoted

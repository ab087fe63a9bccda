"""The `authd` command line: every subcommand, its flags and the function that runs it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from authd.cli.agent_commands import add_agent_commands
from authd.cli.audit_commands import cmd_audit_log, cmd_audit_verify, cmd_svid_list
from authd.cli.ca_commands import (
    cmd_authority_activate,
    cmd_authority_prepare,
    cmd_authority_revoke,
    cmd_authority_show,
    cmd_authority_taint,
    cmd_bundle_show,
    cmd_ca_show,
)
from authd.cli.completion import SHELLS, cmd_completion
from authd.cli.daemon_commands import cmd_healthcheck, cmd_run
from authd.cli.demo_commands import add_demo_parser
from authd.cli.doctor import cmd_doctor
from authd.cli.entry_commands import (
    cmd_entry_create,
    cmd_entry_delete,
    cmd_entry_list,
    cmd_entry_show,
    cmd_entry_update,
)
from authd.cli.federation_commands import cmd_bundle_list
from authd.cli.log_commands import cmd_log
from authd.cli.mint_commands import cmd_jwt_mint, cmd_x509_mint
from authd.cli.policy_commands import cmd_apikey_hash, cmd_policy_check
from authd.cli.policy_rego_commands import cmd_policy_eval, cmd_policy_test
from authd.cli.revocation_commands import (
    REVOCATION_KINDS,
    cmd_revocations_list,
    cmd_revoke,
    cmd_unrevoke,
)
from authd.cli.sds_commands import add_sds_commands
from authd.cli.store_commands import add_store_commands
from authd.cli.xds_commands import add_policy_explain, add_xds_commands

JSON_HELP = "print one JSON document instead of text"


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def command_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser under ``parser`` that runs a command (has no subcommands of its own)."""
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        yield parser
    for action in nested:
        for child in dict.fromkeys(action.choices.values()):
            yield from command_parsers(child)


def add_entry_flags(parser: argparse.ArgumentParser, *, update: bool) -> None:
    parser.add_argument(
        "--spiffe-id", required=not update, metavar="ID", help="spiffe://trust-domain/path"
    )
    parser.add_argument(
        "--parent-id", metavar="ID", help="default: spiffe://<trust-domain>/authd (authd itself)"
    )
    parser.add_argument(
        "--selector",
        action="append",
        required=not update,
        metavar="TYPE:KEY:VALUE",
        help="e.g. unix:uid:1000 (repeat; all must match)"
        + ("; replaces all selectors" if update else ""),
    )
    parser.add_argument("--x509-svid-ttl", metavar="DURATION", help="0: the CA's default")
    parser.add_argument("--jwt-svid-ttl", metavar="DURATION", help="0: the CA's default")
    dns = parser.add_mutually_exclusive_group()
    dns.add_argument("--dns", action="append", metavar="NAME", help="DNS SAN (repeat)")
    federates = parser.add_mutually_exclusive_group()
    federates.add_argument(
        "--federates-with", action="append", metavar="TRUST_DOMAIN", help="(repeat)"
    )
    if update:
        dns.add_argument("--clear-dns", action="store_true", help="remove every DNS name")
        federates.add_argument(
            "--clear-federates-with", action="store_true", help="federate with no one"
        )
    parser.add_argument(
        "--admin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the SVIDs of this entry may call the admin API over mTLS (admin.mtls_address)",
    )
    parser.add_argument(
        "--downstream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SPIRE's flag of that name (stored, not yet acted on)",
    )
    parser.add_argument("--hint", metavar="TEXT", help="tells a workload's SVIDs apart")
    parser.add_argument(
        "--expires-at", metavar="TIME", help="RFC 3339 (2030-01-01T00:00:00Z) or Unix seconds"
    )
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help="TOML config file (default: $AUTHD_CONFIG, else none)"
    )
    common.add_argument(
        "--data-dir", metavar="DIR", help="where state lives (default: /var/lib/authd for root)"
    )
    common.add_argument(
        "--socket", metavar="PATH", help="admin socket (default: <data-dir>/admin.sock)"
    )
    # Every command that calls the admin API can call a remote authd over mutual TLS.
    client = argparse.ArgumentParser(add_help=False, parents=[common])
    remote = client.add_argument_group("remote admin over mTLS (all four together)")
    remote.add_argument(
        "--server", metavar="HOST:PORT", help="the admin.mtls_address of a remote authd"
    )
    remote.add_argument("--cert", metavar="FILE", help="your X.509-SVID, PEM (e.g. svid.pem)")
    remote.add_argument("--key", metavar="FILE", help="its private key, PEM (e.g. svid.key)")
    remote.add_argument("--bundle", metavar="FILE", help="the trust bundle, PEM (bundle.pem)")

    parser = argparse.ArgumentParser(
        prog="authd",
        description="A SPIFFE certificate authority and Envoy ext_authz decision point.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    run = commands.add_parser("run", parents=[common], help="run the daemon")
    run.add_argument("--trust-domain", metavar="NAME", help="trust domain (default example.org)")
    run.set_defaults(func=cmd_run)

    check = commands.add_parser(
        "healthcheck", parents=[client], help="exit 0 if the daemon is serving"
    )
    check.add_argument("--quiet", action="store_true", help="print nothing on success")
    check.set_defaults(func=cmd_healthcheck)

    ca = commands.add_parser("ca", help="the certificate authority").add_subparsers(
        dest="ca_command", metavar="<command>", required=True
    )
    show = ca.add_parser("show", parents=[client], help="trust domain and authorities")
    show.add_argument("--json", action="store_true", help=JSON_HELP)
    show.set_defaults(func=cmd_ca_show)

    x509_commands = commands.add_parser("x509", help="X.509-SVIDs").add_subparsers(
        dest="x509_command", metavar="<command>", required=True
    )
    mint = x509_commands.add_parser(
        "mint", parents=[client], help="mint an X.509-SVID (key made locally, sent as a CSR)"
    )
    mint.add_argument("--spiffe-id", required=True, metavar="ID", help="spiffe://trust-domain/path")
    mint.add_argument("--dns", action="append", default=[], metavar="NAME", help="DNS SAN (repeat)")
    mint.add_argument("--ttl", metavar="DURATION", help="e.g. 30m (default: ca.x509_svid_ttl)")
    mint.add_argument(
        "--key-type",
        default="ec-p256",
        choices=["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"],
        help="key to generate (default ec-p256)",
    )
    mint.add_argument(
        "--out", required=True, metavar="DIR", help="writes svid.pem, svid.key, bundle.pem"
    )
    add_json_flag(mint)
    mint.set_defaults(func=cmd_x509_mint)

    jwt_commands = commands.add_parser("jwt", help="JWT-SVIDs").add_subparsers(
        dest="jwt_command", metavar="<command>", required=True
    )
    jwt_mint = jwt_commands.add_parser("mint", parents=[client], help="mint a JWT-SVID")
    jwt_mint.add_argument(
        "--spiffe-id", required=True, metavar="ID", help="spiffe://trust-domain/path (the sub)"
    )
    jwt_mint.add_argument(
        "--audience", action="append", required=True, metavar="AUD", help="audience (repeat)"
    )
    jwt_mint.add_argument("--ttl", metavar="DURATION", help="e.g. 5m (default: ca.jwt_svid_ttl)")
    add_json_flag(jwt_mint)
    jwt_mint.set_defaults(func=cmd_jwt_mint)

    bundle = commands.add_parser("bundle", help="the trust bundle").add_subparsers(
        dest="bundle_command", metavar="<command>", required=True
    )
    bundle_show = bundle.add_parser("show", parents=[client], help="print the trust bundle")
    bundle_show.add_argument(
        "--format",
        choices=["spiffe", "pem"],
        default="spiffe",
        help="spiffe: the SPIFFE bundle as JWKS (JSON, default); pem: the X.509 roots",
    )
    bundle_show.add_argument(
        "--trust-domain",
        metavar="TD",
        help="a federated trust domain's bundle (default: ours)",
    )
    bundle_show.set_defaults(func=cmd_bundle_show)
    bundle_list = bundle.add_parser(
        "list",
        parents=[client],
        help="our bundle and each federated one: sequence, endpoint, last refresh and error",
    )
    add_json_flag(bundle_list)
    bundle_list.set_defaults(func=cmd_bundle_list)

    entry = commands.add_parser("entry", help="registration entries").add_subparsers(
        dest="entry_command", metavar="<command>", required=True
    )
    entry_create = entry.add_parser("create", parents=[client], help="create an entry")
    entry_create.add_argument(
        "--entry-id", metavar="ID", help="the entry's id (default: generated)"
    )
    add_entry_flags(entry_create, update=False)
    entry_create.set_defaults(func=cmd_entry_create)
    entry_show = entry.add_parser("show", parents=[client], help="show one entry")
    entry_show.add_argument("id", metavar="ID", help="the entry's id")
    entry_show.add_argument("--json", action="store_true", help=JSON_HELP)
    entry_show.set_defaults(func=cmd_entry_show)
    entry_list = entry.add_parser("list", parents=[client], help="list entries")
    entry_list.add_argument("--spiffe-id", metavar="ID", help="only entries for this SPIFFE ID")
    entry_list.add_argument("--parent-id", metavar="ID", help="only entries under this parent")
    entry_list.add_argument(
        "--selector", metavar="TYPE:KEY:VALUE", help="only entries with this selector"
    )
    entry_list.add_argument("--json", action="store_true", help=JSON_HELP)
    entry_list.set_defaults(func=cmd_entry_list)
    entry_update = entry.add_parser(
        "update", parents=[client], help="change an entry (flags not given keep their value)"
    )
    entry_update.add_argument("id", metavar="ID", help="the entry's id")
    entry_update.add_argument(
        "--revision",
        type=int,
        metavar="N",
        help="refuse the update unless the entry is at revision N (default: as just read)",
    )
    add_entry_flags(entry_update, update=True)
    entry_update.set_defaults(func=cmd_entry_update)
    entry_delete = entry.add_parser("delete", parents=[client], help="delete an entry")
    entry_delete.add_argument("id", metavar="ID", help="the entry's id")
    add_json_flag(entry_delete)
    entry_delete.set_defaults(func=cmd_entry_delete)

    authority = commands.add_parser(
        "authority", help="rotate the CA's authorities by hand"
    ).add_subparsers(dest="authority_command", metavar="<command>", required=True)
    authority_show = authority.add_parser(
        "show", parents=[client], help="every X.509 and JWT authority and its state"
    )
    authority_show.add_argument("--json", action="store_true", help=JSON_HELP)
    authority_show.set_defaults(func=cmd_authority_show)
    for name, func, text, needs_id in (
        ("prepare", cmd_authority_prepare, "prepare the next authority (enters the bundle)", False),
        ("activate", cmd_authority_activate, "make the prepared authority sign", False),
        ("taint", cmd_authority_taint, "taint a retired authority (re-issue what it signed)", True),
        ("revoke", cmd_authority_revoke, "remove a tainted authority from the bundle", True),
    ):
        step = authority.add_parser(name, parents=[client], help=text)
        step.add_argument(
            "--kind", required=True, choices=["x509", "jwt"], help="X.509 or JWT authorities"
        )
        if needs_id:
            step.add_argument(
                "--id", required=True, metavar="AUTHORITY_ID", help="see `authd authority show`"
            )
        add_json_flag(step)
        step.set_defaults(func=func)

    revoke = commands.add_parser(
        "revoke",
        parents=[client],
        help="revoke SVIDs by serial, SPIFFE ID or registration entry; tokens by jti or txn",
    )
    unrevoke = commands.add_parser(
        "unrevoke", parents=[client], help="lift a certificate-hold revocation"
    )
    for step in (revoke, unrevoke):
        step.add_argument("kind", choices=list(REVOCATION_KINDS), help="what TARGET is")
        step.add_argument(
            "target",
            metavar="TARGET",
            help="a serial (hex, 0x... or AA:BB:...), SPIFFE ID, entry id, JWT id (jti) or "
            "transaction id (a Txn-Token's txn)",
        )
    revoke.add_argument(
        "--reason",
        default="unspecified",
        metavar="REASON",
        help="RFC 5280 reason: key-compromise, ca-compromise, affiliation-changed, superseded, "
        "cessation-of-operation, certificate-hold (the only one unrevoke lifts), "
        "privilege-withdrawn, aa-compromise, unspecified (default), or its number",
    )
    revoke.add_argument("--note", default="", metavar="TEXT", help="kept with the revocation")
    add_json_flag(revoke)
    add_json_flag(unrevoke)
    revoke.set_defaults(func=cmd_revoke)
    unrevoke.set_defaults(func=cmd_unrevoke)

    revocations = commands.add_parser("revocations", help="what is revoked").add_subparsers(
        dest="revocations_command", metavar="<command>", required=True
    )
    revocations_list = revocations.add_parser("list", parents=[client], help="list revocations")
    revocations_list.add_argument("--kind", choices=list(REVOCATION_KINDS), help="only this kind")
    revocations_list.add_argument("--json", action="store_true", help=JSON_HELP)
    revocations_list.set_defaults(func=cmd_revocations_list)

    svid = commands.add_parser("svid", help="issued SVIDs").add_subparsers(
        dest="svid_command", metavar="<command>", required=True
    )
    svid_list = svid.add_parser(
        "list", parents=[client], help="the SVIDs an authority signed, who holds them, revoked?"
    )
    svid_list.add_argument(
        "--authority", required=True, metavar="AUTHORITY_ID", help="see `authd authority show`"
    )
    svid_list.add_argument("--spiffe-id", metavar="ID", help="only SVIDs of this SPIFFE ID")
    svid_list.add_argument("--json", action="store_true", help=JSON_HELP)
    svid_list.set_defaults(func=cmd_svid_list)

    audit = commands.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit_command", metavar="<command>", required=True
    )
    audit_log = audit.add_parser("log", parents=[client], help="print the audit log")
    audit_log.add_argument(
        "--since", metavar="TIME", help="RFC 3339 (2030-01-01T00:00:00Z) or Unix seconds"
    )
    audit_log.add_argument(
        "--spiffe-id",
        metavar="ID",
        help="only records about this SPIFFE ID (its revocations, its entries, its serials)",
    )
    audit_log.add_argument("--subject", metavar="SUBJECT", help="only records with this subject")
    audit_log.add_argument("--json", action="store_true", help=JSON_HELP)
    audit_log.set_defaults(func=cmd_audit_log)
    audit_verify = audit.add_parser(
        "verify",
        parents=[client],
        help="check the hash chain; exit 1 naming the first broken record",
    )
    add_json_flag(audit_verify)
    audit_verify.set_defaults(func=cmd_audit_verify)
    add_store_commands(commands, client)

    policy = commands.add_parser("policy", help="the authorization policy").add_subparsers(
        dest="policy_command", metavar="<command>", required=True
    )
    policy_check = policy.add_parser(
        "check",
        parents=[common],
        help="decide a request offline and explain why (exit 0 allow, 3 deny)",
    )
    policy_check.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help="a CheckRequest as JSON, or an OPA-Envoy input document (uses 'attributes')",
    )
    policy_check.add_argument(
        "--at",
        metavar="SPIFFE_ID",
        help="decide as the hop with this SPIFFE ID would (its rules with `at`); "
        "default: the input's destination principal",
    )
    policy_check.add_argument("--json", action="store_true", help=JSON_HELP)
    policy_check.set_defaults(func=cmd_policy_check)
    policy_test = policy.add_parser(
        "test",
        help="run a Rego directory's test_* rules like `opa test` (exit 1 on a failure)",
    )
    policy_test.add_argument("directory", metavar="DIR", help="the .rego files and their data")
    policy_test.add_argument(
        "-v", "--verbose", action="store_true", help="every test's result, by file"
    )
    policy_test.add_argument("--json", action="store_true", help=JSON_HELP)
    policy_test.set_defaults(func=cmd_policy_test)
    policy_eval = policy.add_parser(
        "eval",
        parents=[common],
        help="one input document through the configured Rego/OPA policy, like `opa eval`",
    )
    policy_eval.add_argument(
        "--input", required=True, metavar="FILE", help="the input document, JSON"
    )
    policy_eval.add_argument(
        "query",
        nargs="?",
        metavar="QUERY",
        help="e.g. data.envoy.authz.allow (default: the configured entrypoint or opa_path)",
    )
    policy_eval.set_defaults(func=cmd_policy_eval)

    decision_log = commands.add_parser(
        "log", parents=[common], help="one transaction's decisions, from the decision log file"
    )
    decision_log.add_argument(
        "--txn", required=True, metavar="ID", help="the transaction id (a Txn-Token's txn)"
    )
    decision_log.add_argument(
        "--file", metavar="PATH", help="the decision log to read (default: authz.decision_log)"
    )
    decision_log.add_argument("--json", action="store_true", help=JSON_HELP)
    decision_log.set_defaults(func=cmd_log)
    add_policy_explain(policy, client)

    apikey = commands.add_parser("apikey", help="API keys for ext_authz").add_subparsers(
        dest="apikey_command", metavar="<command>", required=True
    )
    apikey_hash = apikey.add_parser(
        "hash", help="read a key on stdin, print its entry for authz.api_keys_file"
    )
    apikey_hash.add_argument(
        "--name", required=True, metavar="NAME", help="the key's name in policies"
    )
    apikey_hash.set_defaults(func=cmd_apikey_hash)

    doctor = commands.add_parser(
        "doctor", parents=[common], help="check the daemon, its sockets, store and authorities"
    )
    add_json_flag(doctor)
    doctor.set_defaults(func=cmd_doctor)
    add_sds_commands(commands, client)
    add_demo_parser(commands)
    add_xds_commands(commands, client)
    add_agent_commands(commands, common, client)
    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=list(SHELLS), help="bash, zsh or fish")
    completion.set_defaults(func=cmd_completion, root_parser=parser)
    for command in command_parsers(parser):
        # Usage errors found after parsing are reported with the command's own usage.
        command.set_defaults(command_parser=command)
    return parser

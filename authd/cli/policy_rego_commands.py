"""`authd policy test` and `authd policy eval`: Rego offline, as `opa test` and `opa eval`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from authd.cli.client import CommandError, cli_config
from authd.cli.errors import Exit, usage_error
from authd.cli.output import print_json

RULE = "-" * 80


def cmd_policy_test(args: argparse.Namespace) -> int:
    from authd.policy.base import PolicyError
    from authd.policy.rego_tests import go_duration, load_directory, run_tests

    directory = Path(args.directory)
    if not directory.exists():
        raise usage_error(f"{directory}: no such directory")
    try:
        sources, data = load_directory(directory)
        results = run_tests(sources, data)
    except PolicyError as exc:
        raise CommandError(f"invalid argument: {exc}", Exit.INVALID) from None
    if not results:
        raise CommandError(f"{directory}: no test cases found (rules named test_*)")
    failed = [r for r in results if r.outcome != "PASS"]
    if args.json:
        print_json(
            [
                {
                    "file": r.file,
                    "name": r.name,
                    "outcome": r.outcome,
                    "duration_ns": round(r.seconds * 1e9),
                    "error": r.error or None,
                }
                for r in results
            ]
        )
        return Exit.FAILED if failed else Exit.OK

    def line(result: Any) -> str:
        return f"{result.name}: {result.outcome} ({go_duration(result.seconds)})"

    if failed and not args.verbose:
        print("FAILURES")
        print(RULE)
        for result in failed:
            print(line(result))
            if result.error:
                print(f"  {result.error}")
        print()
        print("SUMMARY")
        print(RULE)
    if failed or args.verbose:
        current = None
        for result in results:
            if result.file != current:
                if current is not None:
                    print()
                current = result.file
                print(f"{result.file}:")
            print(line(result))
            if args.verbose and result.error:
                print(f"  {result.error}")
        print(RULE)
    passed = len(results) - len(failed)
    if passed:
        print(f"PASS: {passed}/{len(results)}")
    for outcome in ("FAIL", "ERROR"):
        count = sum(1 for r in failed if r.outcome == outcome)
        if count:
            print(f"{outcome}: {count}/{len(results)}")
    return Exit.FAILED if failed else Exit.OK


def cmd_policy_eval(args: argparse.Namespace) -> int:
    from authd.policy.base import PolicyError
    from authd.policy.rego_source import normalize_entrypoint
    from authd.policy.rego_tests import evaluate_query
    from authd.policy.result import UNDEFINED

    config = cli_config(args)
    try:
        document = json.loads(Path(args.input).read_text(encoding="utf-8"))
    except OSError as exc:
        raise usage_error(f"--input: cannot read {args.input}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(
            f"invalid argument: {args.input}: not JSON: {exc}", Exit.INVALID
        ) from None
    authz = config.authz
    try:
        if authz.policy_engine == "rego":
            entrypoint = normalize_entrypoint(authz.rego_entrypoint)
            query = args.query or "data." + entrypoint.replace("/", ".")
            sources = _rego_sources([config.resolve_path(f) for f in authz.rego_files])
            result = evaluate_query(sources, {}, document, query)
        elif authz.policy_engine == "opa":
            path = normalize_entrypoint(args.query or authz.opa_path)
            result = _ask_opa(authz.opa_url, path, document, authz.opa_timeout_ms / 1000)
        else:
            raise CommandError(
                "invalid argument: authd policy eval needs authz.policy_engine rego or opa "
                "(`authd policy check` decides with the rules engine)",
                Exit.INVALID,
            )
    except PolicyError as exc:
        raise CommandError(f"invalid argument: {exc}", Exit.INVALID) from None
    # opa eval --format pretty: the value as indented JSON, or "undefined".
    print("undefined" if result is UNDEFINED else json.dumps(result, indent=2))
    return Exit.OK


def _rego_sources(paths: list[Path]) -> dict[str, str]:
    from authd.policy.base import PolicyError

    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.rglob("*.rego")) if path.is_dir() else [path])
    sources = {}
    for file in files:
        try:
            sources[str(file)] = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{file}: cannot read policy: {exc}") from None
    if not sources:
        raise PolicyError("no Rego modules configured (authz.rego_files)")
    return sources


def _ask_opa(url: str, path: str, document: Any, timeout: float) -> Any:
    """OPA's Data API answer for ``path`` (the server evaluates; nothing runs here)."""
    import asyncio

    from authd.policy.opa import OpaPolicy

    async def ask() -> Any:
        policy = OpaPolicy(url=url, path=path, timeout=max(timeout, 5.0))
        try:
            return await policy.result(document)
        finally:
            await policy.aclose()

    return asyncio.run(ask())

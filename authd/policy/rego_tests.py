"""Running a policy directory's Rego tests, as ``opa test`` does: every rule named
``test_*`` is a test, which passes when it is defined and true.

The directory's ``.rego`` files are compiled together, with its data files: a ``data.json``
or ``data.yaml`` in ``DIR/a/b/`` is ``data.a.b`` (``DIR/data.json`` is ``data``), as OPA
loads them. Each test runs on no input (a test sets its own with ``with input as``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authd.policy.base import PolicyError
from authd.policy.rego_source import COMMENT_OR_STRING, PACKAGE
from authd.policy.result import UNDEFINED

_TEST_RULE = re.compile(r"^[ \t]*(test_[A-Za-z0-9_]*)(?=[\s{:=]|$)", re.MULTILINE)
_DATA_FILES = ("data.json", "data.yaml", "data.yml")


@dataclass(frozen=True, slots=True)
class TestResult:
    file: str  # the module that defines the test, relative to the directory
    name: str  # data.<package>.<rule>
    outcome: str  # "PASS", "FAIL" or "ERROR"
    seconds: float
    error: str = ""


def test_rules(sources: Mapping[str, str]) -> list[tuple[str, str]]:
    """(file, entrypoint) of every test rule, in file and then source order, each once."""
    found: list[tuple[str, str]] = []
    for file, text in sources.items():
        code = COMMENT_OR_STRING.sub(" ", text)
        package = PACKAGE.search(text)
        if package is None:
            continue
        prefix = package.group(1).replace(".", "/")
        for name in dict.fromkeys(_TEST_RULE.findall(code)):
            found.append((file, f"{prefix}/{name}"))
    return found


def load_directory(directory: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The directory's modules (by path relative to it) and its data, merged by location."""
    if not directory.is_dir():
        raise PolicyError(f"{directory}: not a directory")
    sources: dict[str, str] = {}
    data: dict[str, Any] = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        try:
            if path.suffix == ".rego":
                sources[str(relative)] = path.read_text(encoding="utf-8")
            elif path.name in _DATA_FILES:
                _merge(data, relative.parent.parts, _read_data(path))
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        except (UnicodeDecodeError, ValueError) as exc:
            raise PolicyError(f"{path}: {exc}") from exc
    if not sources:
        raise PolicyError(f"no Rego modules found in {directory}")
    return sources, data


def _read_data(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from None


def _merge(data: dict[str, Any], where: tuple[str, ...], value: Any) -> None:
    target = data
    for key in where:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ValueError(f"data at {'.'.join(where)} collides with another data file")
    if not isinstance(value, dict):
        raise ValueError("a data file must hold an object")
    for key, item in value.items():
        if isinstance(item, dict) and isinstance(target.get(key), dict):
            _merge(target, (key,), item)
        else:
            target[key] = item


def run_tests(sources: Mapping[str, str], data: Mapping[str, Any]) -> list[TestResult]:
    """Compile the modules with the data and run every test rule."""
    from regopy import Interpreter, LogLevel, RegoError

    from authd.policy.rego import node_errors
    from authd.policy.rego_errors import rego_error_message

    tests = test_rules(sources)
    if not tests:
        return []
    interpreter = Interpreter()
    interpreter.log_level = LogLevel.NONE
    try:
        if data:
            interpreter.add_data(dict(data))
        for name, text in sources.items():
            interpreter.add_module(name, text)
        bundle = interpreter.build(None, [entrypoint for _, entrypoint in tests])
    except RegoError as exc:
        raise PolicyError(rego_error_message(str(exc), sources)) from exc
    if not bundle.ok():
        raise PolicyError(node_errors(bundle, sources))
    results = []
    for file, entrypoint in tests:
        started = time.perf_counter()
        outcome, error = "FAIL", ""
        try:
            output = interpreter.query_bundle_entrypoint(bundle, entrypoint)
            if not output.ok():
                outcome, error = "ERROR", node_errors(output, sources)
            elif output.results and output.results[0].expressions == [True]:
                outcome = "PASS"
        except (RegoError, ValueError) as exc:
            outcome, error = "ERROR", rego_error_message(str(exc), sources)
        elapsed = time.perf_counter() - started
        name = "data." + entrypoint.replace("/", ".")
        results.append(TestResult(file, name, outcome, elapsed, error))
    return results


def go_duration(seconds: float) -> str:
    """A duration as Go prints one (``426ns``, ``1.417µs``, ``2.5ms``), as ``opa test`` does."""
    nanos = round(seconds * 1e9)
    for unit, size, digits in (("s", 10**9, 9), ("ms", 10**6, 6), ("µs", 10**3, 3)):
        if nanos >= size:
            text = f"{nanos / size:.{digits}f}".rstrip("0").rstrip(".")
            return text + unit
    return f"{nanos}ns"


def evaluate_query(
    sources: Mapping[str, str], data: Mapping[str, Any], document: Any, query: str
) -> Any:
    """The value of ``query`` (``data.envoy.authz.allow``, say) for the input ``document``,
    or ``UNDEFINED``; a query of several expressions gives the first one's value."""
    from regopy import Input, Interpreter, LogLevel, RegoError

    from authd.policy.rego import node_errors
    from authd.policy.rego_errors import rego_error_message

    interpreter = Interpreter()
    interpreter.log_level = LogLevel.NONE
    try:
        if data:
            interpreter.add_data(dict(data))
        for name, text in sources.items():
            interpreter.add_module(name, text)
        interpreter.set_input(Input(document))
        output = interpreter.query(query)
    except RegoError as exc:
        raise PolicyError(rego_error_message(str(exc), sources)) from exc
    except (ValueError, TypeError) as exc:
        raise PolicyError(f"cannot evaluate {query!r}: {exc}") from exc
    if not output.ok():
        raise PolicyError(node_errors(output, sources))
    results = output.results
    if not results or not results[0].expressions:
        return UNDEFINED
    return results[0].expressions[0]

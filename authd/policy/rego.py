"""Rego policies run in-process by regopy (rego-cpp), with OPA-Envoy's input and results.

An OPA-Envoy policy runs unchanged: the input is the OPA-Envoy input document
(``input.attributes``, ``input.parsed_path``, ``input.parsed_query``, ``input.parsed_body``,
``input.truncated_body``, ``input.version``) plus ``input.authd``, the identities authd has
already verified; the entrypoint (default ``envoy/authz/allow``) yields a boolean or an
OPA-Envoy result object (see ``authd.policy.result``). An undefined result denies.

The modules are compiled once, at load, into a bundle; each check runs the bundle's entrypoint
(``query_bundle_entrypoint``: ~35 µs for a one-rule policy, ~90 µs for
``deploy/policy/authz.rego``) on the input converted once to a regopy ``Input``. That
conversion grows with the input (~160 µs for a bare request, ~230 µs with fifteen headers) and
usually costs more than the query, so authd gives Rego only the parts of the input the modules
read (``referenced_input_paths``: static paths such as ``input.parsed_path`` or
``input.attributes.request.http.method``; a bare ``input`` anywhere means the whole document).
For ``deploy/policy/authz.rego`` that halves an evaluation (~200 → ~90 µs). Evaluation is
synchronous CPU and is called inline; each thread gets its own interpreter, the bundle is shared.

regopy is not OPA. The builtins FIELD-NOTES.md lists as missing, re-checked with regopy 1.5.2:
``net.cidr_contains`` ("Networking builtins are not supported") and ``http.send`` ("HTTP
builtins are not supported") do not exist; ``time.parse_rfc3339_ns`` rejects the common ``Z``
zone designator (numeric offsets such as ``+00:00`` parse); ``crypto.x509.parse_certificates``
was listed as missing but parses PEM here, including Envoy's URL-encoded
``source.certificate`` after ``urlquery.decode``. As in OPA (without ``strict-builtin-errors``),
a failing builtin makes its expression undefined, so a rule depending on one fails closed.
authd verifies certificates and tokens itself and hands the verified result to Rego in
``input.authd``, so policies need not. ``io.jwt.decode``, ``glob.match``, ``regex.match`` and
``time.now_ns`` work. rego-cpp is also laxer than OPA at compile time (it accepts some unsafe or
undefined variables that OPA rejects, and a ``default`` rule with a body), so check policies
with ``opa check`` too.

A regopy 1.5.2 bug to know: some constant objects that hold numbers and have more than about
six members (e.g. ``{"allowed": false, "http_status": 403, "body": "no", "headers": {...},
...}``) fail at every evaluation with "bundle verify: raw index N >= local_count M", which
surfaces as a ``PolicyError``. Build such a result from smaller parts (``"headers": h`` with
``h`` its own rule, or ``object.union(a, b)``); ``tests/authd/test_policy_rego.py`` pins it.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from regopy import Input, Interpreter, LogLevel, RegoError

from authd.authz.model import CheckContext, Decision, Identities
from authd.policy.base import InputDocument, PolicyError
from authd.policy.result import decision_from_result, undefined_decision

DEFAULT_ENTRYPOINT: Final = "envoy/authz/allow"
INPUT_CACHE_SIZE: Final = 1024

_ERROR_START = re.compile(r"\(error(?=\s)")
_LENGTH_PREFIX = re.compile(r"(\d+):")
_PACKAGE = re.compile(r"^[ \t]*package[ \t]+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)


class RegoPolicy:
    """A compiled Rego bundle and the entrypoint that decides."""

    def __init__(
        self, bundle: Any, entrypoint: str, name: str, sources: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.entrypoint = entrypoint
        self._bundle = bundle
        self._sources = dict(sources or {})  # to give evaluation errors a line number
        # The input paths the modules read, when they only read static paths: Rego then gets
        # just those parts of the input, which costs a fraction of converting all of it.
        self.input_paths = referenced_input_paths(self._sources.values())
        self._inputs: dict[str, Input] = {}
        # A regopy Interpreter holds the current input, so each thread gets its own.
        self._local = threading.local()

    @classmethod
    def load(
        cls,
        paths: Sequence[Path | str],
        entrypoint: str = DEFAULT_ENTRYPOINT,
        data: Mapping[str, Any] | None = None,
    ) -> RegoPolicy:
        """Compile the ``.rego`` files (a directory means every ``.rego`` file below it)."""
        files: list[Path] = []
        for path in map(Path, paths):
            files.extend(sorted(path.rglob("*.rego")) if path.is_dir() else [path])
        if not files:
            shown = ", ".join(map(str, paths)) or "(none)"
            raise PolicyError(f"no Rego modules found in {shown}")
        sources: dict[str, str] = {}
        for file in files:
            try:
                sources[str(file)] = file.read_text(encoding="utf-8")
            except OSError as exc:
                raise PolicyError(f"{file}: cannot read policy: {exc.strerror or exc}") from exc
            except UnicodeDecodeError as exc:
                raise PolicyError(f"{file}: policy is not UTF-8: {exc.reason}") from exc
        return cls.from_sources(sources, entrypoint, data, name="rego:" + ",".join(sources))

    @classmethod
    def from_sources(
        cls,
        sources: Mapping[str, str],
        entrypoint: str = DEFAULT_ENTRYPOINT,
        data: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> RegoPolicy:
        """Compile modules given as {source name: text}; names appear in error messages."""
        entrypoint = normalize_entrypoint(entrypoint)
        _check_entrypoint_defined(entrypoint, sources)
        interpreter = Interpreter()
        interpreter.log_level = LogLevel.NONE  # errors come back in RegoError, not on stdout
        try:
            if data:
                interpreter.add_data(dict(data))
            for source_name, text in sources.items():
                interpreter.add_module(source_name, text)
            bundle = interpreter.build(None, [entrypoint])
        except RegoError as exc:
            raise PolicyError(rego_error_message(str(exc), sources)) from exc
        if not bundle.ok():
            raise PolicyError(_node_errors(bundle, sources))
        return cls(bundle, entrypoint, name or "rego:" + ",".join(sources), sources)

    def _interpreter(self) -> Interpreter:
        interpreter: Interpreter | None = getattr(self._local, "interpreter", None)
        if interpreter is None:
            interpreter = Interpreter()
            interpreter.log_level = LogLevel.NONE
            self._local.interpreter = interpreter
        return interpreter

    def evaluate_document(self, document: Mapping[str, Any]) -> Decision:
        """Run the entrypoint on an OPA-Envoy input document."""
        interpreter = self._interpreter()
        try:
            converted = self._input(document)
        except (RegoError, ValueError, TypeError) as exc:  # a value that is not JSON
            raise PolicyError(f"{self.name}: input cannot be given to Rego: {exc}") from exc
        try:
            interpreter.set_input(converted)
            output = interpreter.query_bundle_entrypoint(self._bundle, self.entrypoint)
        except RegoError as exc:
            raise self._failed(rego_error_message(str(exc), self._sources)) from exc
        except json.JSONDecodeError as exc:
            # regopy parses its output as JSON; some failures come back "ok" with an error
            # tree instead of JSON (e.g. "bundle verify: raw index ..."; see the docstring).
            raise self._failed(rego_error_message(exc.doc, self._sources)) from exc
        if not output.ok():
            raise self._failed(_node_errors(output, self._sources))
        results = output.results
        if not results or not results[0].expressions:
            return undefined_decision(self.entrypoint)
        return decision_from_result(results[0].expressions[0], self.entrypoint)

    def _input(self, document: Mapping[str, Any]) -> Input:
        """The regopy Input for ``document``: pruned, and reused for a pruned input seen
        recently (requests to the same route by the same caller convert to the same one)."""
        if self.input_paths is None:
            return Input(document)
        pruned = prune_input(document, self.input_paths)
        key = json.dumps(pruned, sort_keys=True, separators=(",", ":"))
        cache = self._inputs
        converted = cache.get(key)
        if converted is None:
            converted = Input(pruned)
            if len(cache) >= INPUT_CACHE_SIZE:
                cache.pop(next(iter(cache)))
            cache[key] = converted
        return converted

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        return self.evaluate_document(input_document())

    def _failed(self, detail: str) -> PolicyError:
        return PolicyError(f"{self.name}: evaluating {self.entrypoint} failed: {detail}")


_COMMENT_OR_STRING = re.compile(r'"(?:\\.|[^"\\])*"|`[^`]*`|#[^\n]*')
_INPUT = re.compile(r"(?<![\w.])input\b")
_SEGMENT = re.compile(r'\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*"((?:\\.|[^"\\])*)"\s*\]')


def referenced_input_paths(sources: Iterable[str]) -> tuple[tuple[str, ...], ...] | None:
    """The static paths below ``input`` that the modules read, or None to give all of it.

    Conservative: a bare ``input`` (``with input as``, ``object.get(input, ...)``, ``walk``,
    or the word inside a string) means the whole document. A path ends at the first dynamic
    index (``headers[name]``, ``parsed_path[0]``), and the whole subtree there is kept.
    """
    paths: set[tuple[str, ...]] = set()
    for source in sources:
        # Drop comments; keep strings (a '#' inside one is not a comment).
        code = _COMMENT_OR_STRING.sub(
            lambda m: "" if m.group(0).startswith("#") else m.group(0), source
        )
        for match in _INPUT.finditer(code):
            path: list[str] = []
            position = match.end()
            while segment := _SEGMENT.match(code, position):
                path.append(segment.group(1) or segment.group(2))
                position = segment.end()
            if not path:
                return None
            paths.add(tuple(path))
    # A path covers every longer path below it.
    kept = {p for p in paths if not any(p[: len(q)] == q and p != q for q in paths)}
    return tuple(sorted(kept))


def prune_input(document: Mapping[str, Any], paths: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    """The parts of ``document`` at ``paths`` (and nothing else), in the same nesting."""
    pruned: dict[str, Any] = {}
    for path in paths:
        value: Any = document
        for key in path:
            if not isinstance(value, Mapping) or key not in value:
                break
            value = value[key]
        else:
            target = pruned
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = value
    return pruned


def normalize_entrypoint(entrypoint: str) -> str:
    """Accept ``envoy/authz/allow``, ``envoy.authz.allow`` or ``data.envoy.authz.allow``."""
    path = entrypoint.strip().removeprefix("data.").replace(".", "/").strip("/")
    if not path or "//" in path:
        raise PolicyError(f"bad Rego entrypoint {entrypoint!r}; expected e.g. {DEFAULT_ENTRYPOINT}")
    return path


def _check_entrypoint_defined(entrypoint: str, sources: Mapping[str, str]) -> None:
    """Refuse an entrypoint no module defines: every request would be denied as undefined.

    regopy compiles such a bundle without complaint, so look for a module whose package is a
    prefix of the entrypoint and that has a rule head named by the next path segment.
    """
    segments = entrypoint.split("/")
    packages: list[str] = []
    for text in sources.values():
        match = _PACKAGE.search(text)
        if match is None:
            continue
        package = match.group(1).split(".")
        packages.append(".".join(package))
        if segments[: len(package)] != package or len(segments) <= len(package):
            continue
        rule = re.escape(segments[len(package)])
        head = re.compile(rf"^[ \t]*(?:default[ \t]+)?{rule}(?=[\s.\[:={{]|$)", re.MULTILINE)
        if head.search(text):
            return
    raise PolicyError(
        f"entrypoint {entrypoint!r} is not defined by any module "
        f"(packages: {', '.join(sorted(set(packages))) or 'none'})"
    )


def rego_error_message(text: str, sources: Mapping[str, str] | None = None) -> str:
    """Turn regopy's error tree into ``file:line:col: message`` lines.

    regopy reports ``(error <n>:<source>|<byte offset>|<length> (errormsg <n>:<message>) ...)``
    with length-prefixed strings; the line and column come from the source text.
    """
    messages: list[str] = []
    for chunk in _ERROR_START.split(text)[1:]:
        message = _prefixed_after(chunk, "(errormsg ") or "error"
        location = _location(chunk, sources or {})
        messages.append(f"{location}: {message}" if location else message)
    return "; ".join(messages) if messages else text.strip()


def _prefixed_after(chunk: str, marker: str) -> str | None:
    start = chunk.find(marker)
    if start == -1:
        return None
    match = _LENGTH_PREFIX.match(chunk, start + len(marker))
    if match is None:
        return None
    length = int(match.group(1))
    return chunk[match.end() : match.end() + length]


def _location(chunk: str, sources: Mapping[str, str]) -> str | None:
    for match in _LENGTH_PREFIX.finditer(chunk):
        name = chunk[match.end() : match.end() + int(match.group(1))]
        position = re.match(r"\|(\d+)\|\d+", chunk[match.end() + len(name) :])
        if not name or position is None:
            continue
        text = sources.get(name)
        if text is None:
            return name
        data = text.encode("utf-8")
        offset = int(position.group(1))
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        return f"{name}:{line}:{column}"
    return None


def _node_errors(result: Any, sources: Mapping[str, str] | None = None) -> str:
    """The errors of a failed bundle or output, whose node is an error sequence."""
    try:
        root = result.node()
        details = [root.at(index).json() for index in range(len(root))]
    except (RegoError, AttributeError, IndexError, TypeError):
        details = []
    return rego_error_message("\n".join(details), sources) if details else "unknown regopy error"

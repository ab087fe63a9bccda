"""The decision-log rules of a Rego policy, ``system.log.drop`` and ``system.log.mask``.

Compiled once from the same modules as the policy, with the two rules as entrypoints (a rule
no module defines is simply undefined: nothing dropped, nothing masked). Each is evaluated
with the decision event as ``input``, as OPA does. One instance serves one thread (the
decision log writer): a regopy Interpreter holds the current input. Only the parts of the
event the modules read are given to Rego, and for deterministic rules the answers are kept by
those parts (the values returned are shared: callers copy what they change). ``refreshed()`` gives
the rules of the files as they are now, so an edited policy masks with its new rules (an edit
that does not compile keeps the old ones, with one error line).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from regopy import Input, Interpreter, LogLevel, RegoError

import authd.policy.rego  # noqa: F401 (loads rego-cpp's libstdc++ the way it needs, first)
from authd.check.input_document import prune_input
from authd.policy.base import PolicyError
from authd.policy.rego_errors import rego_error_message
from authd.policy.rego_source import (
    is_deterministic,
    normalize_entrypoint,
    referenced_input_paths,
)
from authd.policy.result import UNDEFINED

__all__ = ["LogRules"]

log = logging.getLogger(__name__)
ANSWER_CACHE_SIZE = 4096
_Signature = tuple[tuple[str, int, int], ...]
_MASK_PATH_STRING = re.compile(r'"/(?:input|result|nd_builtin_cache)(?:/[^"\\\n]*)?"')


def _rego_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.rglob("*.rego")) if path.is_dir() else [path])
    return files


def _signature(paths: Sequence[Path]) -> _Signature:
    """What changes when a module is edited, added or removed: names, mtimes, sizes."""
    seen = []
    for file in _rego_files(paths):
        try:
            info = os.stat(file)
        except OSError:
            seen.append((str(file), -1, -1))
        else:
            seen.append((str(file), info.st_mtime_ns, info.st_size))
    return tuple(seen)


class LogRules:
    def __init__(self, sources: Mapping[str, str], mask: str, drop: str) -> None:
        self.mask_path = normalize_entrypoint(mask)
        self.drop_path = normalize_entrypoint(drop)
        self._sources = dict(sources)
        interpreter = Interpreter()
        interpreter.log_level = LogLevel.NONE
        try:
            for name, text in sources.items():
                interpreter.add_module(name, text)
            self._bundle = interpreter.build(None, [self.mask_path, self.drop_path])
        except RegoError as exc:
            raise PolicyError(rego_error_message(str(exc), self._sources)) from exc
        if not self._bundle.ok():
            raise PolicyError(f"decision log rules: {self._bundle}")
        self._interpreter = Interpreter()
        self._interpreter.log_level = LogLevel.NONE
        # Only the parts of the event the modules read are converted for Rego (the costly step).
        # Mask paths are strings naming "/input/...": not reads of ``input``.
        self._input_paths = referenced_input_paths(
            _MASK_PATH_STRING.sub('""', text) for text in sources.values()
        )
        # Answers by the parts of the event read, when they depend on nothing else (the
        # parts read are often the same from one check to the next: a route, a caller).
        deterministic = self._input_paths is not None and is_deterministic(sources.values())
        self._answers: dict[str, tuple[bool, Any]] | None = {} if deterministic else None
        self._paths: tuple[Path, ...] = ()
        self._signature: _Signature = ()

    @classmethod
    def load(cls, paths: Sequence[Path | str], mask: str, drop: str) -> LogRules:
        """From the ``.rego`` files (a directory means every ``.rego`` file below it)."""
        where = tuple(map(Path, paths))
        signature = _signature(where)
        sources: dict[str, str] = {}
        for file in _rego_files(where):
            try:
                sources[str(file)] = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PolicyError(f"{file}: cannot read policy: {exc}") from exc
        rules = cls(sources, mask, drop)
        rules._paths, rules._signature = where, signature
        return rules

    def refreshed(self) -> LogRules:
        """These rules, or new ones when the files changed since they were read."""
        if not self._paths:
            return self
        signature = _signature(self._paths)
        if signature == self._signature:
            return self
        try:
            return LogRules.load(self._paths, self.mask_path, self.drop_path)
        except PolicyError as exc:
            log.error("decision log rules not reloaded, the previous ones stay: %s", exc)
            self._signature = signature
            return self

    def evaluate(self, event: Mapping[str, Any]) -> tuple[bool, Any]:
        """Whether ``system.log.drop`` holds (only ``true`` drops), and, when it does not,
        what ``system.log.mask`` is (or ``UNDEFINED``); the event is converted once."""
        paths = self._input_paths
        document = dict(event) if paths is None else prune_input(event, paths)
        key = ""
        if self._answers is not None:
            try:
                key = json.dumps(document, sort_keys=True, separators=(",", ":"))
            except (TypeError, ValueError):
                key = ""
            if key and (answer := self._answers.get(key)) is not None:
                return answer
        try:
            self._interpreter.set_input(Input(document))
        except (RegoError, ValueError, TypeError) as exc:
            raise PolicyError(f"the decision event cannot be given to Rego: {exc}") from exc
        answer = (True, UNDEFINED)
        if self._query(self.drop_path) is not True:
            answer = (False, self._query(self.mask_path))
        if key and self._answers is not None:
            if len(self._answers) >= ANSWER_CACHE_SIZE:
                self._answers.pop(next(iter(self._answers)))
            self._answers[key] = answer
        return answer

    def drop(self, event: Mapping[str, Any]) -> bool:
        return self.evaluate(event)[0]

    def mask(self, event: Mapping[str, Any]) -> Any:
        return self.evaluate(event)[1]

    def _query(self, entrypoint: str) -> Any:
        try:
            output = self._interpreter.query_bundle_entrypoint(self._bundle, entrypoint)
        except (RegoError, ValueError) as exc:
            raise PolicyError(f"evaluating {entrypoint} failed: {exc}") from exc
        if not output.ok():
            raise PolicyError(f"evaluating {entrypoint} failed: {output}")
        results = output.results
        if not results or not results[0].expressions:
            return UNDEFINED
        return results[0].expressions[0]

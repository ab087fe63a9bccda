"""What a Rego policy's text says before it runs: the input paths it reads, whether its
decision depends only on its input, and its entrypoint."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from authd.policy.base import PolicyError

DEFAULT_ENTRYPOINT: Final = "envoy/authz/allow"
PACKAGE = re.compile(r"^[ \t]*package[ \t]+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)
COMMENT_OR_STRING = re.compile(r'"(?:\\.|[^"\\])*"|`[^`]*`|#[^\n]*')
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
        code = COMMENT_OR_STRING.sub(
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


# Builtins whose result depends on more than their arguments (the clock, randomness, the
# network, the runtime) or that must run every time (trace, print). A user function of the
# same name counts too: when in doubt, a policy is not deterministic.
_NONDETERMINISTIC_CALL = re.compile(
    r"(?<![\w.])(?:"
    r"time\s*\.\s*now_ns|rand\s*\.\s*\w+|uuid\s*\.\s*rfc4122|http\s*\.\s*send"
    r"|net\s*\.\s*lookup_ip_addr|opa\s*\.\s*runtime"
    r"|io\s*\.\s*jwt\s*\.\s*(?:decode_verify|encode_sign\w*)"
    r"|crypto\s*\.\s*x509\s*\.\s*parse_and_verify_certificates\w*"
    r"|trace|print"
    r")(?!\w)"
)


def is_deterministic(sources: Iterable[str]) -> bool:
    """Whether the modules' decision depends only on the input (and the fixed data).

    False when the code (comments and plain strings left out) names a builtin that reads the
    clock, randomness, the network or the runtime: ``time.now_ns``, ``rand.intn``,
    ``uuid.rfc4122``, ``http.send``, ``net.lookup_ip_addr``, ``opa.runtime``,
    ``io.jwt.decode_verify`` (checks expiry against now), ``io.jwt.encode_sign*`` (ECDSA and
    PSS signatures are random), ``crypto.x509.parse_and_verify_certificates*`` (checks
    validity against now), or ``trace``/``print`` (side effects that must happen each time).
    """
    for source in sources:
        # A template string ($"...{expr}...") holds code: keep it in the match.
        code = COMMENT_OR_STRING.sub(
            lambda m: m.group(0) if m.start() > 0 and m.string[m.start() - 1] == "$" else " ",
            source,
        )
        if _NONDETERMINISTIC_CALL.search(code):
            return False
    return True


def normalize_entrypoint(entrypoint: str) -> str:
    """Accept ``envoy/authz/allow``, ``envoy.authz.allow`` or ``data.envoy.authz.allow``."""
    path = entrypoint.strip().removeprefix("data.").replace(".", "/").strip("/")
    if not path or "//" in path:
        raise PolicyError(f"bad Rego entrypoint {entrypoint!r}; expected e.g. {DEFAULT_ENTRYPOINT}")
    return path


def check_entrypoint_defined(entrypoint: str, sources: Mapping[str, str]) -> None:
    """Refuse an entrypoint no module defines: every request would be denied as undefined.

    regopy compiles such a bundle without complaint, so look for a module whose package is a
    prefix of the entrypoint and that has a rule head named by the next path segment.
    """
    segments = entrypoint.split("/")
    packages: list[str] = []
    for text in sources.values():
        match = PACKAGE.search(text)
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

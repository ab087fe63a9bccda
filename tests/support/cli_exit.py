"""The CLI's exit-status convention as tests state it: the status a one-line failure must
carry, told from how the line starts (``authd: not found: ...`` exits 5)."""

from __future__ import annotations

from authd.cli.errors import Exit

_BY_PREFIX = (
    ("authd: invalid argument: ", Exit.INVALID),
    ("authd: out of range: ", Exit.INVALID),
    ("authd: config key ", Exit.INVALID),
    ("authd: not found: ", Exit.NOT_FOUND),
    ("authd: permission denied", Exit.PERMISSION),
    ("authd: unauthenticated: ", Exit.PERMISSION),
    ("authd: unavailable: ", Exit.UNAVAILABLE),
    ("authd: cannot reach ", Exit.UNAVAILABLE),
    ("authd: no authd admin socket ", Exit.UNAVAILABLE),
    ("authd: nothing listens on the admin socket ", Exit.UNAVAILABLE),
    ("authd: deadline exceeded: ", Exit.UNAVAILABLE),
    ("authd: --", Exit.USAGE),
)


def expected_exit(line: str) -> Exit:
    """The exit status the CLI's failure ``line`` goes with."""
    for prefix, code in _BY_PREFIX:
        if line.startswith(prefix):
            return code
    return Exit.FAILED

"""The ``authd`` command. ``authd run`` starts the daemon; every other subcommand is a client
of the running daemon's admin API (like ``spire-server`` and its admin socket) and never
opens the store itself. Every failure is one line on stderr and an exit status of
``authd.cli.errors.Exit``; output survives a reader that stops early (``| head``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from authd.cli.errors import CommandError, Exit
from authd.cli.parser import build_parser
from authd.config import ConfigError

# A flag value that starts like a negative number (``--ttl -5m``): argparse would take it
# for a flag and say "expected one argument"; glued to its flag it reaches the value check.
_NEGATIVE_VALUE = re.compile(r"-\d")


def glue_negative_values(argv: Sequence[str]) -> list[str]:
    """``--flag -5m`` as ``--flag=-5m``, so the value is checked and refused by name."""
    out: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token.startswith("--") and "=" not in token and _NEGATIVE_VALUE.match(following):
            out.append(f"{token}={following}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _closed_pipe() -> int:
    """The reader went away: say nothing more, and let nothing write to the dead pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return Exit.PIPE_CLOSED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(
        glue_negative_values(sys.argv[1:] if argv is None else argv)
    )
    # The subcommand's own parser reports what it does not know, with its own usage.
    command_parser = getattr(args, "command_parser", parser)
    if extras:
        command_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    remote = [getattr(args, name, None) for name in ("server", "cert", "key", "bundle")]
    if any(remote) and not all(remote):
        command_parser.error("--server, --cert, --key and --bundle go together")
    try:
        result = int(args.func(args))
        sys.stdout.flush()
        return result
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except CommandError as exc:
        print(f"authd: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"authd: {exc}", file=sys.stderr)
        return Exit.INVALID


if __name__ == "__main__":
    sys.exit(main())

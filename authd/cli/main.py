"""The ``authd`` command. ``authd run`` starts the daemon; every other subcommand is a client
of the running daemon's admin API (like ``spire-server`` and its admin socket) and never
opens the store itself. Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from authd.cli.client import CommandError
from authd.cli.parser import build_parser
from authd.config import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    remote = [getattr(args, name, None) for name in ("server", "cert", "key", "bundle")]
    if any(remote) and not all(remote):
        parser.error("--server, --cert, --key and --bundle go together")
    try:
        result: int = args.func(args)
        return result
    except (CommandError, ConfigError) as exc:
        print(f"authd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

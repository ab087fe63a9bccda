"""The one error of ``authd run``'s start-up."""

from __future__ import annotations

__all__ = ["StartupError"]


class StartupError(Exception):
    """The daemon cannot start; the message says why in one line."""

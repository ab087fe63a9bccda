"""The CLI's one error convention: every failure is one line on stderr (``authd: ...``) and
an exit status that says what kind of failure it was, the same for every command."""

from __future__ import annotations

import enum

import grpc


class Exit(enum.IntEnum):
    """Exit statuses of ``authd``; scripts may rely on them."""

    OK = 0
    FAILED = 1  # refused for the state things are in: exists already, out of order, ...
    USAGE = 2  # the command line itself is wrong: unknown flag, missing or malformed value
    DENIED = 3  # `authd policy check`: the policy denies the request
    INVALID = 4  # the daemon or the config refuses a value as malformed or out of range
    NOT_FOUND = 5  # what the command names does not exist
    PERMISSION = 6  # the caller may not do this (not an authd admin, socket not readable)
    UNAVAILABLE = 7  # the daemon (or its store) cannot be reached; retrying may help
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), without a traceback
    PIPE_CLOSED = 141  # stdout was closed by the reader (128 + SIGPIPE, as `yes | head`)


class CommandError(Exception):
    """A failure to report as one line and the exit status ``exit_code``."""

    def __init__(self, message: str, exit_code: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def usage_error(message: str) -> CommandError:
    """A malformed flag value: reported like argparse's own usage errors."""
    return CommandError(message, Exit.USAGE)


EXIT_OF_STATUS: dict[grpc.StatusCode, Exit] = {
    grpc.StatusCode.INVALID_ARGUMENT: Exit.INVALID,
    grpc.StatusCode.OUT_OF_RANGE: Exit.INVALID,
    grpc.StatusCode.NOT_FOUND: Exit.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED: Exit.PERMISSION,
    grpc.StatusCode.UNAUTHENTICATED: Exit.PERMISSION,
    grpc.StatusCode.UNAVAILABLE: Exit.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Exit.UNAVAILABLE,
}


def exit_of_status(code: grpc.StatusCode) -> Exit:
    return EXIT_OF_STATUS.get(code, Exit.FAILED)

"""What an admin operation refuses, as plain exceptions; the adapters turn them into a gRPC
status (``authd.admin.servicer``) or a CLI line. Each class is one kind of refusal."""

from __future__ import annotations

import logging

from ca.store import AlreadyExists, Conflict, CorruptRecord, NotFound, StoreError

log = logging.getLogger(__name__)

#: How a ``StoreUnavailable`` message starts; a client tells it from an unreachable daemon.
STORE_FAILURE = "store error: "


class AdminError(Exception):
    """An admin operation refused; the message says why, for the caller to read."""


class InvalidArgument(AdminError):
    """A field of the request is malformed or out of range."""


class UnknownTarget(AdminError):
    """The named entry, authority or revocation does not exist."""


class Duplicate(AdminError):
    """What the request would create exists already."""


class FailedPrecondition(AdminError):
    """The request is well formed but the stored state does not allow it now."""


class PermissionDenied(AdminError):
    """The caller is not an authd admin."""


class DataLoss(AdminError):
    """Stored records can no longer be read."""


class StoreUnavailable(AdminError):
    """The store did not do what was asked (unreachable, timed out, refused); retry later."""


def store_refusal(exc: StoreError) -> AdminError:
    """The refusal a store error stands for, for an operation on entries or revocations."""
    if isinstance(exc, NotFound):
        return UnknownTarget(str(exc))
    if isinstance(exc, AlreadyExists):
        return Duplicate(str(exc))
    if isinstance(exc, Conflict):
        return FailedPrecondition(f"{exc}: it changed since it was read; show it again and retry")
    if isinstance(exc, CorruptRecord):
        return DataLoss(f"cannot read the store: {exc}")
    log.error("store failure in an admin operation: %s", exc)
    return StoreUnavailable(f"{STORE_FAILURE}{exc}")

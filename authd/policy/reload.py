"""Hot reload: a holder whose policy is rebuilt when its files change, or on SIGHUP.

Checks read ``holder.current`` once and evaluate that object, so swapping the reference (one
attribute store, atomic under the GIL) needs no lock on the hot path: a check in flight
finishes with the policy it started with. A reload that fails leaves the current policy in
place, logs the ``PolicyError`` at ERROR and is counted; the same broken files are not retried
until they change again (or ``reload_now()`` is called).

Changes are found by polling each file's (mtime_ns, size, inode), which also catches an
atomic replace by rename (a new inode) and works on every filesystem, including the
configmap symlink swaps of Kubernetes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from authd.check.model import CheckContext, Decision, Identities
from authd.policy.base import InputDocument, Policy, PolicyError

log = logging.getLogger(__name__)

_Signature = tuple[tuple[str, tuple[int, int, int] | None], ...]


class PolicyHolder:
    """The current policy, rebuilt by ``loader`` when one of ``paths`` changes.

    The first load happens in the constructor and raises ``PolicyError``: a daemon must not
    start without a policy. The holder is itself a ``Policy`` that delegates to ``current``.
    """

    def __init__(self, loader: Callable[[], Policy], paths: Sequence[Path | str] = ()) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self._loader = loader
        self._signature = self._stat()
        self.current: Policy = loader()
        self.name = self.current.name
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None
        # Loads may overlap (a poll's load in a thread, a SIGHUP load on the loop); the
        # result of a later-started load is never replaced by an earlier-started one.
        self._attempts = itertools.count(1)
        self._installed_attempt = 0

    async def evaluate(
        self, ctx: CheckContext, identities: Identities, input_document: InputDocument
    ) -> Decision:
        return await self.current.evaluate(ctx, identities, input_document)

    def reload_now(self) -> bool:
        """Reload at once, on the calling thread (for SIGHUP); True if the new policy is in."""
        attempt, signature = next(self._attempts), self._stat()
        try:
            policy = self._loader()
        except Exception as exc:
            return self._failed(attempt, signature, exc)
        return self._install(attempt, signature, policy)

    async def reload_if_changed(self) -> bool | None:
        """Reload (off the event loop) if a file changed: None if none did, else success."""
        signature = self._stat()
        if signature == self._signature:
            return None
        attempt = next(self._attempts)
        try:
            # Compiling a large Rego policy takes milliseconds; checks keep running meanwhile.
            policy = await asyncio.to_thread(self._loader)
        except Exception as exc:
            return self._failed(attempt, signature, exc)
        return self._install(attempt, signature, policy)

    async def run(self, interval: float = 0.2) -> None:
        """Poll the files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.reload_if_changed()

    def _install(self, attempt: int, signature: _Signature, policy: Policy) -> bool:
        if attempt < self._installed_attempt:
            return False  # a load started later has already been installed
        self._installed_attempt = attempt
        self._signature = signature
        self.current = policy
        self.name = policy.name
        self.reloads += 1
        self.last_error = None
        log.info("policy reloaded: %s", policy.name)
        return True

    def _failed(self, attempt: int, signature: _Signature, exc: Exception) -> bool:
        if attempt < self._installed_attempt:
            return False  # superseded by a load that started later and succeeded
        self._signature = signature  # retry when the files change again, not every poll
        self.reload_failures += 1
        self.last_error = str(exc)
        if isinstance(exc, PolicyError):
            log.error("policy reload failed, keeping %s: %s", self.current.name, exc)
        else:
            log.exception("policy reload crashed, keeping %s", self.current.name)
        return False

    def _stat(self) -> _Signature:
        entries: list[tuple[str, tuple[int, int, int] | None]] = []
        for path in self.paths:
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                try:
                    st = os.stat(file)
                except OSError:
                    entries.append((str(file), None))
                else:
                    entries.append((str(file), (st.st_mtime_ns, st.st_size, st.st_ino)))
        return tuple(entries)

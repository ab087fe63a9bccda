"""What one replica remembers of its store: the generation and the highest position seen.

Kept in a small JSON file of the replica's own data directory (mode 0600), replaced
atomically, so it survives restarts of the replica and anything that happens to the store.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ca.store.base import StoreError
from ca.store.records import StorePosition

__all__ = ["PositionMemory"]


class PositionMemory:
    """The remembered ``StorePosition`` in ``path``; None until the first ``remember``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.remembered = self._read()

    def _read(self) -> StorePosition | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            what = f"cannot read the remembered store position {self.path}"
            raise StoreError(f"{what}: {exc}") from exc
        try:
            data = json.loads(text)
            position = StorePosition(
                str(data["generation"]), int(data["audit_seq"]), str(data["audit_hash"])
            )
        except (ValueError, KeyError, TypeError):
            raise StoreError(
                f"the remembered store position {self.path} is damaged; remove it only if the "
                "store is known to be complete"
            ) from None
        return position

    def remember(self, position: StorePosition) -> None:
        """Keep ``position`` if it differs from the remembered one (written atomically)."""
        if position == self.remembered:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = {
            "generation": position.generation,
            "audit_seq": position.audit_seq,
            "audit_hash": position.audit_hash,
        }
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(data, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StoreError(f"cannot remember the store position in {self.path}: {exc}") from exc
        self.remembered = position

    def forget(self) -> None:
        """Drop the remembered position (the operator accepted the store as it is)."""
        self.path.unlink(missing_ok=True)
        self.remembered = None

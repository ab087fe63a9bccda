"""At start: refuse a store that cannot give ``store.durability``, or warn when allowed to."""

from __future__ import annotations

import logging

from authd.app.errors import StartupError
from authd.config.model import Config
from ca.store import StoreError
from ca.store.durability_check import durability_shortfall

__all__ = ["check_store_durability"]

log = logging.getLogger("authd")


def check_store_durability(config: Config) -> None:
    """Raise ``StartupError`` naming what the store lacks for ``store.durability``; with
    ``store.allow_weak_durability`` log it as a warning instead (on every start)."""
    store = config.store
    try:
        missing = durability_shortfall(config.store_url, store.write_durability)
    except StoreError as exc:
        raise StartupError(f"cannot check the store's durability: {exc}") from None
    if missing is None:
        return
    if store.allow_weak_durability:
        log.warning("%s (starting anyway: store.allow_weak_durability = true)", missing)
        return
    raise StartupError(
        f"{missing}; fix the store, lower store.durability, or set"
        " store.allow_weak_durability = true"
    )

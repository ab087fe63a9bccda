"""Authority keys wrapped with the replicas' key-encryption key, in one Redis hash.

Only ciphertext is stored (``ca.key_wrap`` wraps and unwraps); writes are fenced by the
rotation lease like every other write of the rotation.
"""

from __future__ import annotations

import base64
import binascii

from ca.store.base import StoreError
from ca.store.redis.client import Pipe, RedisConnection, Write, reply_text
from ca.store.redis.keys import KeyLayout
from ca.store.redis.lease import fence_check


class RedisWrappedKeys:
    """``ca.store.base.WrappedKeyVault`` over one Redis store's keys."""

    def __init__(self, redis: RedisConnection, keys: KeyLayout) -> None:
        self._redis = redis
        self._keys = keys

    def put_wrapped(self, key_ref: str, wrapped: bytes, *, fence: int | None) -> None:
        value = base64.b64encode(wrapped).decode("ascii")

        def change(pipe: Pipe) -> None:
            pipe.hset(self._keys.wrapped_keys, key_ref, value)

        self._fenced(change, fence)

    def get_wrapped(self, key_ref: str) -> bytes | None:
        with self._redis.call() as client:
            stored = client.hget(self._keys.wrapped_keys, key_ref)
        if stored is None:
            return None
        try:
            return base64.b64decode(reply_text(stored), validate=True)
        except (binascii.Error, ValueError):
            raise StoreError(f"the wrapped key {key_ref!r} in the store is not base64") from None

    def delete_wrapped(self, key_ref: str, *, fence: int | None) -> None:
        def change(pipe: Pipe) -> None:
            pipe.hdel(self._keys.wrapped_keys, key_ref)

        self._fenced(change, fence)

    def _fenced(self, change: Write, fence: int | None) -> None:
        def prepare(pipe: Pipe) -> tuple[Write, None]:
            fence_check(pipe, self._keys, fence)
            return change, None

        self._redis.transaction([self._keys.wrapped_keys, self._keys.rotation_fence], prepare)

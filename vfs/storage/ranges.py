"""Ranged reads of store objects (``GET`` with a ``Range`` header, or ``pread``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from botocore.exceptions import BotoCoreError, ClientError

from vfs.errors import StoreError
from vfs.storage.base import ObjectStore, Readable
from vfs.storage.local import LocalStore
from vfs.storage.s3 import GuardedBody, S3Store


def get_range(store: ObjectStore, key: str, start: int, length: int) -> bytes:
    """Bytes ``[start, start + length)`` of object ``key`` (fewer at the object's end).

    Raises the store's errors (``ObjectNotFoundError``, ``AccessDeniedError``, ``StoreError``)
    naming the key. ``length`` must be positive.
    """
    with open_range(store, key, start, length) as stream:
        parts = []
        while length > 0:
            chunk = stream.read(length)
            if not chunk:
                break
            parts.append(chunk)
            length -= len(chunk)
        return b"".join(parts)


@contextlib.contextmanager
def open_range(store: ObjectStore, key: str, start: int, length: int) -> Iterator[Readable]:
    """A stream of bytes ``[start, start + length)`` of object ``key`` (one ranged GET).

    Raises the store's errors naming the key.
    """
    if isinstance(store, S3Store):
        try:
            resp = store.client.get_object(
                Bucket=store.bucket,
                Key=store.full_key(key),
                Range=f"bytes={start}-{start + length - 1}",
            )
        except (ClientError, BotoCoreError) as e:
            raise store._error(e, key, "GET") from None
        body = resp["Body"]
        try:
            yield GuardedBody(body, store, key)
        finally:
            body.close()
        return
    if isinstance(store, LocalStore):
        try:
            f = open(store.describe(key), "rb")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise store._error(e, key) from None
        with f:
            f.seek(start)
            yield _Limited(f, length)
        return
    with store.open_read(key) as stream:
        skipped = 0
        while skipped < start:
            chunk = stream.read(min(8 << 20, start - skipped))
            if not chunk:
                raise StoreError(f"{store.describe(key)} is shorter than {start} bytes")
            skipped += len(chunk)
        yield _Limited(stream, length)


class _Limited:
    """At most ``left`` bytes of a stream."""

    def __init__(self, stream: Readable, left: int) -> None:
        self._stream = stream
        self._left = left

    def read(self, size: int = -1, /) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(n)
        self._left -= len(data)
        return data

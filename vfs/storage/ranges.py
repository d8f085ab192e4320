"""Ranged reads of store objects (``GET`` with a ``Range`` header, or ``pread``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from vfs.errors import StoreError
from vfs.storage.base import ObjectStore, Readable
from vfs.storage.local import LocalStore
from vfs.storage.s3 import S3Store


def get_range(store: ObjectStore, key: str, start: int, length: int) -> bytes:
    """Bytes ``[start, start + length)`` of object ``key`` (fewer at the object's end).

    Raises the store's errors (``ObjectNotFoundError``, ``AccessDeniedError``, ``StoreError``)
    naming the key. ``length`` must be positive.
    """
    if isinstance(store, S3Store):
        try:
            resp = store.client.get_object(
                Bucket=store.bucket,
                Key=store.full_key(key),
                Range=f"bytes={start}-{start + length - 1}",
            )
            body = resp["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except (ClientError, BotoCoreError) as e:
            raise store._error(e, key, "GET") from None
    if isinstance(store, LocalStore):
        path = store.describe(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise store._error(e, key) from None
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)
    with store.open_read(key) as stream:  # any other store: read through
        skipped = 0
        while skipped < start:
            chunk = stream.read(min(8 << 20, start - skipped))
            if not chunk:
                raise StoreError(f"{store.describe(key)} is shorter than {start} bytes")
            skipped += len(chunk)
        return stream.read(length)


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
            yield _S3Body(body, store, key)
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


class _S3Body:
    """A ranged GET body whose read errors become :class:`StoreError` naming the key."""

    def __init__(self, body: Any, store: S3Store, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key

    def read(self, size: int = -1, /) -> bytes:
        try:
            data: bytes = self._body.read(None if size < 0 else size)
        except (ClientError, BotoCoreError) as e:
            raise self._store._error(e, self._key, "GET") from None
        return data

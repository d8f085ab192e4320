"""Ranged reads of store objects (``GET`` with a ``Range`` header, or ``pread``)."""

from __future__ import annotations

import os

from botocore.exceptions import BotoCoreError, ClientError

from vfs.errors import StoreError
from vfs.storage.base import ObjectStore
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

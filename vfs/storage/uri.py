"""Parsing store URIs and reading single objects named by URI.

One syntax everywhere (DESIGN.md §4): ``s3://BUCKET/ROOT_PREFIX`` and ``file:///ABS/DIR``.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from vfs.errors import StoreError, StoreUriError
from vfs.storage.base import ObjectStore
from vfs.storage.local import LocalStore
from vfs.storage.options import S3Options


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key/or/prefix`` into ``(bucket, key)``; the key may be empty.

    Raises :class:`StoreUriError` when there is no bucket.
    """
    if not uri.startswith("s3://"):
        raise StoreUriError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StoreUriError(f"{uri!r} names no bucket", hint="write s3://BUCKET/PREFIX")
    return bucket, key


def open_store(uri: str, s3_options: S3Options | None = None) -> ObjectStore:
    """Return the store a URI names: ``s3://BUCKET/PREFIX`` or ``file:///ABS/DIR``.

    Raises :class:`StoreUriError` for any other form.
    """
    if uri.startswith("s3://"):
        bucket, prefix = parse_s3_uri(uri)
        from vfs.storage.s3 import S3Store  # boto3 only when S3 is used

        return S3Store(bucket, prefix, s3_options)
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise StoreUriError(
                f"{uri!r} names a remote host", hint="write file:///ABSOLUTE/DIR (three slashes)"
            )
        path = unquote(parts.path)
        if not os.path.isabs(path):
            raise StoreUriError(f"{uri!r} has no absolute path", hint="write file:///ABS/DIR")
        return LocalStore(path)
    raise StoreUriError(
        f"unsupported store URI {uri!r}", hint="use s3://BUCKET/PREFIX or file:///ABS/DIR"
    )


def read_location(location: str, s3_options: S3Options | None = None) -> bytes:
    """Read a whole object named by an ``s3://bucket/key`` URI, or a local file path.

    Raises :class:`StoreError` (or a subclass) naming the location when it cannot be read.
    """
    if location.startswith("s3://"):
        bucket, key = parse_s3_uri(location)
        if not key:
            raise StoreUriError(f"{location!r} names a bucket but no object key")
        from vfs.storage.s3 import S3Store  # boto3 only when S3 is used

        return S3Store(bucket, "", s3_options).get_bytes(key)
    path = location[len("file://") :] if location.startswith("file://") else location
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file", key=path) from None
    except OSError as e:
        raise StoreError(f"{path}: {e.strerror}", key=path) from None

"""The ``ObjectStore`` protocol every store implements.

A store is addressed by a URI naming its root (``s3://BUCKET/ROOT_PREFIX`` or
``file:///ABS/DIR``); every key passed to a store is relative to that root
(``Data/{hash}.xxh128``, ``Manifests/...``). Implementations are thread-safe: the filesystem
calls them from worker threads, never from its event loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol


class Readable(Protocol):
    """A stream of bytes being read from a store."""

    def read(self, size: int = -1, /) -> bytes: ...


class ObjectStore(Protocol):
    """Get, put and probe objects by key relative to the store root.

    Errors raised (from :mod:`vfs.errors`): ``ObjectNotFoundError`` for a missing object,
    ``AccessDeniedError`` when refused, ``StoreError`` for anything else; each names the full
    key (``describe(key)``) and a hint.
    """

    uri: str
    """The store's root URI, as given by the user (normalised)."""

    def describe(self, key: str) -> str:
        """Full location of ``key`` for messages, e.g. ``s3://bucket/prefix/Data/x.xxh128``."""
        ...

    def head(self, key: str) -> int | None:
        """Size of the object in bytes, or ``None`` when it does not exist."""
        ...

    def open_read(self, key: str) -> AbstractContextManager[Readable]:
        """Open the object for streaming reads from its start."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole object, in memory (for manifests and small objects)."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Create or replace the object with ``data``."""
        ...

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Create or replace the object with the content of a local file."""
        ...

    def list_keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Yield ``(key, size)`` of every object whose key starts with ``prefix``."""
        ...

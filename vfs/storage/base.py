"""The ``ObjectStore`` protocol every store implements.

A store is addressed by a URI naming its root (``s3://BUCKET/ROOT_PREFIX`` or
``file:///ABS/DIR``); every key passed to a store is relative to that root
(``Data/{hash}.xxh128``, ``Manifests/...``). Implementations are thread-safe: the filesystem
calls them from worker threads, never from its event loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Protocol

from vfs.errors import StoreError


class Readable(Protocol):
    """A stream of bytes being read from a store."""

    def read(self, size: int = -1, /) -> bytes: ...


class RangeStream(Readable, Protocol):
    """A stream of one byte range of an object, being read from a store."""

    def abort(self) -> None:
        """Make a ``read`` blocked in another thread fail promptly (a stalled connection is
        given up); safe to call at any time, also after the stream was closed."""
        ...


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

    def open_range(
        self, key: str, start: int, length: int, *, size: int | None = None
    ) -> AbstractContextManager[RangeStream]:
        """Open bytes ``[start, start + length)`` of the object for streaming reads (one
        ranged GET on S3). ``length`` must be positive.

        The answer is checked before the stream is returned: it must be exactly the
        requested range (S3: status 206 and a matching ``Content-Range``), and when ``size``
        (bytes) is given the object must have that size. Raises
        ``RangeNotHonoredError`` when the server sent other bytes than asked (a proxy that
        drops ``Range``), ``CorruptObjectError`` when the object is shorter than the range
        or not ``size`` bytes long, and the errors of :meth:`open_read`.
        """
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole object, in memory (for manifests and small objects)."""
        ...

    def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str], float]:
        """The whole object with its user metadata and modification time.

        Returns ``(data, metadata, last_modified)``: ``metadata`` maps lower-case names to
        values (S3 ``x-amz-meta-*`` without the prefix; ``{}`` when none were set),
        ``last_modified`` is seconds since the epoch (S3 ``LastModified``, 1 s resolution on
        S3; the file's mtime for a local store).
        """
        ...

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        """Create or replace the object with ``data`` and the user ``metadata`` (ASCII names
        and values; names are stored lower-case). Replacing an object replaces its
        metadata, as S3 does. Raises ``StoreError`` for non-ASCII metadata."""
        ...

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Create or replace the object with the content of a local file."""
        ...

    def put_stream(self, key: str, stream: Readable) -> None:
        """Create or replace the object with what ``stream`` yields, read once, in order,
        to its end. When ``stream.read`` raises, nothing is stored (a single PUT is not
        sent or is cut short; a multipart upload is aborted) and the error propagates
        (wrapped in ``StoreError`` by S3)."""
        ...

    def list_keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Yield ``(key, size)`` of every object whose key starts with ``prefix``."""
        ...


def normalize_metadata(metadata: Mapping[str, str] | None, where: str) -> dict[str, str]:
    """User metadata as stores keep it: names lower-cased, names and values checked.

    S3 transmits user metadata as ``x-amz-meta-{name}: {value}`` HTTP headers, so names
    and values must be printable ASCII without line breaks (reference §4.1: deadline
    JSON-escapes non-ASCII root paths for this reason). Raises :class:`StoreError` naming
    ``where`` otherwise.
    """
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        for part in (name, value):
            if not part.isascii() or not part.isprintable():
                raise StoreError(
                    f"cannot store metadata {name!r}: {part!r} is not printable ASCII",
                    key=where,
                    hint="JSON-encode non-ASCII values (json.dumps(value, ensure_ascii=True))",
                )
        if not name:
            raise StoreError("cannot store metadata with an empty name", key=where)
        out[name.lower()] = value
    return out

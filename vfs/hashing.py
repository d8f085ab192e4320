"""xxh128 hashing of bytes, strings and files.

Format fact (reference/job-attachments.md §3.1, deadline ``hash_algorithms.py``): the
algorithm called ``xxh128`` is XXH3 128-bit with seed 0, written as 32 lowercase hex digits
(``xxhash.xxh3_128().hexdigest()``). The hash of a file is independent of how it is read, so
files are read in large buffers (``FILE_BUFFER_SIZE``) into one reused buffer.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import xxhash

HASH_ALG = "xxh128"
"""The only hash algorithm of manifest format 2023-03-03."""

FILE_BUFFER_SIZE = 8 * 1024 * 1024
"""Bytes read per call when hashing a file (large buffers run at memory speed)."""

EMPTY_HASH = "99aa06d3014798d86001c324468d497f"
"""xxh128 of zero bytes."""


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """Return the xxh128 of ``data`` as 32 lowercase hex digits.

    The hasher object, not the one-shot ``xxh3_128_hexdigest``: python-xxhash releases the
    GIL while an object hashes, and holds it in the one-shot functions (measured: two threads
    hashing 64 MiB buffers took 2× as long as one with the one-shot, the same with objects).
    """
    return xxhash.xxh3_128(data).hexdigest()


def hash_string(text: str) -> str:
    """Return the xxh128 of ``text`` encoded as UTF-8 (strict), as deadline's ``hash_data``.

    Used for manifest names (root paths). Raises ``UnicodeEncodeError`` for lone surrogates,
    as deadline does.
    """
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


def new_hasher() -> xxhash.xxh3_128:
    """A fresh incremental xxh128 (``update(bytes)``, ``hexdigest()``): for content hashed
    while it is copied."""
    return xxhash.xxh3_128()


def hash_stream(stream: BinaryIO, buffer_size: int = FILE_BUFFER_SIZE) -> tuple[str, int]:
    """Hash a binary stream to its end. Returns ``(hex digest, bytes read)``."""
    hasher = xxhash.xxh3_128()
    buf = bytearray(buffer_size)
    view = memoryview(buf)
    total = 0
    while True:
        n = stream.readinto(view)  # type: ignore[attr-defined]
        if not n:
            break
        hasher.update(view[:n])
        total += n
    return hasher.hexdigest(), total


def hash_file(path: str | os.PathLike[str], buffer_size: int = FILE_BUFFER_SIZE) -> str:
    """Return the xxh128 of the file at ``path`` (symlinks followed).

    Raises ``OSError`` when the file cannot be read.
    """
    with open(path, "rb", buffering=0) as f:
        return hash_stream(f, buffer_size)[0]


class ChunkHasher:
    """The xxh128 of each ``chunk_size``-byte piece of a stream fed in any slices, the last
    piece shorter (format 2025-12-04-beta's ``chunkhashes``: 256 MiB chunks, rusty-attachments
    ``hash.rs`` ``FILE_CHUNK_SIZE_BYTES``; reference/job-attachments.md §2). Same interface
    as :func:`new_hasher`: ``update(bytes)``; :meth:`hexdigest` gives the chunk hashes
    joined by commas (how ``vfs`` writes a chunked file's content hash as text),
    :meth:`digests` the list."""

    def __init__(self, chunk_size: int) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk size must be positive, not {chunk_size}")
        self.chunk_size = chunk_size
        self._done: list[str] = []
        self._hasher = xxhash.xxh3_128()
        self._fill = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash the next bytes of the stream."""
        view = memoryview(data)
        while len(view):
            take = min(len(view), self.chunk_size - self._fill)
            self._hasher.update(view[:take])
            self._fill += take
            view = view[take:]
            if self._fill == self.chunk_size:
                self._done.append(self._hasher.hexdigest())
                self._hasher = xxhash.xxh3_128()
                self._fill = 0

    def digests(self) -> list[str]:
        """The chunk hashes of the bytes so far (none for an empty stream)."""
        return self._done + ([self._hasher.hexdigest()] if self._fill else [])

    def hexdigest(self) -> str:
        """The chunk hashes of the bytes so far, joined by commas."""
        return ",".join(self.digests())

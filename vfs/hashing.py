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
    """Return the xxh128 of ``data`` as 32 lowercase hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


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

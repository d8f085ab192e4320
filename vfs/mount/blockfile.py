"""The files of the block cache: what is in them and how they are checked on every use.

Two kinds of entry (mountpoint-s3's self-describing block files and CernVM-FS's
content-addressed objects are the models):

* A **whole object** (at most one block) is a file holding exactly the object's bytes. It is
  checked on every load against its name: the size must be the manifest's and the xxh128 the
  object's hash.
* A **block** of a larger object is a file of :data:`HEADER_SIZE` bytes of header followed by
  the block's bytes. The header names what the block is (object hash and size, block index,
  block size, offset, length) and carries an xxh3-64 checksum of the data taken when the
  block arrived from the store, plus a checksum of the header itself. Every load checks all of
  it: a block flipped, truncated, extended or moved on disk is never served.

The header is padded to 4 KiB so that the data stays page-aligned (for ``O_DIRECT`` and
``mmap``). Files are written to a temporary file (mode 0600) and renamed into place, so
readers see whole entries or nothing.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections.abc import Sequence

import xxhash

from vfs.errors import VfsError

HEADER_SIZE = 4096
"""Bytes of header before a block's data."""

MAGIC = b"vfsblk01"
_FIELDS = struct.Struct("<8s16sQIIQIQ")  # magic, hash, size, index, block size, offset, len, sum
_HEADER_SUM = struct.Struct("<Q")


class CorruptEntryError(VfsError):
    """A cache entry is not what its name says (wrong size, checksum, header). ``path``
    names the file; the message says what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"cache entry {path} is corrupt: {problem}")


def block_checksum(data: bytes | memoryview) -> int:
    """The checksum kept for a block: xxh3-64 of its bytes, as an unsigned int."""
    return xxhash.xxh3_64_intdigest(data)


def encode_header(
    obj_hash: str, obj_size: int, index: int, block_size: int, length: int, checksum: int
) -> bytes:
    """The :data:`HEADER_SIZE`-byte header of block ``index`` (``length`` bytes of data at
    offset ``index * block_size``) of the object ``obj_hash`` of ``obj_size`` bytes."""
    fields = _FIELDS.pack(
        MAGIC, bytes.fromhex(obj_hash), obj_size, index, block_size, index * block_size,
        length, checksum,
    )  # fmt: skip
    head = fields + _HEADER_SUM.pack(xxhash.xxh3_64_intdigest(fields))
    return head + bytes(HEADER_SIZE - len(head))


def read_block_file(
    path: str,
    obj_hash: str,
    obj_size: int,
    index: int,
    block_size: int,
    length: int,
    expect_sum: int | None = None,
) -> tuple[memoryview, int]:
    """Load and check block ``index`` of an object from ``path``.

    Returns ``(data, checksum)``: a view of exactly ``length`` bytes and their checksum.
    ``expect_sum``, when given, is the checksum the block must have (recorded when the
    whole object was verified). Raises ``FileNotFoundError`` when the file is gone and
    :class:`CorruptEntryError` saying what is wrong when it does not pass every check.
    """
    with open(path, "rb", buffering=0) as f:
        raw = f.read(HEADER_SIZE + length + 1)
    if len(raw) != HEADER_SIZE + length:
        raise CorruptEntryError(path, f"{len(raw)} bytes, expected {HEADER_SIZE + length}")
    fields = raw[: _FIELDS.size]
    (header_sum,) = _HEADER_SUM.unpack_from(raw, _FIELDS.size)
    if xxhash.xxh3_64_intdigest(fields) != header_sum:
        raise CorruptEntryError(path, "its header is damaged (or in an older format)")
    magic, h, size, idx, bsize, offset, n, checksum = _FIELDS.unpack(fields)
    want = (MAGIC, bytes.fromhex(obj_hash), obj_size, index, block_size, index * block_size)
    if (magic, h, size, idx, bsize, offset) != want or n != length:
        raise CorruptEntryError(
            path, f"its header describes block {idx} of {h.hex()} ({size} bytes), not this block"
        )
    data = memoryview(raw)[HEADER_SIZE:]
    actual = xxhash.xxh3_64_intdigest(data)
    if actual != checksum:
        raise CorruptEntryError(path, "its data does not match the checksum taken on arrival")
    if expect_sum is not None and checksum != expect_sum:
        raise CorruptEntryError(path, "it differs from the block of the verified object")
    return data, checksum


def read_object_file(path: str, obj_hash: str, size: int) -> bytes:
    """Load and check a whole object (``size`` bytes, xxh128 ``obj_hash``) from ``path``.

    Raises ``FileNotFoundError`` when the file is gone and :class:`CorruptEntryError` when
    its size or hash is wrong.
    """
    with open(path, "rb", buffering=0) as f:
        data = f.read(size + 1)
    if len(data) != size:
        raise CorruptEntryError(path, f"{len(data)} bytes, the manifest says {size}")
    actual = xxhash.xxh3_128_hexdigest(data)
    if actual != obj_hash:
        raise CorruptEntryError(path, f"its content hashes to {actual}")
    return data


def write_temp(tmp_dir: str, prefix: str, parts: Sequence[bytes | memoryview]) -> str:
    """Write ``parts`` to a new owner-only temporary file in ``tmp_dir``; return its path.

    Raises ``OSError`` (e.g. ``ENOSPC``); nothing is left behind then.
    """
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=prefix)
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[out.write(view) or 0 :]
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp

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
readers see whole entries or nothing. Block files are written with ``O_DIRECT`` where the file
system allows it (:func:`write_block_temp`): a cold read of a large file would otherwise spend
a fifth of the daemon's CPU copying every block into fresh page cache it rarely reads again.
A block file is read whole, header and data, into a page-aligned :class:`BlockBuffer` (the
same layout as on disk) taken from :data:`POOL`, which recycles the buffers of blocks that
left memory once nothing uses them; with ``nowait`` only from the page cache, so that the
event loop itself may load a hit.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import struct
import tempfile
import threading
from collections.abc import Sequence

import xxhash

from vfs.errors import VfsError
from vfs.hashing import hash_bytes
from vfs.mount.blocks import BLOCK_SIZE

HEADER_SIZE = 4096
"""Bytes of header before a block's data."""

MAGIC = b"vfsblk01"
_FIELDS = struct.Struct("<8s16sQIIQIQ")  # magic, hash, size, index, block size, offset, len, sum
_HEADER_SUM = struct.Struct("<Q")

DIRECT_ALIGN = 4096
"""Alignment of ``O_DIRECT`` buffers, offsets and lengths (bytes): a page, a multiple of every
logical block size Linux file systems use."""

_direct = threading.local()  # per writer thread: its aligned staging buffer (an mmap)
_direct_refused: set[str] = set()  # directories whose file system refused O_DIRECT


class CorruptEntryError(VfsError):
    """A cache entry is not what its name says (wrong size, checksum, header). ``path``
    names the file; the message says what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"cache entry {path} is corrupt: {problem}")


def block_checksum(data: bytes | memoryview) -> int:
    """The checksum kept for a block: xxh3-64 of its bytes, as an unsigned int."""
    return xxhash.xxh3_64(data).intdigest()  # the object form releases the GIL


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
    *,
    nowait: bool = False,
) -> tuple[memoryview, int]:
    """Load and check block ``index`` of an object from ``path``.

    Returns ``(data, checksum)``: a view of exactly ``length`` bytes and their checksum.
    ``expect_sum``, when given, is the checksum the block must have (recorded when the
    whole object was verified). Raises ``FileNotFoundError`` when the file is gone and
    :class:`CorruptEntryError` saying what is wrong when it does not pass every check.

    With ``nowait`` the file is read only if all of it is in the page cache
    (``preadv2(RWF_NOWAIT)``), so that the event loop may call it: :class:`WouldBlock` when
    it is not (or is not whole), without telling more; the blocking load then tells.
    """
    buf = new_block_buffer(length)
    raw = memoryview(buf)[: HEADER_SIZE + length]
    try:
        got = _read_file(path, raw, nowait)
    except WouldBlock:  # frequent (every hit not in the page cache): the buffer goes back
        POOL.retire(raw)
        raise
    if got != HEADER_SIZE + length:
        raise CorruptEntryError(path, f"{got} bytes, expected {HEADER_SIZE + length}")
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
    data = raw[HEADER_SIZE:]
    actual = block_checksum(data)
    if actual != checksum:
        raise CorruptEntryError(path, "its data does not match the checksum taken on arrival")
    if expect_sum is not None and checksum != expect_sum:
        raise CorruptEntryError(path, "it differs from the block of the verified object")
    return data, checksum


class WouldBlock(Exception):
    """A ``nowait`` load would have waited for the disk."""


def _read_file(path: str, into: memoryview, nowait: bool) -> int:
    """Read ``path`` from its start into ``into``; returns the bytes read, one more than
    ``len(into)`` when the file is longer. With ``nowait``, only when the bytes are all in the
    page cache (``preadv2(RWF_NOWAIT)``): :class:`WouldBlock` otherwise, and for a short
    read (not all cached, or the file too short: the blocking read tells which).
    Raises ``FileNotFoundError`` when the file is gone and :class:`CorruptEntryError` when
    it is not a regular file."""
    if nowait and not hasattr(os, "RWF_NOWAIT"):
        raise WouldBlock
    extra = bytearray(1)
    fd = open_entry(path)
    try:
        if nowait:
            try:
                got = os.preadv(fd, [into, extra], 0, os.RWF_NOWAIT)
            except OSError:
                raise WouldBlock from None
            if got < len(into):
                raise WouldBlock
            return got
        got = 0
        while got <= len(into):
            n = os.preadv(fd, [into[got:], extra] if got < len(into) else [extra], got)
            if not n:
                break
            got += n
        return got
    finally:
        os.close(fd)


def open_entry(path: str) -> int:
    """An fd of the cache file ``path`` open for reading, checked to be a regular file. The
    open never waits (``O_NONBLOCK``: a FIFO or device put in the cache's place would otherwise
    block the caller, the event loop included, until someone writes to it; ``O_NOFOLLOW``: a
    link is not a cache entry). Raises ``FileNotFoundError`` and :class:`CorruptEntryError`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorruptEntryError(path, "it is a symbolic link, not a cache file") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorruptEntryError(path, "it is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_object_file(path: str, obj_hash: str, size: int) -> bytes:
    """Load and check a whole object (``size`` bytes, xxh128 ``obj_hash``) from ``path``.

    Raises ``FileNotFoundError`` when the file is gone and :class:`CorruptEntryError` when
    its size or hash is wrong.
    """
    with open(open_entry(path), "rb", buffering=0) as f:
        data = f.read(size + 1)
    if len(data) != size:
        raise CorruptEntryError(path, f"{len(data)} bytes, the manifest says {size}")
    actual = hash_bytes(data)
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


class BlockBuffer(mmap.mmap):
    """Page-aligned memory (anonymous, zero-filled) for one block file: :data:`HEADER_SIZE`
    bytes of room for the header, then ``length`` bytes of block data, padded with zeros to
    :data:`DIRECT_ALIGN`. Downloads read a block straight into :meth:`data`; the block cache
    then writes the header into the room before it and the whole buffer to disk with
    ``O_DIRECT``, copying nothing. Create with :func:`new_block_buffer`.
    """

    length: int

    def data(self) -> memoryview:
        """A view of the block's data (the only view with the data's full length)."""
        return memoryview(self)[HEADER_SIZE : HEADER_SIZE + self.length]


def _round_up(size: int) -> int:
    """``size`` rounded up to a multiple of :data:`DIRECT_ALIGN`."""
    return -(-size // DIRECT_ALIGN) * DIRECT_ALIGN


def _padded(length: int) -> int:
    """Bytes of a :class:`BlockBuffer` for ``length`` bytes of block data."""
    return _round_up(HEADER_SIZE + length)


class BufferPool:
    """Full-size :class:`BlockBuffer` s given back for reuse, so that a block read from disk
    or the network lands in memory that is already mapped (no page faults, no zeroing:
    a fifth of the event loop's time on cache hits by perf; an in-process read of a cached
    1 GiB object went from 2.45 to 2.75 GB/s).

    A buffer is *retired* (:meth:`retire`) when the fetcher drops it from memory, and handed
    out again only once nothing uses it any more: no ``memoryview`` of it is left anywhere,
    which the buffer itself knows (an ``mmap`` cannot be resized while views of it exist).
    A buffer still in use is skipped, never reused. At most ``keep`` buffers are retired;
    more are left to the garbage collector. Thread-safe.
    """

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._retired: dict[int, BlockBuffer] = {}  # id -> buffer, oldest first
        self._lock = threading.Lock()

    def take(self, length: int) -> BlockBuffer:
        """A buffer for ``length`` bytes of block data: a retired one nothing uses when
        one is at hand and the size fits, else a new one."""
        if _padded(length) == self.size:
            with self._lock:
                for key, buf in self._retired.items():
                    if _unused(buf):
                        del self._retired[key]
                        buf.length = length
                        return buf
        buf = BlockBuffer(-1, _padded(length), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf.length = length
        return buf

    def retire(self, data: bytes | memoryview) -> None:
        """``data`` (a view of a buffer's data) was dropped by its owner: its buffer may be
        reused once nothing else uses it."""
        buf = data.obj if isinstance(data, memoryview) else None
        if not isinstance(buf, BlockBuffer) or len(buf) != self.size:
            return
        with self._lock:
            if len(self._retired) < self.keep:
                self._retired.setdefault(id(buf), buf)


def _unused(buf: BlockBuffer) -> bool:
    """True when no ``memoryview`` of ``buf`` is alive (resizing an ``mmap`` to its own size
    raises ``BufferError`` while views of it exist, and does nothing otherwise)."""
    try:
        buf.resize(len(buf))
    except (BufferError, OSError, ValueError, SystemError):
        return False
    return True


POOL = BufferPool(_padded(BLOCK_SIZE), keep=16)
"""The process's pool of full-size block buffers (16 × 4 MiB at most)."""


def new_block_buffer(length: int) -> BlockBuffer:
    """A :class:`BlockBuffer` for ``length`` bytes of block data (from :data:`POOL` when it
    has one free; its content is then the previous block's, to be overwritten)."""
    return POOL.take(length)


def _in_place(header: bytes | memoryview, data: bytes | memoryview) -> memoryview | None:
    """The whole padded buffer to write when ``data`` is a :class:`BlockBuffer`'s data view
    (the header is copied into its room), else ``None``."""
    if not isinstance(data, memoryview):
        return None
    buf = data.obj
    if not isinstance(buf, BlockBuffer) or len(data) != buf.length or len(header) != HEADER_SIZE:
        return None
    view = memoryview(buf)
    view[:HEADER_SIZE] = header
    return view


def _staging_buffer(size: int) -> mmap.mmap:
    """This thread's page-aligned buffer of at least ``size`` bytes (reused, so that writing
    a block costs no fresh pages)."""
    buf: mmap.mmap | None = getattr(_direct, "buf", None)
    if buf is None or len(buf) < size:
        buf = _direct.buf = mmap.mmap(-1, size)
    return buf


def write_block_temp(
    tmp_dir: str, prefix: str, header: bytes | memoryview, data: bytes | memoryview
) -> str:
    """Write ``header`` then ``data`` (a block file) to a new owner-only temporary file in
    ``tmp_dir``, bypassing the page cache (``O_DIRECT``) where the file system allows it;
    return its path. ``len(header)`` must be a multiple of :data:`DIRECT_ALIGN`.

    When ``data`` is a :class:`BlockBuffer`'s data view, the buffer is written as it is;
    other bytes go through a reused page-aligned buffer of the calling thread. Either is
    padded to :data:`DIRECT_ALIGN` and the file truncated to its length after. A file system that
    refuses ``O_DIRECT`` (``EINVAL`` on open or write: tmpfs before Linux 6.6, some FUSE and
    network file systems) is remembered per ``tmp_dir`` and written through the page cache
    (:func:`write_temp`). Raises ``OSError`` (e.g. ``ENOSPC``); nothing
    is left behind then.
    """
    size = len(header) + len(data)
    if tmp_dir in _direct_refused or not hasattr(os, "O_DIRECT"):
        return write_temp(tmp_dir, prefix, [header, data])
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=prefix)
    os.close(fd)
    try:
        _write_direct(tmp, header, data, size)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.errno != errno.EINVAL:
            raise
        _direct_refused.add(tmp_dir)
        return write_temp(tmp_dir, prefix, [header, data])
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _write_direct(
    path: str, header: bytes | memoryview, data: bytes | memoryview, size: int
) -> None:
    """Write ``header`` and ``data`` (``size`` bytes in all) to the existing empty file
    ``path`` with ``O_DIRECT``: whole pages from a page-aligned buffer, then truncated to
    ``size``. Raises ``OSError`` (``EINVAL`` when the file system refuses ``O_DIRECT``)."""
    padded = _round_up(size)
    direct = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        view = _in_place(header, data)
        if view is None:
            view = memoryview(_staging_buffer(padded))
            view[: len(header)] = header
            view[len(header) : size] = data
            view[size:padded] = bytes(padded - size)
        try:
            done = 0
            while done < padded:
                done += os.pwrite(direct, view[done:padded], done)
        finally:
            view.release()
        if padded != size:
            os.ftruncate(direct, size)
    finally:
        os.close(direct)

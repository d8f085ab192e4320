"""Blocking downloads of objects and blocks from a store, checked before anything is used.

These run in worker threads (the fetcher's, or ``vfs cache warm``'s). Each takes an
:class:`Abort`: the caller that gives up on a download (its deadline passed) fires it from
another thread, which shuts the stream's connection so the worker thread ends at once and
its download slot is not held by an abandoned thread.

* :func:`fetch_object` gets a whole object (at most one block) with one GET and checks its
  size and xxh128 before returning it.
* :func:`fetch_blocks` gets consecutive blocks of a larger object with one ranged GET (the
  store checks the answer is the range asked for, see :meth:`ObjectStore.open_range`) and
  hands each block, with its checksum, to ``deliver`` as soon as it is complete. Each block is
  read straight into its own page-aligned :class:`~vfs.mount.blockfile.BlockBuffer` (the
  stream's ``readinto`` where it has one), which the block cache later writes to disk as it
  is: no copy of the data is made in Python on the way. A block
  cannot be checked against the object's hash alone; that is :mod:`vfs.mount.verify`'s job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from vfs.errors import CorruptObjectError, StoreError
from vfs.hashing import hash_bytes
from vfs.mount.blockfile import block_checksum, new_block_buffer
from vfs.mount.blocks import BLOCK_SIZE, block_length
from vfs.mount.objects import ObjectRef
from vfs.storage import ObjectStore, Readable, data_key


class Abort:
    """A cancellation flag for one download, with the stream to shut when fired."""

    __slots__ = ("_fired", "_lock", "_stream")

    def __init__(self) -> None:
        self._fired = False
        self._stream: object = None
        self._lock = threading.Lock()

    def attach(self, stream: object) -> None:
        """Register the stream being read (shut at once if already fired)."""
        with self._lock:
            self._stream = stream
            fired = self._fired
        if fired:
            _shut(stream)

    def fire(self) -> None:
        """Give the download up: later checks raise, a blocked read returns."""
        with self._lock:
            self._fired = True
            stream = self._stream
        if stream is not None:
            _shut(stream)

    def check(self, where: str) -> None:
        """Raise :class:`StoreError` when fired."""
        if self._fired:
            raise StoreError(f"GET {where}: the download was given up", key=where)


def _shut(stream: object) -> None:
    abort = getattr(stream, "abort", None)
    if callable(abort):
        abort()


def fetch_object(store: ObjectStore, obj: ObjectRef, abort: Abort) -> bytes:
    """The whole object ``obj`` (at most :data:`BLOCK_SIZE` bytes), size and xxh128 checked.

    Raises :class:`CorruptObjectError` naming the key when the store holds other bytes, and
    the store's errors (``ObjectNotFoundError``, ``AccessDeniedError``, ``StoreError``).
    """
    key = data_key(obj.hash)
    where = store.describe(key)
    with store.open_read(key) as body:
        abort.attach(body)
        data = _read_up_to(body, obj.size + 1, abort, where)
    if len(data) != obj.size:
        raise CorruptObjectError(
            f"object {where} has {len(data)}{'+' if len(data) > obj.size else ''} bytes, "
            f"the manifest says {obj.size}",
            key=where,
        )
    actual = hash_bytes(data)
    if actual != obj.hash:
        raise CorruptObjectError(f"object {where} hashes to {actual}, not {obj.hash}", key=where)
    return data


def fetch_blocks(
    store: ObjectStore,
    obj: ObjectRef,
    first: int,
    count: int,
    abort: Abort,
    deliver: Callable[[int, memoryview, int], None],
) -> None:
    """Blocks ``first`` … ``first + count - 1`` of the large object ``obj`` with one ranged
    GET; ``deliver(index, data, checksum)`` gets each as soon as it is complete (in order).

    Raises ``RangeNotHonoredError``, :class:`CorruptObjectError` (the object is shorter or
    longer than the manifest says) and the store's errors; blocks delivered before an error
    stay delivered.
    """
    key = data_key(obj.hash)
    where = store.describe(key)
    start = first * BLOCK_SIZE
    total = min(obj.size, (first + count) * BLOCK_SIZE) - start
    with store.open_range(key, start, total, size=obj.size) as body:
        abort.attach(body)
        for index in range(first, first + count):
            length = block_length(obj, index)
            data = new_block_buffer(length).data()
            got = _read_into(body, data, abort, where)
            if got != length:
                raise CorruptObjectError(
                    f"object {where} ended {length - got} bytes early in block {index}: "
                    "it is shorter than the manifest says",
                    key=where,
                )
            abort.check(where)
            deliver(index, data, block_checksum(data))


READ_CHUNK = 1024 * 1024
"""Bytes asked of a stream per call (so that an abort is noticed between calls)."""


def _read_into(body: Readable, view: memoryview, abort: Abort, where: str) -> int:
    """Fill ``view`` from a stream (``readinto`` when it has one); returns the bytes read,
    fewer only at the stream's end."""
    readinto = getattr(body, "readinto", None)
    got = 0
    while got < len(view):
        abort.check(where)
        piece = view[got : got + READ_CHUNK]
        if readinto is not None:
            n = readinto(piece)
        else:
            chunk = body.read(len(piece))
            n = len(chunk)
            piece[:n] = chunk
        if not n:
            break
        got += n
    return got


def _read_up_to(body: Readable, length: int, abort: Abort, where: str) -> bytes:
    """Up to ``length`` bytes from a stream (fewer only at its end)."""
    parts: list[bytes] = []
    got = 0
    while got < length:
        abort.check(where)
        chunk = body.read(min(length - got, 1024 * 1024))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)

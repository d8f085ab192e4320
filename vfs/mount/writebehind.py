"""Write-behind of a writable mount (``vfs mount --writable --upload-on-close``).

Files closed while the task runs (the last handle open for writing released, the file still
named) are queued; a background task takes them one at a time, hashes each (reusing the hash
the overlay recorded while it was written sequentially, :mod:`vfs.mount.overlay`) and stores
its CAS object ``Data/{hash}.xxh128`` (reference/job-attachments.md §4, §8.3) in the mount's
store, unless the store has it already. What was stored is recorded in the overlay database
(``uploads``: hash, store URI, size), so ``vfs commit`` to the same store skips those objects
without asking the store; the output manifest is only ever written by ``vfs commit``.

Integrity: the object's bytes are hashed again *as they are sent* (:class:`VerifyingReader`),
and the read that would hand over the last bytes raises when they do not hash to the key, so
a file written again during its upload never leaves a wrong object (nothing is stored: S3
sends no PUT, or aborts the multipart upload; the local store drops its temp file). A file
written again after its close is queued again at its next close; one truncated by path is
queued again when its hashing finds its content changed.

Priority: one upload at a time, on its own worker thread, and the upload pauses between
pieces while the mount has demand fetches in flight (up to :data:`YIELD_MAX` seconds per
piece), so reads from the mount keep the bandwidth. Only files whose whole content is in the
overlay's data file (new files, base files overwritten whole) are uploaded here; a base file
written in part is left to ``vfs commit``, which reads its untouched bytes from the store.

Errors never stop the mount: each is logged (a warning naming the file) and the file retried
after a growing pause (:data:`RETRY_FIRST` to :data:`RETRY_MAX` seconds); whatever was not
stored when ``vfs commit`` runs, the commit stores itself.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import time
from collections.abc import Callable
from typing import BinaryIO

import trio

from vfs.errors import VfsError
from vfs.hashing import EMPTY_HASH, new_hasher
from vfs.mount.blocks import BLOCK_SIZE
from vfs.mount.overlay import Overlay
from vfs.mount.overlaydb import KnownHash
from vfs.mount.stats import MountStats
from vfs.storage import ObjectStore, data_key

log = logging.getLogger(__name__)

READ_SIZE = 8 * 1024 * 1024
"""Bytes read from a data file at a time when hashing it."""

RETRY_FIRST = 2.0
"""Seconds before the first retry of a failed upload (doubled each time)."""

RETRY_MAX = 60.0
"""Longest pause between retries of one file, in seconds."""

YIELD_POLL = 0.02
"""Seconds between looks at the mount's demand fetches while an upload yields to them."""

SMALL_OBJECT = 8 * 1024 * 1024
"""Objects up to this many bytes are read (and checked) whole, then sent with one PUT."""

YIELD_MAX = 1.0
"""Longest pause of an upload per piece read while reads are being fetched, in seconds."""


class ContentChangedError(VfsError):
    """The content of a file changed while write-behind read it; nothing was stored and
    the file is handled again (at its next close, or by ``vfs commit``)."""


class VerifyingReader:
    """A stream of the first ``size`` bytes of the open file ``f`` (zeros past its end,
    as a sparse data file reads) that hashes what it hands over.

    The read that would hand over the last bytes raises :class:`ContentChangedError`
    (naming ``what``) when the bytes do not hash to ``expected`` (xxh128, hex): an upload
    fed by it never completes with bytes that are not the object's. ``busy()``: while it
    is true, each read first waits (at most :data:`YIELD_MAX` seconds).
    """

    def __init__(
        self,
        f: BinaryIO,
        size: int,
        expected: str,
        what: str,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.f = f
        self.size = size
        self.expected = expected
        self.what = what
        self.busy = busy
        self.pos = 0
        self.hasher = new_hasher()
        if size == 0 and expected != EMPTY_HASH:
            raise ContentChangedError(f"{what} is empty now")

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n < 0``); ``b""`` at the end."""
        left = self.size - self.pos
        if left <= 0:
            return b""
        n = left if n < 0 else min(n, left)
        if self.busy is not None:
            waited = 0.0
            while waited < YIELD_MAX and self.busy():
                time.sleep(YIELD_POLL)
                waited += YIELD_POLL
        data = self.f.read(n)
        if len(data) < n:
            data += bytes(n - len(data))
        self.hasher.update(data)
        self.pos += n
        if self.pos == self.size and self.hasher.hexdigest() != self.expected:
            raise ContentChangedError(
                f"{self.what} changed while it was uploaded (hash {self.hasher.hexdigest()}, "
                f"expected {self.expected}): not stored"
            )
        return data


def hash_data_file(path: str, size: int) -> str:
    """xxh128 of the first ``size`` bytes of the file at ``path`` (zeros past its end).
    Raises ``OSError``."""
    hasher = new_hasher()
    with open(path, "rb", buffering=0) as f:
        left = size
        while left > 0:
            piece = f.read(min(left, READ_SIZE)) or bytes(min(left, READ_SIZE))
            hasher.update(piece)
            left -= len(piece)
    return hasher.hexdigest()


def upload_object(
    store: ObjectStore,
    path: str,
    size: int,
    hash_: str,
    what: str,
    busy: Callable[[], bool] | None = None,
) -> bool:
    """Store the first ``size`` bytes of file ``path`` as object ``Data/{hash_}.xxh128``,
    verified as they are sent (:class:`VerifyingReader`). Returns False when the store had
    the object already at that size (nothing sent). Raises :class:`ContentChangedError`,
    the store's errors (``StoreError``…) and ``OSError``."""
    key = data_key(hash_)
    if store.head(key) == size:
        return False
    with open(path, "rb") as f:
        reader = VerifyingReader(f, size, hash_, what, busy)
        if size <= SMALL_OBJECT:  # checked in memory, then sent as it is: one PUT
            store.put_bytes(key, reader.read())
        else:
            store.put_stream(key, reader)
    return True


class WriteBehind:
    """The write-behind queue of the mount whose overlay is ``overlay``, storing into
    ``store`` (the mount's store); counters go to ``stats`` (``writebehind.*``).

    :meth:`enqueue` is the overlay's :attr:`~vfs.mount.overlay.Overlay.on_closed`;
    :meth:`run` is the background task (started in the mount's nursery, cancelled at
    unmount). ``busy()`` tells when the mount has demand fetches in flight.
    """

    def __init__(
        self,
        overlay: Overlay,
        store: ObjectStore,
        stats: MountStats,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.overlay = overlay
        self.store = store
        self.stats = stats
        self.busy = busy
        self._queue: dict[int, float] = {}  # ino -> not before (trio clock), in order
        self._failures: dict[int, int] = {}
        self._wake = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self.stored: set[str] = set(overlay.db.load_uploads(store.uri))
        stats.gauge("writebehind.pending", lambda: len(self._queue))

    def enqueue(self, ino: int, delay: float = 0.0) -> None:
        """Queue file ``ino`` (again: to the end), to be handled after ``delay`` seconds."""
        self._queue.pop(ino, None)
        not_before = trio.current_time() + delay if delay else 0.0
        self._queue[ino] = not_before
        self.stats.add("writebehind.queued")
        self._wake.set()

    def _next(self) -> tuple[int | None, float]:
        """The first file due, or ``None`` and the seconds until one is."""
        now = trio.current_time()
        wait = math.inf
        for ino, not_before in self._queue.items():
            if not_before <= now:
                del self._queue[ino]
                return ino, 0.0
            wait = min(wait, not_before - now)
        return None, wait

    async def run(self) -> None:
        """Handle queued files one at a time, forever (until cancelled). A failure is
        logged and the file retried later; nothing here ends the mount."""
        while not self.overlay.closed:
            ino, wait = self._next()
            if ino is None:
                self._wake = trio.Event()
                with trio.move_on_after(wait):
                    await self._wake.wait()
                continue
            try:
                await self._one(ino)
                self._failures.pop(ino, None)
            except Exception as e:
                if self.overlay.closed:
                    return
                count = self._failures[ino] = self._failures.get(ino, 0) + 1
                delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (count - 1))
                self.stats.add("writebehind.errors")
                cause = str(e) if isinstance(e, VfsError) else f"{type(e).__name__}: {e}"
                log.warning("write-behind of %s failed (%s); retrying in %.0f s (vfs commit "
                            "stores it otherwise)", self._path(ino), cause, delay)  # fmt: skip
                self.enqueue(ino, delay)

    def _path(self, ino: int) -> str:
        try:
            return self.overlay.path_of(ino)
        except Exception:
            return f"inode {ino}"

    def _eligible(self, ino: int) -> bool:
        """True when ``ino`` is a named regular file, closed, whose whole content is in
        its data file."""
        overlay = self.overlay
        node = overlay.nodes.get(ino)
        if node is None or node.nlink == 0 or not node.data or not stat.S_ISREG(node.mode):
            return False
        if overlay.writing(ino):
            return False  # queued again at its close
        if node.base and node.base_limit > 0:
            blocks = range((node.base_limit - 1) // BLOCK_SIZE + 1)
            if any(i not in node.blocks for i in blocks):
                self.stats.add("writebehind.partial")  # part of it is still the base's
                return False
        return True

    async def _one(self, ino: int) -> None:
        overlay = self.overlay
        if overlay.closed or not self._eligible(ino):
            return
        node = overlay.nodes[ino]
        generation, size = overlay.generation(ino), node.size
        path = os.path.join(overlay.data_dir, str(ino))
        what = self._path(ino)
        known = overlay.hashes.get(ino)
        if known is not None and known.size == size:
            hash_ = known.hash
        else:
            hash_ = await trio.to_thread.run_sync(
                hash_data_file, path, size, limiter=self._limiter, abandon_on_cancel=True
            )
            self.stats.add("writebehind.hashed.bytes", size)
            if overlay.closed:
                return
            if overlay.generation(ino) != generation or overlay.nodes.get(ino) is not node:
                self.enqueue(ino)  # changed meanwhile (a truncate by path has no close)
                return
            overlay.record_hash(ino, KnownHash(hash_, size, node.mtime_ns))
        if hash_ in self.stored:
            return
        sent = await trio.to_thread.run_sync(
            upload_object, self.store, path, size, hash_, what, self.busy,
            limiter=self._limiter, abandon_on_cancel=True,
        )  # fmt: skip
        if overlay.closed:
            return
        overlay.db.add_upload(hash_, self.store.uri, size)
        self.stored.add(hash_)
        if sent:
            self.stats.add("writebehind.uploaded.objects")
            self.stats.add("writebehind.uploaded.bytes", size)
        else:
            self.stats.add("writebehind.skipped.objects")
        log.debug("write-behind stored %s as %s", what, data_key(hash_))

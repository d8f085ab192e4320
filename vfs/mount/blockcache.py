"""The node's persistent block cache, shared by every mount (and ``vfs cache``) on the node.

Layout under the cache directory (mode 0700)::

    objects/{h[:2]}/{h}        a whole object (at most BLOCK_SIZE bytes): exactly its bytes,
                               checked against its size and xxh128 on every load
    b/{h[:2]}/{h}/{i}          block i of a larger object: a header naming the block and
                               carrying the checksum taken on arrival, then the data
                               (vfs.mount.blockfile), all checked on every load
    tmp/                       entries being written, named after their writer process
    index.sqlite               LRU order, reservations and verified objects
                               (vfs.mount.cacheindex), shared by every process
    lock                       flock held while reserving, committing, evicting, reconciling

Rules (CernVM-FS's shared cache and mountpoint-s3's disk cache are the models):

* Entries enter ``objects/`` and ``b/`` only by an atomic rename, so readers in any process
  see whole entries or nothing; every load checks the entry, and an entry that fails is
  removed and reported as :class:`~vfs.mount.blockfile.CorruptEntryError`, never served.
* The space an entry takes is reserved in the index before it is written, evicting least
  recently used entries (of every process) to make room, so ``used + reserved`` stays within
  ``max_size`` while downloads are under way. Nothing is pinned: a reader holds the bytes it
  loaded, so evicting a file under it costs a refetch at worst, never an error.
* A cache that cannot be written (its lock held too long, the index busy or damaged, the
  disk full) never fails a read: :meth:`BlockCache.store` returns ``False`` and the caller
  serves from memory. After such a failure the cache is skipped for
  :data:`RETRY_AFTER_S` seconds, so a locked index costs one wait, not one per block.
* Reads of the cache (:meth:`stats`) change nothing; :meth:`reconcile` (after a crash) only
  drops index rows older than its scan and temporary files of processes that are gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import cachetools

from vfs.errors import VfsError
from vfs.mount.blockfile import (
    HEADER_SIZE,
    CorruptEntryError,
    WouldBlock,
    block_checksum,
    encode_header,
    open_entry,
    read_block_file,
    read_object_file,
    write_block_temp,
    write_temp,
)
from vfs.mount.blocks import BLOCK_SIZE, block_length
from vfs.mount.cacheindex import CacheIndex, process_start
from vfs.mount.objects import ObjectRef

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 5.0
"""How long reserving or committing waits for another process's cache lock (seconds)."""

PRESENT_TTL_S = 5.0
"""How long this process trusts its map of a large object's present blocks (seconds): its
own writes and removals keep the map right; another process's show after at most this long
(a block stored elsewhere is fetched again meanwhile, one evicted elsewhere is a miss)."""

RETRY_AFTER_S = 10.0
"""After the cache could not be written, skip writing it for this many seconds."""

TMP_MAX_AGE_S = 3600.0
"""A temporary file older than this (seconds) is taken for a crashed writer and removed."""

_LEGACY_DIRS = ("blocks",)  # blocks without headers, written by earlier versions


class CacheBusy(VfsError):
    """The cache lock was held by another process for longer than the timeout."""


class _NoRoom(Exception):
    """Live reservations of other writers leave no room for this entry right now."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What the index says: ``entries`` files of ``used`` bytes, ``reserved`` bytes promised
    to writes under way in live processes, ``verified`` large objects; ``max_size`` and the
    ``free_bytes`` of the cache's file system."""

    entries: int
    used: int
    reserved: int
    verified: int
    max_size: int
    free_bytes: int


class BlockCache:
    """Bounded, persistent, shared on-disk cache of objects and blocks (module docstring).

    ``max_size`` bounds the bytes of entries (headers included); ``min_free_ratio`` is the
    share of the file system that eviction keeps free. Every method blocks (file and SQLite
    I/O): call them from worker threads. Raises :class:`VfsError` when the directory cannot
    be created.
    """

    def __init__(
        self,
        root: str,
        max_size: int,
        min_free_ratio: float = 0.05,
        *,
        lock_timeout: float = LOCK_TIMEOUT_S,
    ) -> None:
        self.root = os.path.abspath(root)
        self.max_size = max_size
        self.min_free_ratio = min_free_ratio
        self.lock_timeout = lock_timeout
        self.tmp_dir = os.path.join(self.root, "tmp")
        self._lock_path = os.path.join(self.root, "lock")
        self._touched: dict[str, float] = {}
        self._touched_lock = threading.Lock()
        self._skip_until = 0.0
        self._warned = False
        # hash -> indices of its block files, as listed or since written/removed here
        self._present: cachetools.TTLCache[str, set[int]] = cachetools.TTLCache(
            maxsize=4096, ttl=PRESENT_TTL_S
        )
        self._present_lock = threading.Lock()
        try:
            self._ensure_dirs()
        except OSError as e:
            raise VfsError(
                f"cannot create the cache directory {self.root}: {e.strerror}",
                hint="pass --cache-dir with a writable directory",
            ) from None
        self.index = CacheIndex(self.root)
        self._tmp_prefix = f"{self.index.owner}."

    def _ensure_dirs(self) -> None:
        """Create the cache's directories (0700) and lock file (0600) where missing."""
        for sub in ("", "objects", "b", "tmp"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        os.close(os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))

    # -- names ------------------------------------------------------------------------------

    @staticmethod
    def object_name(hash_: str) -> str:
        """Index name (and relative path) of a whole object."""
        return f"objects/{hash_[:2]}/{hash_}"

    @staticmethod
    def block_dir(hash_: str) -> str:
        """Relative path of the directory of a large object's blocks."""
        return f"b/{hash_[:2]}/{hash_}"

    @classmethod
    def block_name(cls, hash_: str, index: int) -> str:
        """Index name (and relative path) of block ``index`` of a large object."""
        return f"{cls.block_dir(hash_)}/{index}"

    def path(self, name: str) -> str:
        """Absolute path of an entry."""
        return os.path.join(self.root, name)

    # -- loading ----------------------------------------------------------------------------

    def load_object(self, obj: ObjectRef) -> bytes:
        """The bytes of a whole object, checked against its size and hash.

        Raises ``FileNotFoundError`` on a miss and :class:`CorruptEntryError` (after
        removing the entry) when the file is not the object.
        """
        name = self.object_name(obj.hash)
        try:
            data = read_object_file(self.path(name), obj.hash, obj.size)
        except CorruptEntryError:
            self.remove([name])
            raise
        self.touch(name)
        return data

    def load_block(
        self, obj: ObjectRef, index: int, expect_sum: int | None = None, *, nowait: bool = False
    ) -> tuple[memoryview, int]:
        """Block ``index`` of a large object and its checksum, checked against its header
        (and against ``expect_sum``, the checksum recorded when the object was verified).

        Raises ``FileNotFoundError`` on a miss and :class:`CorruptEntryError` (after
        removing the entry) when the block fails a check. With ``nowait`` (for the event
        loop: no disk read, no lock, no SQLite) the block is loaded only when its file is
        wholly in the page cache and passes every check; :class:`WouldBlock` otherwise,
        and the blocking load tells what is wrong.
        """
        name = self.block_name(obj.hash, index)
        try:
            loaded = read_block_file(
                self.path(name), obj.hash, obj.size, index, BLOCK_SIZE,
                block_length(obj, index), expect_sum, nowait=nowait,
            )  # fmt: skip
        except CorruptEntryError:
            if nowait:
                raise WouldBlock from None
            self.remove([name])
            raise
        self.touch(name)
        return loaded

    def advise_blocks(self, hash_: str, indices: Iterable[int]) -> None:
        """Ask the kernel to read the block files ``indices`` of ``hash_`` into the page
        cache in the background (``POSIX_FADV_WILLNEED``), so that loading them one after
        the other finds them there (after ``drop_caches``, or on blocks written with
        ``O_DIRECT``). Missing files and refusals are ignored: this is a hint."""
        for index in indices:
            try:
                fd = open_entry(self.path(self.block_name(hash_, index)))  # never waits
            except (OSError, CorruptEntryError):
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def present_blocks(self, hash_: str) -> set[int]:
        """Indices of the blocks of ``hash_`` that have a file (not checked; a copy). Listed
        at most once per :data:`PRESENT_TTL_S` seconds, kept up to date with this process's
        writes and removals in between."""
        known = self.known_blocks(hash_)
        if known is not None:
            return known
        present = self._list_blocks(hash_)
        with self._present_lock:
            self._present[hash_] = present
            return set(present)

    def _list_blocks(self, hash_: str) -> set[int]:
        try:
            names = os.listdir(self.path(self.block_dir(hash_)))
        except OSError:
            return set()
        return {int(n) for n in names if n.isdigit()}

    def known_blocks(self, hash_: str) -> set[int] | None:
        """:meth:`present_blocks` when known without touching the disk (a copy), else
        ``None``; never blocks on I/O, so the event loop may call it."""
        with self._present_lock:
            present = self._present.get(hash_)
            return None if present is None else set(present)

    def _note_blocks(self, names: Iterable[str], present: bool) -> None:
        """Update the present map for entries written (``present``) or removed."""
        with self._present_lock:
            for name in names:
                parts = name.split("/")  # b/{h[:2]}/{h}/{i}
                if len(parts) != 4 or parts[0] != "b" or not parts[3].isdigit():
                    continue
                known = self._present.get(parts[2])
                index = int(parts[3])
                if known is not None:
                    (known.add if present else known.discard)(index)

    def has_object(self, obj: ObjectRef) -> bool:
        """True when a whole object's file exists with the right size (not checked)."""
        try:
            return os.stat(self.path(self.object_name(obj.hash))).st_size == obj.size
        except OSError:
            return False

    # -- storing ----------------------------------------------------------------------------

    def store_object(self, obj: ObjectRef, data: bytes | memoryview) -> bool:
        """Cache a whole object the caller has verified. ``False`` when it was not cached
        (see :meth:`store`)."""
        return self.store(self.object_name(obj.hash), [data], len(data))

    def store_block(
        self, obj: ObjectRef, index: int, data: bytes | memoryview, checksum: int | None = None
    ) -> bool:
        """Cache block ``index`` of a large object with the checksum taken on arrival
        (computed when not given). ``False`` when it was not cached (see :meth:`store`)."""
        if checksum is None:
            checksum = block_checksum(data)
        header = encode_header(obj.hash, obj.size, index, BLOCK_SIZE, len(data), checksum)
        return self.store(
            self.block_name(obj.hash, index), [header, data], HEADER_SIZE + len(data), direct=True
        )

    def store(
        self, name: str, parts: Sequence[bytes | memoryview], size: int, *, direct: bool = False
    ) -> bool:
        """Write entry ``name`` (``parts`` joined, ``size`` bytes): reserve the space
        (evicting), write a temporary file, rename it into place and index it. With
        ``direct``, ``parts`` are a block file's header and data, written past the page cache
        (:func:`~vfs.mount.blockfile.write_block_temp`).

        Returns ``False``, without raising, when the entry was not cached: larger than the
        cache, the lock or index busy past their timeouts, the index damaged, the disk full.
        Such failures are logged once per run and make the cache skip writes for
        :data:`RETRY_AFTER_S` seconds.
        """
        if size > self.max_size or time.monotonic() < self._skip_until:
            return False
        reserved = 0
        tmp: str | None = None
        try:
            self._reserve(size)
            reserved = size
            if direct:
                tmp = write_block_temp(self.tmp_dir, self._tmp_prefix, parts[0], parts[1])
            else:
                tmp = write_temp(self.tmp_dir, self._tmp_prefix, parts)
            dest = self.path(name)
            with self._locked():
                self._make_dirs(os.path.dirname(name))
                os.replace(tmp, dest)
                tmp = None
                self.index.commit(name, size, reserved)
                reserved = 0
            self._note_blocks([name], True)
        except _NoRoom:
            log.debug("cache %s: no room for %s beside the writes under way", self.root, name)
            return False
        except (OSError, sqlite3.Error, VfsError) as e:
            self._write_failed(name, e)
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if reserved:
                with contextlib.suppress(sqlite3.Error):
                    self.index.release(reserved)
        if self._warned:
            self._warned = False
            log.info("cache %s: writing entries again", self.root)
        return True

    def _write_failed(self, name: str, error: BaseException) -> None:
        self._skip_until = time.monotonic() + RETRY_AFTER_S
        if isinstance(error, FileNotFoundError):  # the cache directory was removed
            with contextlib.suppress(OSError):
                self._ensure_dirs()
        if self._warned:
            return
        self._warned = True
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        hint = (
            "free disk space or lower --cache-size"
            if isinstance(error, OSError) and error.errno == errno.ENOSPC
            else "reads are served from memory meanwhile"
        )
        log.warning(
            "cache %s: cannot store %s (%s); not caching for %.0f s, %s",
            self.root, name, why, RETRY_AFTER_S, hint,
        )  # fmt: skip

    def _make_dirs(self, rel: str) -> None:
        """Create ``rel`` (under the root) and its parents, each owner-only (``makedirs``
        gives only the last one its mode)."""
        path = self.root
        for part in rel.split("/"):
            path = os.path.join(path, part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the cache lock; raise :class:`CacheBusy` after ``lock_timeout`` seconds."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + self.lock_timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CacheBusy(
                            f"cache lock {self._lock_path} busy for more than "
                            f"{self.lock_timeout:.0f} s (another writer holds it, or waits "
                            "for the index)"
                        ) from None
                    time.sleep(delay)
                    delay = min(0.05, delay * 2)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _reserve(self, nbytes: int) -> None:
        """Reserve ``nbytes`` for an entry being written, evicting least recently used
        entries so that entries plus live reservations stay within ``max_size`` and the file
        system keeps ``min_free_ratio`` free. Raises :class:`CacheBusy`, ``sqlite3.Error``,
        ``OSError``, or :class:`_NoRoom` when that much cannot be freed."""
        with self._locked():
            self._evict_locked(self.max_size, nbytes)

    def _evict_locked(self, target: int, nbytes: int) -> int:
        """Under the lock: evict least recently used entries until entries, live
        reservations and ``nbytes`` more fit in ``target`` bytes (and, when ``nbytes``, the
        file system keeps ``min_free_ratio`` free), then reserve ``nbytes``; dead owners'
        reservations are dropped on the way. Returns the bytes freed. Raises
        :class:`_NoRoom` when ``nbytes`` cannot be made room for."""
        live, dead = self.index.live_reservations()
        over = self.index.used() + live + nbytes - target
        if nbytes:
            over = max(over, self._free_deficit(nbytes))
        victims = self._pick_victims(over) if over > 0 else []
        freed = sum(size for _, size in victims)
        if nbytes and freed < over:
            raise _NoRoom()
        self.index.reserve(nbytes, [n for n, _ in victims], dead)
        for name, _ in victims:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(name))
        self._note_blocks((n for n, _ in victims), False)
        return freed

    def _pick_victims(self, need: int) -> list[tuple[str, int]]:
        victims: list[tuple[str, int]] = []
        freed, offset = 0, 0
        while freed < need:
            rows = self.index.lru(256, offset)
            if not rows:
                break
            offset += len(rows)
            for name, size in rows:
                victims.append((name, size))
                freed += size
                if freed >= need:
                    break
        return victims

    def _free_deficit(self, nbytes: int) -> int:
        """Bytes to free so that writing ``nbytes`` leaves ``min_free_ratio`` free."""
        st = os.statvfs(self.root)
        want_free = self.min_free_ratio * st.f_blocks * st.f_frsize
        return max(0, int(want_free + nbytes - st.f_bavail * st.f_frsize))

    # -- removing ---------------------------------------------------------------------------

    def remove(self, names: Iterable[str]) -> None:
        """Delete entries (found corrupt, or of an object that failed verification) and
        their index rows. Never raises: an index failure is logged and left to
        :meth:`reconcile`."""
        names = list(names)
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(self.path(name))
        self._note_blocks(names, False)
        try:
            self.index.remove(names)
        except sqlite3.Error as e:
            log.warning("cache %s: cannot drop %d index rows (%s)", self.root, len(names), e)

    def evict(self, max_size: int | None = None) -> int:
        """Evict least recently used entries until entries plus live reservations fit in
        ``max_size`` bytes (default: the cache's limit). Returns the bytes freed. Raises
        :class:`CacheBusy` or ``sqlite3.Error``."""
        with self._locked():
            return self._evict_locked(self.max_size if max_size is None else max_size, 0)

    # -- after a crash ----------------------------------------------------------------------

    def reconcile(self) -> tuple[int, int]:
        """Make the index agree with the files after a crash or a damaged index.

        Scans the entry files without the lock, then, under it, drops rows without a file
        that are older than the scan, indexes files without a row (still there), and removes
        temporary files of processes that are gone (or older than :data:`TMP_MAX_AGE_S`),
        and the blocks of earlier versions. Live processes' rows, files and reservations are
        never touched. Returns ``(rows dropped, files added)``. Raises :class:`CacheBusy`,
        ``sqlite3.Error`` or ``OSError``.
        """
        started = time.time()
        on_disk = dict(self._scan())
        with self._locked():
            known = self.index.all_entries()
            drop = [n for n, (_, used) in known.items() if n not in on_disk and used < started - 1]
            add = []
            for name, size in on_disk.items():
                if known.get(name, (None,))[0] != size:
                    with contextlib.suppress(OSError):
                        st = os.stat(self.path(name))
                        add.append((name, st.st_size, st.st_mtime))
            self.index.apply_scan(drop, add)
        self._remove_stale_temps()
        for legacy in _LEGACY_DIRS:
            shutil.rmtree(self.path(legacy), ignore_errors=True)
        if drop or add:
            log.info("cache %s: index reconciled (%d rows dropped, %d files added)",
                     self.root, len(drop), len(add))  # fmt: skip
        return len(drop), len(add)

    def _scan(self) -> Iterator[tuple[str, int]]:
        """``(name, size)`` of every entry file."""
        for top in ("objects", "b"):
            for dirpath, _dirs, files in os.walk(self.path(top)):
                rel = os.path.relpath(dirpath, self.root)
                for f in files:
                    with contextlib.suppress(OSError):
                        yield f"{rel}/{f}", os.stat(os.path.join(dirpath, f)).st_size

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - TMP_MAX_AGE_S
        with os.scandir(self.tmp_dir) as it:
            for entry in it:
                owner = entry.name.split(".", 1)[0]
                pid, _, started = owner.partition("-")
                alive = pid.isdigit() and str(process_start(int(pid))) == started
                with contextlib.suppress(OSError):
                    if not alive or entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

    # -- recency ----------------------------------------------------------------------------

    def touch(self, name: str) -> None:
        """Note that ``name`` was used (cheap; written by :meth:`flush_touched`)."""
        with self._touched_lock:
            self._touched[name] = time.time()

    def flush_touched(self) -> None:
        """Write the recorded uses to the index; on failure they are dropped (logged once
        by the index): recency is a hint."""
        with self._touched_lock:
            touched, self._touched = self._touched, {}
        if touched:
            self.index.touch_many(touched.items())

    # -- verified objects -------------------------------------------------------------------

    def verified_sums(self, obj: ObjectRef) -> tuple[int, ...] | None:
        """Block checksums of ``obj`` recorded when some process verified it, or ``None``
        (also when the index cannot be read)."""
        try:
            return self.index.verified_sums(obj.hash, obj.size, BLOCK_SIZE)
        except sqlite3.Error as e:
            log.debug("cache %s: verified record of %s unreadable: %s", self.root, obj.hash, e)
            return None

    def record_verified(self, obj: ObjectRef, sums: Sequence[int]) -> None:
        """Record that ``obj`` hashed right with these block checksums (best effort)."""
        try:
            self.index.record_verified(obj.hash, obj.size, BLOCK_SIZE, sums)
        except sqlite3.Error as e:
            log.debug("cache %s: cannot record %s as verified: %s", self.root, obj.hash, e)

    def forget_object(self, obj: ObjectRef) -> None:
        """Remove every block and the verified record of a large object (it failed
        verification). Never raises."""
        names = [self.block_name(obj.hash, i) for i in self._list_blocks(obj.hash)]
        self.remove(names)
        with contextlib.suppress(sqlite3.Error):
            self.index.forget_verified(obj.hash)

    # -- observing --------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """What the index says (read-only; raises ``sqlite3.Error``)."""
        entries, used, live, verified = self.index.usage()
        st = os.statvfs(self.root)
        return CacheStats(
            entries=entries,
            used=used,
            reserved=live,
            verified=verified,
            max_size=self.max_size,
            free_bytes=st.f_bavail * st.f_frsize,
        )

    def close(self) -> None:
        """Flush recorded uses and close the index."""
        with contextlib.suppress(sqlite3.Error):
            self.flush_touched()
        self.index.close()

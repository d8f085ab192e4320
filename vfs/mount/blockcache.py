"""The node's persistent block cache, shared by every mount (and ``vfs cache``) on the node.

Layout under the cache directory::

    objects/{h[:2]}/{h}            a whole object (objects up to BLOCK_SIZE), verified by xxh128
    blocks/{h[:2]}/{h}-4m/{i}      block i (BLOCK_SIZE bytes, the last one shorter) of a
                                   larger object, fetched by a ranged GET, length-checked
    tmp/                           downloads in progress
    index.sqlite                   LRU index: (name, size, last_used), and the total size
    lock                           flock taken while evicting and reconciling

Entries enter ``objects/`` and ``blocks/`` only by an atomic rename, so readers in any
process see whole entries or nothing. The index is SQLite in WAL mode, shared by the
processes using the cache; the space an entry will take is *reserved* in the index before
its download starts, so the cache stays within ``max_size`` even while several downloads
are under way. After a crash (``kill -9``) the index is reconciled with the files at the
next start. An entry that a reader of this process has open is never evicted; readers in
other processes keep reading an evicted entry through their open file descriptors (Linux
frees its space when they close it).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from vfs.errors import CacheFullError, VfsError

log = logging.getLogger(__name__)

BLOCK_SIZE = 4 * 1024 * 1024
"""Bytes per block of an object larger than one block; the unit of ranged fetches."""

TMP_MAX_AGE = 3600.0
"""Seconds after which a temporary file is taken for a crashed download and removed."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries(name TEXT PRIMARY KEY, size INTEGER, last_used REAL);
CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_used);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER);
"""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Size of the cache: ``entries`` files holding ``used`` bytes, plus ``reserved`` bytes
    promised to downloads under way; ``max_size`` and ``free_bytes`` of its file system."""

    entries: int
    used: int
    reserved: int
    max_size: int
    free_bytes: int


class BlockCache:
    """Bounded, persistent, shared on-disk cache of objects and blocks.

    ``max_size`` bounds the bytes of cached entries (bytes); ``min_free_ratio`` is the share
    of the cache's file system that eviction keeps free. Methods that touch the index run
    in worker threads (never on the event loop); ``has``/paths are plain ``stat`` calls.
    Raises :class:`VfsError` when the directory cannot be created.
    """

    def __init__(self, root: str, max_size: int, min_free_ratio: float = 0.05) -> None:
        self.root = os.path.abspath(root)
        self.max_size = max_size
        self.min_free_ratio = min_free_ratio
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.db_path = os.path.join(self.root, "index.sqlite")
        self._lock_path = os.path.join(self.root, "lock")
        self._local = threading.local()
        self._touched: dict[str, float] = {}
        self._touched_lock = threading.Lock()
        try:
            for sub in ("objects", "blocks", "tmp"):
                os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        except OSError as e:
            raise VfsError(f"cannot create the cache directory {self.root}: {e.strerror}") from None
        self.reconcile()

    # -- names ------------------------------------------------------------------------------

    @staticmethod
    def object_name(hash_: str) -> str:
        """Index name (and relative path) of a whole object."""
        return f"objects/{hash_[:2]}/{hash_}"

    @staticmethod
    def block_name(hash_: str, index: int) -> str:
        """Index name (and relative path) of block ``index`` of an object."""
        return f"blocks/{hash_[:2]}/{hash_}-{BLOCK_SIZE >> 20}m/{index}"

    def path(self, name: str) -> str:
        """Absolute path of an entry."""
        return os.path.join(self.root, name)

    def has(self, name: str, size: int) -> bool:
        """True when entry ``name`` is present with ``size`` bytes."""
        try:
            return os.stat(os.path.join(self.root, name)).st_size == size
        except OSError:
            return False

    # -- the index --------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        return db

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _total(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT value FROM meta WHERE key='total'").fetchone()
        return int(row[0]) if row else 0

    def _add_total(self, db: sqlite3.Connection, delta: int) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES('total', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (delta,),
        )

    def reconcile(self) -> None:
        """Make the index agree with the files (after a crash or a damaged index).

        Rows without a file are dropped, files without a row are added, the total is
        recomputed, and stale temporary files are removed. A corrupt index file is moved
        aside (with a warning) and rebuilt from the files.
        """
        with self._locked():
            try:
                self._reconcile()
            except sqlite3.DatabaseError as e:
                aside = f"{self.db_path}.corrupt-{int(time.time())}"
                log.warning("cache index %s is damaged (%s); moved to %s and rebuilt",
                            self.db_path, e, aside)  # fmt: skip
                self._local.db = None
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(OSError):
                        os.replace(self.db_path + suffix, aside + suffix)
                self._reconcile()

    def _reconcile(self) -> None:
        db = self._db()
        on_disk = dict(self._scan())
        db.execute("BEGIN IMMEDIATE")
        try:
            known = dict(db.execute("SELECT name, size FROM entries").fetchall())
            gone = [(n,) for n in known if n not in on_disk]
            db.executemany("DELETE FROM entries WHERE name=?", gone)
            now = time.time()
            fresh = [(n, s, now) for n, s in on_disk.items() if known.get(n) != s]
            db.executemany(
                "INSERT INTO entries(name, size, last_used) VALUES(?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET size=excluded.size",
                fresh,
            )
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES('total', ?)",
                (sum(on_disk.values()),),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if gone or fresh:
            log.info("cache %s: index reconciled (%d rows dropped, %d files added)",
                     self.root, len(gone), len(fresh))  # fmt: skip
        cutoff = time.time() - TMP_MAX_AGE
        with os.scandir(self.tmp_dir) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

    def _scan(self) -> Iterator[tuple[str, int]]:
        """``(name, size)`` of every entry file."""
        for top in ("objects", "blocks"):
            base = os.path.join(self.root, top)
            for dirpath, _dirs, files in os.walk(base):
                rel = os.path.relpath(dirpath, self.root)
                for f in files:
                    with contextlib.suppress(OSError):
                        yield f"{rel}/{f}", os.stat(os.path.join(dirpath, f)).st_size

    # -- adding and evicting ----------------------------------------------------------------

    def reserve(self, nbytes: int, pinned: Collection[str] = ()) -> None:
        """Promise ``nbytes`` to a download, evicting least recently used entries first.

        Call :meth:`commit` with the finished entry or :meth:`release` on failure.
        Raises :class:`VfsError` when the space cannot be freed (all pinned, or disk full).
        """
        with self._locked():
            db = self._db()
            self._add_total(db, nbytes)
            try:
                self._evict_locked(db, pinned, need=0)
            except BaseException:
                self._add_total(db, -nbytes)
                raise

    def release(self, nbytes: int) -> None:
        """Give back a reservation whose download failed."""
        self._add_total(self._db(), -nbytes)

    def new_temp(self) -> tuple[int, str]:
        """A new temporary file in the cache's ``tmp/``: ``(fd, path)``."""
        return tempfile.mkstemp(dir=self.tmp_dir)

    def commit(self, tmp_path: str, name: str, size: int, reserved: int) -> str:
        """Move a finished download into place as entry ``name`` and index it.

        ``reserved`` is what :meth:`reserve` promised for it. Returns the entry's path.
        """
        dest = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(tmp_path, dest)
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            old = db.execute("SELECT size FROM entries WHERE name=?", (name,)).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO entries(name, size, last_used) VALUES(?, ?, ?)",
                (name, size, time.time()),
            )
            # The reservation becomes the entry; an entry replaced in place frees its size.
            self._add_total(db, size - reserved - (old[0] if old else 0))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return dest

    def remove(self, names: Iterable[str]) -> None:
        """Delete entries (corrupt ones) and their index rows."""
        with self._locked():
            self._remove_locked(self._db(), list(names))

    def _remove_locked(self, db: sqlite3.Connection, names: list[str]) -> int:
        freed = 0
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.root, name))
            row = db.execute("DELETE FROM entries WHERE name=? RETURNING size", (name,)).fetchone()
            if row:
                freed += int(row[0])
        if freed:
            self._add_total(db, -freed)
        return freed

    def _free_deficit(self) -> int:
        """Bytes to free so that the file system keeps ``min_free_ratio`` free."""
        st = os.statvfs(self.root)
        want_free = self.min_free_ratio * st.f_blocks * st.f_frsize
        return max(0, int(want_free - st.f_bavail * st.f_frsize))

    def _evict_locked(self, db: sqlite3.Connection, pinned: Collection[str], need: int) -> None:
        over = max(self._total(db) - self.max_size, self._free_deficit(), need)
        if over <= 0:
            return
        freed = 0
        skipped = 0  # pinned rows at the head of the LRU order
        while freed < over:
            rows = db.execute(
                "SELECT name, size FROM entries ORDER BY last_used LIMIT 256 OFFSET ?", (skipped,)
            ).fetchall()
            if not rows:
                break
            batch: list[str] = []
            for name, size in rows:
                if name in pinned:
                    skipped += 1
                    continue
                batch.append(name)
                freed += int(size)
                if freed >= over:
                    break
            self._remove_locked(db, batch)
        if freed < over:
            raise CacheFullError(
                f"cache {self.root} is full: {over - freed} more bytes are needed but every "
                "entry is in use",
                hint="raise --cache-size, free disk space, or read fewer files at once",
            )

    def evict(self, max_size: int | None = None, pinned: Collection[str] = ()) -> int:
        """Evict least recently used entries down to ``max_size`` (default: the limit).

        Returns the bytes freed.
        """
        with self._locked():
            db = self._db()
            target = self.max_size if max_size is None else max_size
            over = self._total(db) - target
            if over <= 0:
                return 0
            before = self._total(db)
            saved, self.max_size = self.max_size, target
            try:
                self._evict_locked(db, pinned, need=0)
            finally:
                self.max_size = saved
            return before - self._total(db)

    # -- recency ----------------------------------------------------------------------------

    def touch(self, name: str) -> None:
        """Note that ``name`` was used (cheap; written to the index by :meth:`flush_touched`)."""
        self._touched[name] = time.time()

    def flush_touched(self) -> None:
        """Write the recorded uses to the index (worker thread)."""
        with self._touched_lock:
            touched, self._touched = self._touched, {}
        if touched:
            self._db().executemany(
                "UPDATE entries SET last_used=? WHERE name=?",
                [(t, n) for n, t in touched.items()],
            )

    def stats(self) -> CacheStats:
        """Entries and bytes in the index, and the file system's free space."""
        db = self._db()
        entries, used = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries"
        ).fetchone()
        st = os.statvfs(self.root)
        return CacheStats(
            entries=int(entries),
            used=int(used),
            reserved=self._total(db) - int(used),
            max_size=self.max_size,
            free_bytes=st.f_bavail * st.f_frsize,
        )

    def close(self) -> None:
        """Flush recorded uses and close this thread's connection."""
        self.flush_touched()
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

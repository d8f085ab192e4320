"""A persistent cache of file hashes in SQLite, safe for many threads and processes.

Hashing a large tree twice is the main cost of snapshots and commits; this cache remembers
``xxh128`` of a file keyed by its resolved absolute path, **size in bytes and mtime in
nanoseconds**. A lookup only hits when all three match, so a file whose size or mtime
changed is never served its old hash.

This is stricter than deadline (reference/job-attachments.md §3.2, deadline
``caches/hash_cache.py::HashCache`` and ``upload.py::S3AssetManager._process_input_path``):
deadline reuses a hash when the stored ``str(datetime.fromtimestamp(st_mtime))`` — a
*local-time*, microsecond string — equals the current one and never checks the size, so a
rewrite to another length with the same mtime, or an mtime change below a microsecond, is
served the old hash there (and a time-zone change makes every entry miss). vfs keeps its
own file (``vfs_hash_cache.db``), so it never touches deadline's ``hash_cache.db`` (table
``hashesV4``) even in a shared directory.

What the key cannot see: a rewrite that keeps both the size and the nanosecond mtime (the
filesystem's timestamp granularity, or ``touch -d`` on purpose). :func:`hash_file_cached`
narrows that window like git's "racily clean" rule: a hash is not stored while the file's
mtime is less than :data:`RACY_WINDOW_NS` old, nor when the file changed while it was read.

Concurrency and robustness (shared with :mod:`vfs.storage.check_cache`, see
:class:`SqliteCache`):

* WAL journal (``PRAGMA journal_mode=WAL``): readers never block the writer nor each other,
  across processes; ``synchronous=NORMAL`` (a power cut may lose the last transactions, never
  corrupt the file — fine for a cache).
* A 30 s busy timeout and short transactions (one ``BEGIN IMMEDIATE … COMMIT`` per put or
  per batch), so concurrent processes wait for each other instead of failing.
* **One connection per thread**, picked by measurement (2-CPU machine, loaded, so noisy):
  160k single-row lookups in a 100k-row table from 4–16 threads took 0.9–1.4 s with
  per-thread connections and 1.25–2.0 s through one connection behind a lock; with one
  thread it is a wash, and single-row write transactions cost the same either way. WAL
  lets the per-thread readers run side by side. Batching matters more than either:
  :meth:`HashCache.get_many` looks up 100k rows in ~0.4 s and :meth:`HashCache.put_many`
  stores 100k in ~0.3 s, against ~35 µs per single :meth:`HashCache.put`. A connection
  belongs to the thread that opened it and is closed when that thread ends (weakly
  tracked) or at :meth:`SqliteCache.close`.
* A corrupt database (``SQLITE_CORRUPT``/``SQLITE_NOTADB`` on any access) is moved aside as
  ``{name}.corrupt-{UTC timestamp}`` (with its ``-wal``/``-shm``), an empty one is created
  and a warning is logged; the operation is then retried once. Recovery holds an ``flock``
  on ``{name}.lock`` so that concurrent processes replace the file only once.
* A database file deleted (or replaced by another process's recovery) while open is
  noticed within :attr:`SqliteCache.RECHECK_INTERVAL_S` (a ``stat`` of the path) and
  reopened, so no process keeps writing to a file nobody else reads.
* A process forked while holding connections (``multiprocessing`` with ``fork``) leaves
  them to its parent and opens its own in the child.
* Other SQLite failures (a lock held past the timeout, a full disk) make a lookup a miss and
  a put a no-op, with a warning: a cache must never fail the work it speeds up.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import logging
import os
import re
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import ClassVar, Self, TypeVar

from vfs.errors import VfsError
from vfs.hashing import HASH_ALG, hash_stream

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_S = 30.0
"""How long an operation waits for another connection's lock before giving up (seconds)."""

RACY_WINDOW_NS = 2_000_000_000
"""A file whose mtime is less than this old (ns) is hashed but its hash is not stored: a
write in the same timestamp tick could change it without changing size or mtime (2 s
covers the coarsest common granularity, FAT's)."""

BATCH_SIZE = 500
"""Rows per statement in batched lookups (well under SQLite's bound-parameter limit)."""

_CORRUPTION_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_HEX32 = re.compile(r"[0-9a-f]{32}")


class CacheError(VfsError):
    """A cache database cannot be used at all (its directory cannot be created or opened,
    or the cache was closed). ``path`` names the database file."""

    def __init__(self, message: str, *, path: str, hint: str | None = None) -> None:
        self.path = path
        super().__init__(message, hint=hint)


def is_corruption(error: sqlite3.Error) -> bool:
    """True when SQLite reports a damaged or foreign file (``SQLITE_CORRUPT``,
    ``SQLITE_NOTADB``, including their extended codes)."""
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _CORRUPTION_CODES


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), across processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path``, or ``None`` when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _is_missing_table(error: sqlite3.Error) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "no such table" in str(error)


class _Connection:
    """A thread's connection; closed when the owning thread's local storage goes away.

    ``identity`` is the database file's ``(st_dev, st_ino)`` seen just before opening and
    ``checked`` when it was last compared with the file now at the path (monotonic s).
    """

    __slots__ = ("__weakref__", "checked", "close", "conn", "generation", "identity")

    def __init__(
        self, conn: sqlite3.Connection, generation: int, identity: tuple[int, int] | None
    ) -> None:
        self.conn = conn
        self.generation = generation
        self.identity = identity
        self.checked = time.monotonic()
        self.close = weakref.finalize(self, conn.close)


_LIVE_CACHES: weakref.WeakSet[SqliteCache] = weakref.WeakSet()
_ABANDONED: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    """A forked child must not touch its parent's SQLite connections (its POSIX locks are
    not inherited, so using them can corrupt the database; closing them could checkpoint
    the WAL). Keep them referenced, never used or closed; the child opens its own."""
    for cache in list(_LIVE_CACHES):
        cache._forget_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SqliteCache:
    """Base of the SQLite caches: one database file, per-thread connections, WAL, busy
    timeout, short transactions and corruption recovery (see the module docstring).

    Subclasses set :attr:`FILE_NAME` and :attr:`SCHEMA` (statements run when the database is
    opened, which must be idempotent, e.g. ``CREATE TABLE IF NOT EXISTS``) and run their
    statements through :meth:`_read` and :meth:`_write`.

    Raises :class:`CacheError` when the directory cannot be created or the database cannot
    be opened even after recovery. Usable as a context manager (closes on exit).
    """

    FILE_NAME: ClassVar[str]
    SCHEMA: ClassVar[Sequence[str]]
    RECHECK_INTERVAL_S: float = 5.0
    """How often (seconds) a thread checks that the file at the path is still the one its
    connection has open; a deleted or replaced file is reopened within this time."""

    def __init__(self, cache_dir: str | os.PathLike[str], *, busy_timeout: float = BUSY_TIMEOUT_S):
        self.cache_dir = os.path.abspath(os.fspath(cache_dir))
        self.path = os.path.join(self.cache_dir, self.FILE_NAME)
        self._lock_path = self.path + ".lock"
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._generation = 0
        self._closed = False
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
        except OSError as e:
            raise CacheError(
                f"cannot create cache directory {self.cache_dir}: {e.strerror}",
                path=self.path,
                hint="choose a writable --cache-dir",
            ) from None
        with self._lock:
            self._setup(recover=False)
        _LIVE_CACHES.add(self)

    def _forget_connections(self) -> None:
        for holder in list(self._connections):
            holder.close.detach()
            _ABANDONED.append(holder.conn)
        self._connections = weakref.WeakSet()
        self._local = threading.local()
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection. The cache must no longer be used by any thread."""
        with self._lock:
            self._closed = True
            for holder in list(self._connections):
                holder.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- connections -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,  # closed from close() or a finalizer
        )
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _setup(
        self, *, recover: bool, suspect: tuple[int, int] | None = None, error: object = None
    ) -> None:
        """Open the file (under the recovery lock), check it, create the schema.

        With ``recover``, a corruption was seen: if the file at the path is still
        ``suspect`` (the ``(st_dev, st_ino)`` of the file it was seen in) it is moved aside;
        otherwise (unknown, or already replaced by another process) it is checked with
        ``quick_check`` and moved aside if damaged. Called with ``self._lock`` held.
        """
        try:
            os.makedirs(self.cache_dir, exist_ok=True)  # it may have been removed since
            with _file_lock(self._lock_path):
                if recover and suspect is not None and _identity(self.path) == suspect:
                    self._move_aside(error)
                    recover = False
                for attempt in range(2):
                    conn: sqlite3.Connection | None = None
                    try:
                        conn = self._connect()
                        if recover and attempt == 0:
                            rows = conn.execute("PRAGMA quick_check").fetchall()
                            if rows != [("ok",)]:
                                self._move_aside(f"quick_check: {rows[:3]}")
                                continue
                        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
                        if mode is None or str(mode[0]).lower() != "wal":
                            log.warning("%s: WAL journal not available (%s)", self.path, mode)
                        for statement in self.SCHEMA:
                            conn.execute(statement)
                        return
                    except sqlite3.Error as e:
                        if attempt or not is_corruption(e):
                            raise self._open_error(e) from None
                        self._move_aside(e)
                    finally:
                        if conn is not None:
                            conn.close()
        except OSError as e:
            raise CacheError(
                f"cannot lock cache {self._lock_path}: {e.strerror}", path=self.path
            ) from None

    def _open_error(self, e: sqlite3.Error) -> CacheError:
        return CacheError(
            f"cannot open cache database {self.path}: {e}",
            path=self.path,
            hint="check the permissions of the cache directory, or remove the file",
        )

    def _move_aside(self, error: object) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = f"{self.path}.corrupt-{stamp}"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path + suffix, aside + suffix)
        log.warning(
            "cache database %s is corrupt (%s); moved it to %s and started an empty one",
            self.path,
            error,
            aside,
        )

    def _connection(self) -> _Connection:
        if self._closed:
            raise CacheError(f"cache {self.path} is closed", path=self.path)
        holder: _Connection | None = getattr(self._local, "holder", None)
        if holder is not None and holder.generation == self._generation and holder.close.alive:
            now = time.monotonic()
            if now - holder.checked < self.RECHECK_INTERVAL_S:
                return holder
            holder.checked = now
            if _identity(self.path) == holder.identity:
                return holder
            self._reopen(holder.generation, "was replaced or removed")
        if holder is not None:
            holder.close()
        with self._lock:
            if self._closed:
                raise CacheError(f"cache {self.path} is closed", path=self.path)
            identity = _identity(self.path)  # before connecting: a race costs a reopen
            holder = _Connection(self._connect(), self._generation, identity)
            self._connections.add(holder)
        self._local.holder = holder
        return holder

    def _reopen(self, generation: int, why: str) -> None:
        """The file at the path is not the one open (deleted by a user, or replaced by
        another process's recovery): set it up again and make every thread reconnect."""
        with self._lock:
            if generation != self._generation:
                return  # another thread already did
            log.info("cache database %s %s; reopening it", self.path, why)
            self._setup(recover=False)
            self._generation += 1

    def _recover(
        self, generation: int, error: sqlite3.Error, suspect: tuple[int, int] | None
    ) -> None:
        with self._lock:
            if generation != self._generation:
                return  # another thread already recovered
            log.debug("%s: %s; recovering", self.path, error)
            self._setup(recover=True, suspect=suspect, error=error)
            self._generation += 1

    def _run(self, op: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``op`` on this thread's connection (in a write transaction when ``write``),
        recovering from corruption once. Raises ``sqlite3.Error`` otherwise."""
        for attempt in range(2):
            generation = self._generation
            suspect: tuple[int, int] | None = None  # the file the connection has open
            try:
                holder = self._connection()
                suspect, conn = holder.identity, holder.conn
                if not write:
                    return op(conn)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = op(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.DatabaseError as e:
                if attempt:
                    raise
                if is_corruption(e):
                    self._recover(generation, e, suspect)
                elif _is_missing_table(e):
                    self._reopen(generation, f"has no table ({e})")
                else:
                    raise
        raise AssertionError("unreachable")

    def _read(self, op: Callable[[sqlite3.Connection], T], default: T) -> T:
        """``op`` outside a transaction; ``default`` (with a warning) when SQLite or a
        recovery fails. Raises :class:`CacheError` only when the cache is closed."""
        try:
            return self._run(op, write=False)
        except (sqlite3.Error, CacheError) as e:
            if self._closed:
                raise
            log.warning("cache %s: lookup failed, treated as a miss: %s", self.path, e)
            return default

    def _write(self, op: Callable[[sqlite3.Connection], object]) -> bool:
        """``op`` in one short write transaction; ``False`` (with a warning) when SQLite or a
        recovery fails, in which case nothing was written. Raises :class:`CacheError` only
        when the cache is closed."""
        try:
            self._run(op, write=True)
        except (sqlite3.Error, CacheError) as e:
            if self._closed:
                raise
            log.warning("cache %s: update dropped: %s", self.path, e)
            return False
        return True


HashCacheEntry = tuple[str | os.PathLike[str], int, int, str]
"""``(absolute path, size in bytes, mtime in ns, hash)`` for :meth:`HashCache.put_many`."""


def _path_key(path: str | os.PathLike[str]) -> bytes:
    """The stored form of a path: its file-system bytes (``os.fsencode``), which keeps any
    name (including undecodable ones) exact. Raises ``ValueError`` for a relative path."""
    raw = os.fsencode(path)
    if not raw.startswith(b"/"):
        raise ValueError(f"hash cache paths must be absolute: {os.fsdecode(raw)!r}")
    return raw


class HashCache(SqliteCache):
    """File hashes keyed by ``(absolute path, size, mtime_ns, hash algorithm)``.

    ``HashCache(cache_dir)`` opens (creating if needed) ``{cache_dir}/vfs_hash_cache.db``.
    Paths must be absolute; use the resolved path (``os.path.realpath``) so that a symlink
    re-pointed at another file of the same size and mtime cannot be confused with it
    (:func:`hash_file_cached` does). One row is kept per path and algorithm: a put for a
    new size/mtime replaces the old row.

    Thread-safe; safe across processes. Raises :class:`CacheError` when the database
    cannot be opened at all; later SQLite failures degrade to misses (see module docs).
    """

    FILE_NAME = "vfs_hash_cache.db"
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS file_hashes_v1("
        "path BLOB NOT NULL, hash_alg TEXT NOT NULL, size INTEGER NOT NULL, "
        "mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL, "
        "PRIMARY KEY (path, hash_alg)) WITHOUT ROWID",
    )

    def get(
        self,
        path: str | os.PathLike[str],
        size: int,
        mtime_ns: int,
        hash_alg: str = HASH_ALG,
    ) -> str | None:
        """The cached hash of ``path`` (absolute) if it was stored for exactly this ``size``
        (bytes) and ``mtime_ns`` (ns since the epoch, ``st_mtime_ns``), else ``None``."""
        key = _path_key(path)

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT hash FROM file_hashes_v1 "
                "WHERE path=? AND hash_alg=? AND size=? AND mtime_ns=?",
                (key, hash_alg, size, mtime_ns),
            ).fetchone()
            return _valid_hash(row[0]) if row else None

        return self._read(op, None)

    def get_many(
        self, files: Iterable[tuple[str | os.PathLike[str], int, int]], hash_alg: str = HASH_ALG
    ) -> dict[str, str]:
        """Batched :meth:`get`: ``{path: hash}`` for each ``(path, size, mtime_ns)`` that
        hits (paths as given, converted with ``os.fspath``); misses are left out."""
        wanted: dict[bytes, tuple[str, int, int]] = {}
        for path, size, mtime_ns in files:
            wanted[_path_key(path)] = (os.fspath(path), size, mtime_ns)
        keys = list(wanted)

        def op(conn: sqlite3.Connection) -> dict[str, str]:
            found: dict[str, str] = {}
            for start in range(0, len(keys), BATCH_SIZE):
                chunk = keys[start : start + BATCH_SIZE]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT path, size, mtime_ns, hash FROM file_hashes_v1 "
                    f"WHERE hash_alg=? AND path IN ({marks})",
                    (hash_alg, *chunk),
                )
                for key, size, mtime_ns, hash_ in rows:
                    name, want_size, want_mtime = wanted[bytes(key)]
                    valid = _valid_hash(hash_)
                    if valid and size == want_size and mtime_ns == want_mtime:
                        found[name] = valid
            return found

        return self._read(op, {})

    def put(
        self,
        path: str | os.PathLike[str],
        size: int,
        mtime_ns: int,
        hash_: str,
        hash_alg: str = HASH_ALG,
    ) -> None:
        """Remember that ``path`` (absolute) with ``size`` bytes and ``mtime_ns`` hashes to
        ``hash_`` (replacing what was stored for the path). Raises ``ValueError`` for a
        relative path; a SQLite failure only logs a warning."""
        self.put_many([(path, size, mtime_ns, hash_)], hash_alg)

    def put_many(self, entries: Iterable[HashCacheEntry], hash_alg: str = HASH_ALG) -> None:
        """Store many ``(path, size, mtime_ns, hash)`` entries in one transaction."""
        rows = [(_path_key(p), hash_alg, s, m, h) for p, s, m, h in entries]
        if not rows:
            return
        self._write(
            lambda conn: conn.executemany(
                "INSERT OR REPLACE INTO file_hashes_v1(path, hash_alg, size, mtime_ns, hash) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        )

    def remove(self, path: str | os.PathLike[str], hash_alg: str = HASH_ALG) -> None:
        """Forget the hash of ``path``."""
        key = _path_key(path)
        self._write(
            lambda conn: conn.execute(
                "DELETE FROM file_hashes_v1 WHERE path=? AND hash_alg=?", (key, hash_alg)
            )
        )

    def __len__(self) -> int:
        """Number of stored hashes (0 when the database cannot be read)."""
        return self._read(
            lambda conn: int(conn.execute("SELECT count(*) FROM file_hashes_v1").fetchone()[0]),
            0,
        )


def _valid_hash(value: object) -> str | None:
    """``value`` if it looks like an xxh128 hex digest (guards against a damaged row)."""
    return value if isinstance(value, str) and _HEX32.fullmatch(value) else None


def hash_file_cached(
    cache: HashCache | None,
    path: str | os.PathLike[str],
    *,
    now_ns: Callable[[], int] = time.time_ns,
) -> tuple[str, int, int]:
    """Hash the regular file at ``path`` (symlinks followed), using and filling ``cache``.

    Returns ``(xxh128 hex, size in bytes, mtime in ns)`` describing the content that was
    hashed. The cache key is the resolved absolute path (``os.path.realpath``, as deadline's
    ``Path.resolve()``) with the size and ``st_mtime_ns``. On a miss the file is read once;
    the hash is stored only if the size and mtime were the same before and after the read
    and the mtime is at least :data:`RACY_WINDOW_NS` older than ``now_ns()``. A file that
    keeps changing while read is re-read up to 3 times, then its last hash is returned
    without being stored. ``cache=None`` just hashes.

    Raises ``OSError`` when the file cannot be read, ``IsADirectoryError`` for a directory
    and ``ValueError`` for another non-regular file.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", real)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{real} is not a regular file")  # a FIFO would block on open
    if cache is not None:
        cached = cache.get(real, st.st_size, st.st_mtime_ns)
        if cached is not None:
            return cached, st.st_size, st.st_mtime_ns
    for _attempt in range(3):
        with open(real, "rb", buffering=0) as f:
            before = os.fstat(f.fileno())
            digest, nbytes = hash_stream(f)
            after = os.fstat(f.fileno())
        stable = (
            nbytes == before.st_size == after.st_size and before.st_mtime_ns == after.st_mtime_ns
        )
        if stable:
            if cache is not None and after.st_mtime_ns <= now_ns() - RACY_WINDOW_NS:
                cache.put(real, nbytes, after.st_mtime_ns, digest)
            return digest, nbytes, after.st_mtime_ns
        log.debug("%s changed while it was hashed; reading it again", real)
    return digest, nbytes, after.st_mtime_ns

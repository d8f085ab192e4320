"""The SQLite base of every cache database of vfs: hash cache, S3 check cache, block cache index.

Each database is one file used by many threads and processes at once; none of them may ever
fail the work it speeds up. :class:`SqliteCache` gives them:

* WAL journal (``PRAGMA journal_mode=WAL``): readers never block the writer nor each other,
  across processes; ``synchronous=NORMAL`` (a power cut may lose the last transactions, never
  corrupt the file — fine for a cache).
* A bounded busy timeout (30 s by default, chosen per database) and short transactions (one
  ``BEGIN IMMEDIATE … COMMIT`` per put or per batch), so concurrent processes wait for each
  other instead of failing, and never wait without end.
* **One connection per thread**, picked by measurement (2-CPU machine, loaded, so noisy):
  160k single-row lookups in a 100k-row table from 4–16 threads took 0.9–1.4 s with
  per-thread connections and 1.25–2.0 s through one connection behind a lock; with one
  thread it is a wash, and single-row write transactions cost the same either way. WAL
  lets the per-thread readers run side by side. Batching matters more than either (the hash
  cache looks up 100k rows in ~0.4 s batched, against ~35 µs per single put). A connection
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
  a put a no-op, with one warning per run of failures: a cache must never fail the work it
  speeds up.
* The database, its lock and its journal files are created owner-only (0600): what a node
  has cached or hashed is nobody else's business.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar, Self, TypeVar

from vfs.errors import VfsError

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_S = 30.0
"""How long an operation waits for another connection's lock before giving up (seconds)."""

BATCH_SIZE = 500
"""Rows per statement in batched lookups (well under SQLite's bound-parameter limit)."""

_CORRUPTION_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


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
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
        self._failing = False
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
        # SQLite creates the file with the umask's mode and gives its -wal/-shm files the
        # same mode: create it owner-only first.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
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
            self._degraded("lookup failed, treated as a miss", e)
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
            self._degraded("update dropped", e)
            return False
        self._failing = False
        return True

    def _degraded(self, what: str, error: BaseException) -> None:
        """Log a failure that the cache absorbs: a warning for the first of a run of
        failures, debug lines for the rest until an update succeeds again."""
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(level, "cache %s: %s: %s", self.path, what, error)

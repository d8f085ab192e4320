"""The S3 check cache: which CAS objects are known to exist, so uploads can skip the HEAD.

Format facts (reference/job-attachments.md §3.3, deadline ``caches/s3_check_cache.py::
S3CheckCache`` and ``upload.py::S3AssetUploader.verify_hash_cache_integrity``):

* an entry is keyed ``"{bucket}/{full object key}"``, e.g.
  ``ja-bucket/DeadlineCloud/Data/<hash>.xxh128`` (:func:`check_cache_key`), and records when
  the object was last seen (seconds since the epoch);
* an entry counts only while it is younger than ``ENTRY_EXPIRY_DAYS = 30`` days;
* before an upload deadline shuffles the manifest's CAS keys, takes up to **30** that the
  cache holds, HEADs each and throws the whole cache away if any is missing or the HEAD
  fails (:func:`verify_check_cache_integrity`, :func:`reset_check_cache_if_stale`).

Differences, on purpose: vfs keeps its own file (``vfs_s3_check_cache.db``), never
deadline's ``s3_check_cache.db`` (table ``s3checkV1``); the age is computed on epoch
seconds, not on naive local ``datetime`` values (which shift by an hour across DST
changes); and a reset deletes the rows instead of the file, which is equivalent and safe
while other processes have the database open. Concurrency, WAL and corruption handling are
those of :class:`vfs.sqlitedb.SqliteCache`.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable

from vfs.errors import StoreError
from vfs.sqlitedb import BATCH_SIZE, BUSY_TIMEOUT_S, SqliteCache
from vfs.storage.base import ObjectStore

log = logging.getLogger(__name__)

ENTRY_EXPIRY_DAYS = 30
"""Entries older than this many days are ignored (deadline ``S3CheckCache.ENTRY_EXPIRY_DAYS``)."""

INTEGRITY_SAMPLE_SIZE = 30
"""Cached keys HEADed before an upload (deadline ``verify_hash_cache_integrity``)."""


def check_cache_key(store: ObjectStore, key: str) -> str:
    """The cache key of object ``key`` (relative to the store root).

    For an :class:`S3Store` this is deadline's ``"{bucket}/{full object key}"``; for any other
    store, its full location (``store.describe(key)``), which is unique just the same.
    """
    # An S3Store exists only once its module (and boto3) is imported; never import it here.
    s3 = sys.modules.get("vfs.storage.s3")
    if s3 is not None and isinstance(store, s3.S3Store):
        return f"{store.bucket}/{store.full_key(key)}"
    return store.describe(key)


class S3CheckCache(SqliteCache):
    """Remembers that objects exist, for :data:`ENTRY_EXPIRY_DAYS` days.

    ``S3CheckCache(cache_dir)`` opens (creating if needed) ``{cache_dir}/vfs_s3_check_cache.db``.
    Keys are strings from :func:`check_cache_key`. ``clock`` returns the current time in
    seconds since the epoch (injectable for tests); ``expiry_days`` the lifetime of an entry.

    Thread-safe; safe across processes. Raises :class:`vfs.sqlitedb.CacheError` when the
    database cannot be opened at all; later SQLite failures degrade to misses.
    """

    FILE_NAME = "vfs_s3_check_cache.db"
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS s3_check_v1("
        "key TEXT PRIMARY KEY NOT NULL, last_seen REAL NOT NULL) WITHOUT ROWID",
    )

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        *,
        expiry_days: float = ENTRY_EXPIRY_DAYS,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = BUSY_TIMEOUT_S,
    ) -> None:
        self.expiry_seconds = expiry_days * 86400
        self.clock = clock
        super().__init__(cache_dir, busy_timeout=busy_timeout)

    def _fresh(self, last_seen: float, now: float) -> bool:
        # deadline: (datetime.now() - datetime.fromtimestamp(last_seen)).days < 30, which is
        # "younger than 30 whole days" and also accepts entries from the future.
        return now - last_seen < self.expiry_seconds

    def last_seen(self, key: str) -> float | None:
        """When ``key`` was last seen (epoch seconds), or ``None`` if unknown or expired."""

        def op(conn: sqlite3.Connection) -> float | None:
            row = conn.execute("SELECT last_seen FROM s3_check_v1 WHERE key=?", (key,)).fetchone()
            return float(row[0]) if row and self._fresh(float(row[0]), self.clock()) else None

        return self._read(op, None)

    def contains(self, key: str) -> bool:
        """True when ``key`` is known to exist and the entry has not expired."""
        return self.last_seen(key) is not None

    def fresh_keys(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` with an unexpired entry (batched lookups)."""
        wanted = list(dict.fromkeys(keys))

        def op(conn: sqlite3.Connection) -> set[str]:
            now = self.clock()
            found: set[str] = set()
            for start in range(0, len(wanted), BATCH_SIZE):
                chunk = wanted[start : start + BATCH_SIZE]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, last_seen FROM s3_check_v1 WHERE key IN ({marks})", chunk
                )
                found.update(k for k, seen in rows if self._fresh(float(seen), now))
            return found

        return self._read(op, set())

    def put(self, key: str) -> None:
        """Record that ``key`` exists, as of now."""
        self.put_many([key])

    def put_many(self, keys: Iterable[str]) -> None:
        """Record that all ``keys`` exist, as of now, in one transaction."""
        now = self.clock()
        rows = [(k, now) for k in keys]
        if rows:
            self._write(
                lambda conn: conn.executemany(
                    "INSERT OR REPLACE INTO s3_check_v1(key, last_seen) VALUES (?, ?)", rows
                )
            )

    def remove(self, key: str) -> None:
        """Forget ``key`` (e.g. after a GET found it missing)."""
        self._write(lambda conn: conn.execute("DELETE FROM s3_check_v1 WHERE key=?", (key,)))

    def reset(self) -> None:
        """Forget every entry (deadline ``reset_s3_check_cache`` deletes the file instead)."""
        self._write(lambda conn: conn.execute("DELETE FROM s3_check_v1"))

    def __len__(self) -> int:
        """Number of entries, expired ones included."""
        return self._read(
            lambda conn: int(conn.execute("SELECT count(*) FROM s3_check_v1").fetchone()[0]), 0
        )


def verify_check_cache_integrity(
    cache: S3CheckCache,
    store: ObjectStore,
    keys: Iterable[str],
    *,
    sample_size: int = INTEGRITY_SAMPLE_SIZE,
    rng: random.Random | None = None,
) -> bool:
    """Check a random sample of the cached ``keys`` against the store.

    ``keys`` are object keys relative to the store root (e.g. ``data_key(h)`` for every
    entry of a manifest). As deadline's ``verify_hash_cache_integrity``: the keys are
    shuffled, the first ``sample_size`` that the cache holds are HEADed, and the result is
    ``False`` as soon as one is missing or its HEAD fails (logged), else ``True`` (also when
    none is cached). Never raises for store errors.
    """
    shuffled = list(dict.fromkeys(keys))
    (rng or random.Random()).shuffle(shuffled)
    sample: list[str] = []
    for start in range(0, len(shuffled), BATCH_SIZE):
        chunk = shuffled[start : start + BATCH_SIZE]
        by_cache_key = {check_cache_key(store, k): k for k in chunk}
        fresh = cache.fresh_keys(by_cache_key)
        sample.extend(by_cache_key[c] for c in by_cache_key if c in fresh)
        if len(sample) >= sample_size:
            break
    for key in sample[:sample_size]:
        try:
            if store.head(key) is None:
                log.info("S3 check cache: %s is cached but missing", store.describe(key))
                return False
        except StoreError as e:
            log.warning("S3 check cache: cannot check %s: %s", store.describe(key), e)
            return False
    return True


def reset_check_cache_if_stale(
    cache: S3CheckCache,
    store: ObjectStore,
    keys: Iterable[str],
    *,
    sample_size: int = INTEGRITY_SAMPLE_SIZE,
    rng: random.Random | None = None,
) -> bool:
    """:func:`verify_check_cache_integrity`, then :meth:`S3CheckCache.reset` if it failed.

    Returns ``True`` when the cache was kept, ``False`` when it was reset (logged).
    """
    if verify_check_cache_integrity(cache, store, keys, sample_size=sample_size, rng=rng):
        return True
    log.warning(
        "S3 check cache %s lists objects missing from %s; resetting it", cache.path, store.uri
    )
    cache.reset()
    return False

"""The SQLite index of the block cache, shared by every process using the cache directory.

Tables (one database, ``index.sqlite``, on :class:`vfs.sqlitedb.SqliteCache`):

* ``entries(name, size, last_used)`` — one row per cache file (its path relative to the
  cache root, its size in bytes, when it was last used in epoch seconds): the LRU order.
* ``totals(used)`` — the sum of ``entries.size``, kept exact by triggers, so the size of the
  cache is one row read.
* ``reservations(owner, pid, started, bytes)`` — space promised to downloads under way, one
  row per process (``owner`` is ``"{pid}-{start time}"``; ``started`` the process start time
  in clock ticks from ``/proc/PID/stat``). A row whose process is gone (or whose pid was
  reused by another process) is dead and ignored; only the evicting side deletes it. So
  one process starting never touches another's live reservations.
* ``verified(hash, size, block_size, sums)`` — large objects whose whole-object hash was
  checked, with the checksum of each block (8 bytes each, little endian) that made up the
  verified content: every process trusts them without hashing again, and a block fetched or
  loaded later must have the same checksum.

Every method raises ``sqlite3.Error`` on failure (busy past the timeout, disk full), except
:meth:`CacheIndex.touch_many` which degrades to a logged no-op; callers decide what a failure
means for them (the fetcher serves from memory and does not cache).
"""

from __future__ import annotations

import os
import sqlite3
import struct
import time
from collections.abc import Iterable, Sequence

from vfs.sqlitedb import SqliteCache

INDEX_BUSY_TIMEOUT_S = 5.0
"""How long an index operation waits for another process's write lock (seconds)."""


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22),
    or ``None`` when there is no such process (or it is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def owner_id() -> tuple[str, int, int]:
    """This process's reservation owner: ``(owner, pid, start time)``."""
    pid = os.getpid()
    started = process_start(pid) or 0
    return f"{pid}-{started}", pid, started


def pack_sums(sums: Sequence[int]) -> bytes:
    """Block checksums as stored in ``verified.sums``."""
    return struct.pack(f"<{len(sums)}Q", *sums)


def unpack_sums(raw: bytes) -> tuple[int, ...]:
    """Inverse of :func:`pack_sums`."""
    return struct.unpack(f"<{len(raw) // 8}Q", raw)


class CacheIndex(SqliteCache):
    """The index database of a block cache directory (see the module docstring)."""

    FILE_NAME = "index.sqlite"
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS entries("
        "name TEXT PRIMARY KEY, size INTEGER NOT NULL, last_used REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_used)",
        "CREATE TABLE IF NOT EXISTS totals(id INTEGER PRIMARY KEY CHECK (id = 0), "
        "used INTEGER NOT NULL)",
        "INSERT OR IGNORE INTO totals(id, used) SELECT 0, COALESCE(SUM(size), 0) FROM entries",
        "CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries "
        "BEGIN UPDATE totals SET used = used + NEW.size WHERE id = 0; END",
        "CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries "
        "BEGIN UPDATE totals SET used = used - OLD.size WHERE id = 0; END",
        "CREATE TRIGGER IF NOT EXISTS entries_resized AFTER UPDATE OF size ON entries "
        "BEGIN UPDATE totals SET used = used + NEW.size - OLD.size WHERE id = 0; END",
        "CREATE TABLE IF NOT EXISTS reservations("
        "owner TEXT PRIMARY KEY, pid INTEGER NOT NULL, started INTEGER NOT NULL, "
        "bytes INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS verified("
        "hash TEXT PRIMARY KEY, size INTEGER NOT NULL, block_size INTEGER NOT NULL, "
        "sums BLOB NOT NULL, at REAL NOT NULL) WITHOUT ROWID",
        "DROP TABLE IF EXISTS meta",  # the total of an older layout, which included reservations
    )

    def __init__(self, cache_dir: str, *, busy_timeout: float = INDEX_BUSY_TIMEOUT_S) -> None:
        super().__init__(cache_dir, busy_timeout=busy_timeout)
        self.owner, self.pid, self.started = owner_id()

    # -- reading ----------------------------------------------------------------------------

    def used(self) -> int:
        """Bytes of the indexed entries."""
        return self._run(
            lambda c: int(c.execute("SELECT used FROM totals").fetchone()[0]), write=False
        )

    def live_reservations(self, db: sqlite3.Connection | None = None) -> tuple[int, list[str]]:
        """``(bytes reserved by live processes, owners of dead reservations)``."""

        def op(conn: sqlite3.Connection) -> tuple[int, list[str]]:
            live, dead = 0, []
            for owner, pid, started, nbytes in conn.execute(
                "SELECT owner, pid, started, bytes FROM reservations"
            ):
                if process_start(int(pid)) == int(started):
                    live += int(nbytes)
                else:
                    dead.append(str(owner))
            return live, dead

        return op(db) if db is not None else self._run(op, write=False)

    def usage(self) -> tuple[int, int, int, int]:
        """``(entries, bytes used, bytes reserved by live processes, verified objects)``,
        read in one transaction (one consistent snapshot: a commit that turns a reservation
        into an entry is seen whole or not at all)."""

        def op(conn: sqlite3.Connection) -> tuple[int, int, int, int]:
            conn.execute("BEGIN")
            try:
                entries = int(conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
                used = int(conn.execute("SELECT used FROM totals").fetchone()[0])
                verified = int(conn.execute("SELECT COUNT(*) FROM verified").fetchone()[0])
                live, _dead = self.live_reservations(conn)
            finally:
                conn.execute("COMMIT")
            return entries, used, live, verified

        return self._run(op, write=False)

    def all_entries(self) -> dict[str, tuple[int, float]]:
        """``{name: (size, last_used)}`` of every entry."""
        return self._run(
            lambda c: {n: (int(s), float(t)) for n, s, t in c.execute("SELECT * FROM entries")},
            write=False,
        )

    def verified_sums(self, hash_: str, size: int, block_size: int) -> tuple[int, ...] | None:
        """The block checksums recorded when object ``hash_`` (``size`` bytes, cut into
        ``block_size`` blocks) was verified, or ``None`` when it was not."""

        def op(conn: sqlite3.Connection) -> tuple[int, ...] | None:
            row = conn.execute(
                "SELECT sums FROM verified WHERE hash=? AND size=? AND block_size=?",
                (hash_, size, block_size),
            ).fetchone()
            return unpack_sums(row[0]) if row else None

        return self._run(op, write=False)

    # -- writing ----------------------------------------------------------------------------

    def reserve(self, nbytes: int, victims: Iterable[str], dead: Sequence[str]) -> None:
        """In one transaction: drop the index rows of ``victims`` (entries being evicted),
        forget the reservations of ``dead`` owners, and add ``nbytes`` to this process's
        reservation."""
        rows = [(n,) for n in victims]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM entries WHERE name=?", rows)
            conn.executemany("DELETE FROM reservations WHERE owner=?", [(o,) for o in dead])
            self._add_reservation(conn, nbytes)

        self._run(op, write=True)

    def _add_reservation(self, conn: sqlite3.Connection, nbytes: int) -> None:
        conn.execute(
            "INSERT INTO reservations(owner, pid, started, bytes) VALUES(?, ?, ?, ?) "
            "ON CONFLICT(owner) DO UPDATE SET bytes = MAX(0, bytes + excluded.bytes)",
            (self.owner, self.pid, self.started, nbytes),
        )

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` of this process's reservation."""
        self._run(lambda conn: self._add_reservation(conn, -nbytes), write=True)

    def commit(self, name: str, size: int, reserved: int) -> None:
        """Index entry ``name`` of ``size`` bytes (used now), turning ``reserved`` bytes of
        this process's reservation into it."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO entries(name, size, last_used) VALUES(?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET size=excluded.size, last_used=excluded.last_used",
                (name, size, time.time()),
            )
            self._add_reservation(conn, -reserved)

        self._run(op, write=True)

    def remove(self, names: Iterable[str]) -> None:
        """Drop the rows of ``names``."""
        rows = [(n,) for n in names]
        self._run(
            lambda conn: conn.executemany("DELETE FROM entries WHERE name=?", rows), write=True
        )

    def lru(self, limit: int, offset: int) -> list[tuple[str, int]]:
        """``(name, size)`` of entries, least recently used first."""
        return self._run(
            lambda c: [
                (str(n), int(s))
                for n, s in c.execute(
                    "SELECT name, size FROM entries ORDER BY last_used LIMIT ? OFFSET ?",
                    (limit, offset),
                )
            ],
            write=False,
        )

    def apply_scan(self, drop: Iterable[str], add: Iterable[tuple[str, int, float]]) -> None:
        """Reconciliation: drop rows without files, add (or resize) rows of files."""
        gone = [(n,) for n in drop]
        fresh = list(add)

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM entries WHERE name=?", gone)
            conn.executemany(
                "INSERT INTO entries(name, size, last_used) VALUES(?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET size=excluded.size",
                fresh,
            )

        self._run(op, write=True)

    def record_verified(self, hash_: str, size: int, block_size: int, sums: Sequence[int]) -> None:
        """Record that object ``hash_`` was verified with these block checksums."""
        self._run(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO verified(hash, size, block_size, sums, at) "
                "VALUES(?, ?, ?, ?, ?)",
                (hash_, size, block_size, pack_sums(sums), time.time()),
            ),
            write=True,
        )

    def forget_verified(self, hash_: str) -> None:
        """Drop the verified record of ``hash_``."""
        self._run(lambda c: c.execute("DELETE FROM verified WHERE hash=?", (hash_,)), write=True)

    def touch_many(self, used: Iterable[tuple[str, float]]) -> bool:
        """Record uses ``(name, when)`` for the LRU order; ``False`` (logged) on failure."""
        rows = [(t, n) for n, t in used]
        return self._write(
            lambda conn: conn.executemany("UPDATE entries SET last_used=? WHERE name=?", rows)
        )

"""The SQLite hash cache: stale-hash protection, concurrency (threads and processes), WAL,
corruption recovery, and coexistence with deadline's own hash cache file.

Everything runs on real files and real SQLite databases in ``tmp_path``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vfs.hash_cache import (
    RACY_WINDOW_NS,
    CacheError,
    HashCache,
    hash_file_cached,
)
from vfs.hashing import hash_bytes, hash_file

OLD_NS = 1_600_000_000_123_456_789  # a fixed mtime well outside the racy window
FAKE = "0123456789abcdef0123456789abcdef"


def write(path: Path, data: bytes, mtime_ns: int = OLD_NS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture()
def cache(tmp_path: Path):  # type: ignore[no-untyped-def]
    with HashCache(tmp_path / "cache") as c:
        yield c


def test_put_get_exact_key(cache: HashCache) -> None:
    cache.put("/data/a", 10, OLD_NS, FAKE)
    assert cache.get("/data/a", 10, OLD_NS) == FAKE
    assert cache.get("/data/a", 11, OLD_NS) is None  # size differs
    assert cache.get("/data/a", 10, OLD_NS + 1) is None  # 1 ns later
    assert cache.get("/data/b", 10, OLD_NS) is None
    cache.put("/data/a", 11, OLD_NS + 1, "f" * 32)  # replaces the row of the path
    assert cache.get("/data/a", 10, OLD_NS) is None
    assert cache.get("/data/a", 11, OLD_NS + 1) == "f" * 32
    assert len(cache) == 1
    cache.remove("/data/a")
    assert len(cache) == 0
    with pytest.raises(ValueError, match="absolute"):
        cache.get("relative/path", 1, 1)


def test_get_many_and_put_many(cache: HashCache) -> None:
    entries = [(f"/d/{i}", i, OLD_NS + i, f"{i:032x}") for i in range(1200)]  # > 2 batches
    cache.put_many(entries)
    query = [(p, s, m) for p, s, m, _ in entries] + [("/d/missing", 0, 0)]
    query[5] = ("/d/5", 5, OLD_NS)  # wrong mtime: a miss
    found = cache.get_many(query)
    assert len(found) == 1199
    assert "/d/5" not in found
    assert found["/d/7"] == f"{7:032x}"


def test_undecodable_file_names_are_kept_exact(tmp_path: Path, cache: HashCache) -> None:
    name = os.fsdecode(b"caf\xe9-not-utf8.bin")  # a lone surrogate via surrogateescape
    p = write(tmp_path / name, b"latin-1 name")
    assert hash_file_cached(cache, p)[0] == hash_bytes(b"latin-1 name")
    assert cache.get(str(p), 12, OLD_NS) == hash_bytes(b"latin-1 name")


def test_hash_file_cached_hits_and_misses(tmp_path: Path, cache: HashCache) -> None:
    p = write(tmp_path / "f.bin", b"x" * 100_000)
    digest, size, mtime_ns = hash_file_cached(cache, p)
    assert (digest, size, mtime_ns) == (hash_file(p), 100_000, OLD_NS)
    assert cache.get(str(p), size, mtime_ns) == digest
    # Prove the second call is served by the cache: plant a different hash for the same key.
    cache.put(str(p), size, mtime_ns, FAKE)
    assert hash_file_cached(cache, p) == (FAKE, size, mtime_ns)
    assert hash_file_cached(None, p) == (digest, size, mtime_ns)  # no cache: hashes


def test_no_stale_hash_when_mtime_changes_and_size_does_not(
    tmp_path: Path, cache: HashCache
) -> None:
    p = write(tmp_path / "f.txt", b"version 1")
    first = hash_file_cached(cache, p)[0]
    write(p, b"version 2", OLD_NS + 1)  # same size, mtime 1 ns later
    digest, size, mtime_ns = hash_file_cached(cache, p)
    assert digest == hash_bytes(b"version 2") != first
    assert (size, mtime_ns) == (9, OLD_NS + 1)


def test_no_stale_hash_when_size_changes_and_mtime_does_not(
    tmp_path: Path, cache: HashCache
) -> None:
    p = write(tmp_path / "f.txt", b"short")
    hash_file_cached(cache, p)
    write(p, b"much longer content", OLD_NS)  # mtime restored exactly (ns)
    assert hash_file_cached(cache, p) == (hash_bytes(b"much longer content"), 19, OLD_NS)


def test_symlink_is_keyed_by_its_target(tmp_path: Path, cache: HashCache) -> None:
    a = write(tmp_path / "a.txt", b"AAAA")
    b = write(tmp_path / "b.txt", b"BBBB")  # same size and mtime as a
    link = tmp_path / "link"
    link.symlink_to(a)
    assert hash_file_cached(cache, link)[0] == hash_bytes(b"AAAA")
    link.unlink()
    link.symlink_to(b)
    assert hash_file_cached(cache, link)[0] == hash_bytes(b"BBBB")
    assert cache.get(str(a), 4, OLD_NS) == hash_bytes(b"AAAA")  # stored under the target


def test_racily_fresh_file_is_hashed_but_not_stored(tmp_path: Path, cache: HashCache) -> None:
    p = tmp_path / "new.txt"
    p.write_bytes(b"just written")  # mtime = now
    st = p.stat()
    assert hash_file_cached(cache, p)[0] == hash_bytes(b"just written")
    assert cache.get(str(p), st.st_size, st.st_mtime_ns) is None
    later = st.st_mtime_ns + RACY_WINDOW_NS
    hash_file_cached(cache, p, now_ns=lambda: later)
    assert cache.get(str(p), st.st_size, st.st_mtime_ns) == hash_bytes(b"just written")


def test_non_regular_files_are_refused(tmp_path: Path, cache: HashCache) -> None:
    with pytest.raises(IsADirectoryError):
        hash_file_cached(cache, tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        hash_file_cached(cache, fifo)  # and does not block opening it
    with pytest.raises(FileNotFoundError):
        hash_file_cached(cache, tmp_path / "missing")


def test_uses_wal_and_its_own_file(tmp_path: Path, cache: HashCache) -> None:
    cache.put("/x", 1, 1, FAKE)
    assert Path(cache.path).name == "vfs_hash_cache.db"
    assert os.path.exists(cache.path + "-wal")  # the writer appends to the WAL
    conn = sqlite3.connect(cache.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_coexists_with_deadlines_hash_cache(tmp_path: Path) -> None:
    """Same directory as deadline's hash_cache.db: separate files, neither disturbs the other."""
    from deadline.job_attachments.asset_manifests.hash_algorithms import HashAlgorithm
    from deadline.job_attachments.caches.hash_cache import HashCache as DeadlineHashCache
    from deadline.job_attachments.caches.hash_cache import HashCacheEntry

    shared = tmp_path / "shared"
    with DeadlineHashCache(str(shared)) as theirs:
        theirs.put_entry(HashCacheEntry("/p", HashAlgorithm.XXH128, FAKE, "2020-01-01 00:00:00"))
    with HashCache(shared) as ours:
        ours.put("/p", 1, 2, "e" * 32)
        assert ours.get("/p", 1, 2) == "e" * 32
    with DeadlineHashCache(str(shared)) as theirs:
        entry = theirs.get_entry("/p", HashAlgorithm.XXH128)
        assert entry is not None and entry.file_hash == FAKE
    assert sorted(p.name for p in shared.glob("*.db")) == ["hash_cache.db", "vfs_hash_cache.db"]


def test_threads_share_one_cache(tmp_path: Path, cache: HashCache) -> None:
    files = [write(tmp_path / "t" / f"{i}.bin", os.urandom(i * 37)) for i in range(200)]
    expected = {str(f): hash_file(f) for f in files}
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(lambda f: hash_file_cached(cache, f)[0], files))
    first = dict(zip(map(str, files), digests, strict=True))
    assert first == expected
    assert len(cache) == 200
    seen_threads: set[int] = set()

    def lookup(f: Path) -> str | None:
        seen_threads.add(threading.get_ident())
        st = f.stat()
        return cache.get(str(f), st.st_size, st.st_mtime_ns)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lookup, files)) == [expected[str(f)] for f in files]
    assert len(seen_threads) > 1
    # The pools' threads are gone: their connections closed with them (weakly tracked).
    import gc

    gc.collect()
    assert len(cache._connections) <= 1  # at most the main thread's


def _process_worker(cache_dir: str, worker: int, count: int) -> int:
    """Runs in a separate process: many small write transactions and reads of all rows."""
    hits = 0
    with HashCache(cache_dir) as cache:
        for i in range(count):
            cache.put(f"/w{worker}/{i}", i, OLD_NS, f"{worker:016x}{i:016x}")
        for other in range(4):
            for i in range(0, count, 7):
                if cache.get(f"/w{other}/{i}", i, OLD_NS) is not None:
                    hits += 1
    return hits


def test_processes_write_and_read_concurrently(tmp_path: Path) -> None:
    cache_dir = str(tmp_path / "shared")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        hits = pool.starmap(_process_worker, [(cache_dir, w, 300) for w in range(4)])
    assert all(h >= 43 for h in hits)  # at least its own rows
    with HashCache(cache_dir) as cache:
        assert len(cache) == 1200
        found = cache.get_many((f"/w{w}/{i}", i, OLD_NS) for w in range(4) for i in range(300))
        assert found["/w3/299"] == f"{3:016x}{299:016x}"
        assert len(found) == 1200


def _corrupt_pages(db: str) -> None:
    """Overwrite everything after page 1 (the schema) with garbage, keeping the header."""
    size = os.path.getsize(db)
    assert size > 8 * 4096, "not enough pages to corrupt"
    with open(db, "r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))


def _fill(cache_dir: Path, n: int = 3000) -> None:
    with HashCache(cache_dir) as c:
        c.put_many((f"/some/long/path/{i:08d}", i, OLD_NS, f"{i:032x}") for i in range(n))
    conn = sqlite3.connect(cache_dir / HashCache.FILE_NAME)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def test_garbage_file_is_moved_aside_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "c"
    d.mkdir()
    (d / HashCache.FILE_NAME).write_bytes(b"this is not a database at all " * 200)
    with caplog.at_level(logging.WARNING, logger="vfs.hash_cache"), HashCache(d) as c:
        c.put("/a", 1, 2, FAKE)
        assert c.get("/a", 1, 2) == FAKE
    aside = list(d.glob(HashCache.FILE_NAME + ".corrupt-*Z"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not a database")
    assert any("corrupt" in r.message and str(aside[0]) in r.message for r in caplog.records)


def test_corruption_found_later_is_recovered_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Damage found mid-use by two independent caches (as two processes would): the file is
    moved aside once, both continue on the new database, and lookups are misses."""
    d = tmp_path / "c"
    _fill(d)
    a, b = HashCache(d), HashCache(d)
    try:
        assert a.get("/some/long/path/00002500", 2500, OLD_NS) == f"{2500:032x}"
        assert b.get("/some/long/path/00002500", 2500, OLD_NS) == f"{2500:032x}"
        _corrupt_pages(a.path)
        with caplog.at_level(logging.WARNING, logger="vfs.hash_cache"):
            assert a.get("/some/long/path/00002999", 2999, OLD_NS) is None
            assert b.get("/some/long/path/00002998", 2998, OLD_NS) is None
            a.put("/new", 1, 1, FAKE)
            assert b.get("/new", 1, 1) == FAKE
            b.put_many([("/other", 2, 2, FAKE)])
            assert a.get("/other", 2, 2) == FAKE
    finally:
        a.close()
        b.close()
    aside = sorted(p.name for p in d.glob(HashCache.FILE_NAME + ".corrupt-*"))
    assert len(aside) == 3  # the database with its -shm and -wal, moved together
    assert aside[1:] == [aside[0] + "-shm", aside[0] + "-wal"]
    assert sum("corrupt" in r.message for r in caplog.records) == 1
    with HashCache(d) as c:
        assert len(c) == 2


def test_closed_cache_and_unusable_directory(tmp_path: Path) -> None:
    c = HashCache(tmp_path / "c")
    c.close()
    with pytest.raises(CacheError, match="closed"):
        c.get("/a", 1, 1)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(CacheError, match="cannot create cache directory") as info:
        HashCache(tmp_path / "file" / "sub")
    assert info.value.hint


def _remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        os.remove(path + suffix)


def test_deleted_database_is_noticed_and_recreated(tmp_path: Path) -> None:
    """A user deletes the file while processes use it: within the recheck interval every
    process moves to the new file instead of writing to one nobody else can read."""
    d = tmp_path / "c"
    with HashCache(d) as a:
        a.put("/before", 1, 1, FAKE)
        _remove_db(a.path)
        a.RECHECK_INTERVAL_S = 0  # check the file on every operation
        assert a.get("/before", 1, 1) is None
        a.put("/after", 1, 1, FAKE)
        with HashCache(d) as b:
            assert b.get("/after", 1, 1) == FAKE
        shutil.rmtree(d)  # even the directory: it is created again
        a.put("/again", 1, 1, FAKE)
        assert a.get("/again", 1, 1) == FAKE
        assert os.path.exists(a.path)


def test_new_thread_after_deletion_recreates_the_table(tmp_path: Path) -> None:
    with HashCache(tmp_path / "c") as cache:
        cache.put("/old", 1, 1, FAKE)
        _remove_db(cache.path)
        # A thread without a connection opens the path: a new, empty file with no table.
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(cache.get, "/old", 1, 1).result() is None
            pool.submit(cache.put, "/new", 2, 2, FAKE).result()
        # Every thread reconnected to the recreated file, this one included.
        assert cache.get("/new", 2, 2) == FAKE
        assert cache.get("/old", 1, 1) is None


def _forked_child(cache: HashCache, n: int) -> None:
    for i in range(n):
        cache.put(f"/child/{i}", i, OLD_NS, FAKE)
    assert cache.get("/parent/0", 0, OLD_NS) == FAKE
    cache.close()  # closes only the child's own connections


def test_forked_child_uses_its_own_connections(tmp_path: Path) -> None:
    """A cache inherited through fork keeps working in both processes at once."""
    with HashCache(tmp_path / "c") as cache:
        cache.put("/parent/0", 0, OLD_NS, FAKE)  # the parent has an open connection
        child = multiprocessing.get_context("fork").Process(target=_forked_child, args=(cache, 300))
        child.start()
        for i in range(1, 300):
            cache.put(f"/parent/{i}", i, OLD_NS, FAKE)
        child.join(30)
        assert child.exitcode == 0
        assert cache.get("/child/299", 299, OLD_NS) == FAKE  # the parent still works
        assert len(cache) == 600
        conn = sqlite3.connect(cache.path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()

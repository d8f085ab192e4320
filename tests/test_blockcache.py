"""The block cache alone, without the kernel (S3QL's t2_block_cache.py style): entries checked
on every load, eviction that makes room, accounting across processes, a busy lock."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from vfs.hashing import hash_bytes
from vfs.mount.blockcache import BlockCache
from vfs.mount.blockfile import HEADER_SIZE, CorruptEntryError, encode_header
from vfs.mount.blocks import BLOCK_SIZE
from vfs.mount.cacheindex import CacheIndex
from vfs.mount.objects import ObjectRef

MiB = 1024 * 1024


def big_object(nblocks: int = 3, extra: int = 123) -> tuple[ObjectRef, bytes]:
    data = os.urandom(nblocks * BLOCK_SIZE + extra)
    return ObjectRef(hash_bytes(data), len(data)), data


def block(data: bytes, i: int) -> bytes:
    return data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]


def test_blocks_and_objects_round_trip_and_are_checked_on_every_load(tmp_path: Path) -> None:
    cache = BlockCache(str(tmp_path / "c"), 1 << 30)
    obj, data = big_object()
    for i in range(4):
        assert cache.store_block(obj, i, block(data, i))
    got, _ = cache.load_block(obj, 2)
    assert bytes(got) == block(data, 2)
    small = os.urandom(1000)
    sobj = ObjectRef(hash_bytes(small), len(small))
    assert cache.store_object(sobj, small)
    assert cache.load_object(sobj) == small

    path = Path(cache.path(cache.block_name(obj.hash, 1)))
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 10] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptEntryError, match="checksum taken on arrival"):
        cache.load_block(obj, 1)
    assert not path.exists()  # removed, never served
    with pytest.raises(FileNotFoundError):
        cache.load_block(obj, 1)

    # A block file moved to another index (its header names block 0) is caught.
    os.replace(cache.path(cache.block_name(obj.hash, 0)), cache.path(cache.block_name(obj.hash, 2)))
    with pytest.raises(CorruptEntryError, match="not this block"):
        cache.load_block(obj, 2)
    # A truncated block is caught, and so is a header whose own checksum fails.
    p3 = Path(cache.path(cache.block_name(obj.hash, 3)))
    p3.write_bytes(p3.read_bytes()[:-1])
    with pytest.raises(CorruptEntryError, match="bytes, expected"):
        cache.load_block(obj, 3)
    assert cache.store_block(obj, 0, block(data, 0))
    p0 = Path(cache.path(cache.block_name(obj.hash, 0)))
    raw = bytearray(p0.read_bytes())
    raw[20] ^= 1
    p0.write_bytes(bytes(raw))
    with pytest.raises(CorruptEntryError, match="header is damaged"):
        cache.load_block(obj, 0)
    # A whole object with other content of the right size is caught.
    Path(cache.path(cache.object_name(sobj.hash))).write_bytes(os.urandom(1000))
    with pytest.raises(CorruptEntryError, match="hashes to"):
        cache.load_object(sobj)
    assert cache.stats().entries == 0  # every damaged entry was removed, rows included


def test_verified_sums_catch_a_consistent_forgery(tmp_path: Path) -> None:
    cache = BlockCache(str(tmp_path / "c"), 1 << 30)
    obj, data = big_object(2, 5)
    sums = []
    for i in range(3):
        cache.store_block(obj, i, block(data, i))
        sums.append(cache.load_block(obj, i)[1])
    cache.record_verified(obj, sums)
    other = BlockCache(str(tmp_path / "c"), 1 << 30)  # another process's view
    assert other.verified_sums(obj) == tuple(sums)
    forged = os.urandom(BLOCK_SIZE)
    from vfs.mount.blockfile import block_checksum

    Path(cache.path(cache.block_name(obj.hash, 0))).write_bytes(
        encode_header(obj.hash, obj.size, 0, BLOCK_SIZE, BLOCK_SIZE, block_checksum(forged))
        + forged
    )
    assert bytes(other.load_block(obj, 0)[0]) == forged  # self-consistent on its own
    with pytest.raises(CorruptEntryError, match="verified object"):
        other.load_block(obj, 0, sums[0])


def test_eviction_makes_room_for_the_block_in_hand(tmp_path: Path) -> None:
    limit = 3 * (BLOCK_SIZE + HEADER_SIZE)
    cache = BlockCache(str(tmp_path / "c"), limit)
    obj, data = big_object(12, 0)
    for i in range(12):
        assert cache.store_block(obj, i, block(data, i)), i
        assert cache.stats().used <= limit
    assert sorted(cache.present_blocks(obj.hash)) == [9, 10, 11]
    assert not cache.store_block(obj, 0, os.urandom(limit + 1))  # larger than the cache


def _store_many(root: str, limit: int, seed: int, n: int) -> None:
    cache = BlockCache(root, limit)
    rnd = os.urandom
    for i in range(n):
        data = rnd(MiB + seed)
        obj = ObjectRef(hash_bytes(data), len(data))
        cache.store_object(obj, data)
        del i


def test_two_processes_keep_the_bound_while_stats_runs(tmp_path: Path) -> None:
    """Two writers evicting each other's entries plus a reader of the stats: entries and
    live reservations never exceed the bound, and the totals match the files."""
    root = str(tmp_path / "c")
    limit = 8 * MiB
    BlockCache(root, limit)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_store_many, args=(root, limit, s, 40)) for s in (1, 2)]
    for p in procs:
        p.start()
    watcher = BlockCache(root, limit)
    peak = 0
    while any(p.is_alive() for p in procs):
        s = watcher.stats()
        peak = max(peak, s.used + s.reserved)
        time.sleep(0.005)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert peak <= limit, peak
    s = watcher.stats()
    on_disk = sum(f.stat().st_size for f in Path(root, "objects").rglob("*") if f.is_file())
    assert s.used == on_disk and s.reserved == 0


def _reserve_and_wait(
    root: str, ready: multiprocessing.synchronize.Event, done: multiprocessing.synchronize.Event
) -> None:  # type: ignore[name-defined]
    cache = BlockCache(root, 1 << 30)
    cache.index.reserve(5 * MiB, [], [])
    ready.set()
    done.wait(60)


def test_live_reservations_survive_another_start_and_reconcile(tmp_path: Path) -> None:
    root = str(tmp_path / "c")
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_reserve_and_wait, args=(root, ready, done))
    p.start()
    try:
        assert ready.wait(60)
        other = BlockCache(root, 1 << 30)
        other.reconcile()
        assert other.stats().reserved == 5 * MiB  # the live owner's promise stands
    finally:
        done.set()
        p.join(60)
    # Its process is gone: the reservation is dead, ignored, and dropped by the next evictor.
    assert other.stats().reserved == 0
    other.evict()
    rows = other.index._run(
        lambda c: c.execute("SELECT owner FROM reservations WHERE bytes > 0").fetchall(),
        write=False,
    )
    assert rows == []


def test_stats_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = BlockCache(str(root), 1 << 30)
    obj, data = big_object(1, 0)
    cache.store_block(obj, 0, block(data, 0))
    os.unlink(cache.path(cache.block_name(obj.hash, 0)))  # a row without a file
    (root / "tmp" / "999999-1.dead").write_bytes(b"x")  # a dead writer's temp file
    before = cache.index.all_entries()
    BlockCache(str(root), 1 << 30).stats()
    assert cache.index.all_entries() == before
    assert (root / "tmp" / "999999-1.dead").exists()
    # reconcile (after a crash) drops the old row and the dead writer's temp file
    time.sleep(1.1)
    assert cache.reconcile() == (1, 0)
    assert not (root / "tmp" / "999999-1.dead").exists()


def test_reconcile_keeps_rows_committed_during_its_scan(tmp_path: Path) -> None:
    root = str(tmp_path / "c")
    cache = BlockCache(root, 1 << 30)
    small = os.urandom(100)
    obj = ObjectRef(hash_bytes(small), len(small))
    cache.store_object(obj, small)  # committed just now: younger than any scan
    os.unlink(cache.path(cache.object_name(obj.hash)))
    assert cache.reconcile() == (0, 0)  # too young to be judged a leftover


def test_a_busy_lock_skips_caching_instead_of_failing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "c"
    cache = BlockCache(str(root), 1 << 30, lock_timeout=0.3)
    fd = os.open(root / "lock", os.O_RDWR)
    held = threading.Event()

    def hold() -> None:
        # flock is per open file description: a second description conflicts, as in
        # another process.
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.set()

    hold()
    try:
        data = os.urandom(1000)
        obj = ObjectRef(hash_bytes(data), len(data))
        start = time.monotonic()
        assert not cache.store_object(obj, data)
        assert time.monotonic() - start < 2
        start = time.monotonic()
        assert not cache.store_object(obj, data)  # skipped at once for RETRY_AFTER_S
        assert time.monotonic() - start < 0.1
    finally:
        os.close(fd)
    assert sum("cannot store" in r.message for r in caplog.records) == 1


def test_cache_files_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        root = tmp_path / "c"
        cache = BlockCache(str(root), 1 << 30)
        obj, data = big_object(1, 0)
        cache.store_block(obj, 0, block(data, 0))
        CacheIndex(str(root)).used()
    finally:
        os.umask(old)
    for p in [root, *root.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p


def test_a_removed_cache_directory_is_recreated(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = BlockCache(str(root), 1 << 30)
    data = os.urandom(1000)
    obj = ObjectRef(hash_bytes(data), len(data))
    import shutil

    shutil.rmtree(root)
    assert not cache.store_object(obj, data)  # fails once, recreates the directories
    cache._skip_until = 0.0  # the retry pause (RETRY_AFTER_S) is over
    assert cache.store_object(obj, data)
    assert cache.load_object(obj) == data
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_present_map_follows_this_process_and_another_within_its_ttl(tmp_path: Path) -> None:
    """Readahead asks which blocks are cached without listing the directory each time: the
    map follows this process's writes, removals and evictions at once, another process's
    once its entry expires; a block the map still names after another process evicted it is
    a plain miss."""
    root = str(tmp_path / "c")
    entry = HEADER_SIZE + BLOCK_SIZE
    cache = BlockCache(root, 3 * entry, min_free_ratio=0)
    obj, data = big_object(nblocks=4)
    assert cache.present_blocks(obj.hash) == set()  # listed: nothing yet
    assert cache.known_blocks(obj.hash) == set()
    for i in range(3):
        assert cache.store_block(obj, i, block(data, i))
    assert cache.known_blocks(obj.hash) == {0, 1, 2}
    cache.remove([BlockCache.block_name(obj.hash, 1)])
    assert cache.present_blocks(obj.hash) == {0, 2}
    assert cache.store_block(obj, 3, block(data, 3))
    assert cache.store_block(obj, 1, block(data, 1))  # evicts the least recently used: 0
    assert cache.present_blocks(obj.hash) == {1, 2, 3}

    other = BlockCache(root, 3 * entry, min_free_ratio=0)  # stands for another process
    other.remove([BlockCache.block_name(obj.hash, 2)])
    assert cache.present_blocks(obj.hash) == {1, 2, 3}  # not seen yet
    with pytest.raises(FileNotFoundError):
        cache.load_block(obj, 2)
    cache._present.expire(time.monotonic() + 60)  # the TTL passes
    assert cache.present_blocks(obj.hash) == {1, 3}

"""The fetcher alone, without the kernel (S3QL's t3_fs_api.py style): reads served through
``ContentFetcher.read`` in a Trio run, against a ``file://`` store or moto behind the relay."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from conftest import S3Relay

from vfs.errors import CorruptObjectError, StoreError
from vfs.hashing import hash_bytes
from vfs.mount.blockcache import BlockCache
from vfs.mount.blocks import BLOCK_SIZE
from vfs.mount.fetcher import ContentFetcher, FetchPolicy
from vfs.mount.objects import ObjectRef
from vfs.mount.readahead import ReadaheadState
from vfs.mount.service import mount_s3_options
from vfs.mount.stats import MountStats
from vfs.storage import LocalStore, ObjectStore, S3Options, data_key
from vfs.storage.s3 import S3Store

MiB = 1024 * 1024


def run_with_fetcher(
    cache_dir: Path,
    store: ObjectStore,
    body: Callable[[ContentFetcher], Awaitable[None]],
    policy: FetchPolicy | None = None,
    on_bad: Callable[[str], Awaitable[None]] | None = None,
) -> MountStats:
    stats = MountStats()

    async def main() -> None:
        fetcher = ContentFetcher(BlockCache(str(cache_dir), 1 << 30), store, stats, policy, on_bad)
        async with trio.open_nursery() as nursery:
            fetcher.attach(nursery)
            await body(fetcher)
            await fetcher.drain(10)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return stats


def s3_store(relay: S3Relay, bucket: str, policy: FetchPolicy) -> S3Store:
    return S3Store(bucket, "p", mount_s3_options(S3Options(endpoint_url=relay.url), policy))


def put(s3_client, bucket: str, data: bytes) -> ObjectRef:  # type: ignore[no-untyped-def]
    s3_client.put_object(Bucket=bucket, Key=f"p/{data_key(hash_bytes(data))}", Body=data)
    return ObjectRef(hash_bytes(data), len(data))


def test_random_ranges_of_small_and_large_objects(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"))
    rng = random.Random(3)
    datas = [rng.randbytes(n) for n in (0, 1, 5000, BLOCK_SIZE, 3 * BLOCK_SIZE + 17)]
    objs = []
    for d in datas:
        store.put_bytes(data_key(hash_bytes(d)), d)
        objs.append(ObjectRef(hash_bytes(d), len(d)))

    async def body(f: ContentFetcher) -> None:
        for obj, data in zip(objs, datas, strict=True):
            state = ReadaheadState()
            for _ in range(40):
                off = rng.randrange(len(data) + 10)
                size = rng.randrange(1, 2 * BLOCK_SIZE)
                got = await f.read([obj], off, size, state)
                assert bytes(got) == data[off : off + size]

    stats = run_with_fetcher(tmp_path / "c", store, body)
    assert stats.counters["fetch.blocks"] == 4  # each block of the large object once


def test_one_retry_layer_recovers_from_503s(
    tmp_path: Path,
    s3_client,
    s3_bucket: str,
    s3_relay: S3Relay,  # type: ignore[no-untyped-def]
) -> None:
    """The store client does not retry (max_attempts=1): the fetcher's loop is the only
    retry layer; with one attempt, the same faults fail reads."""
    rng = random.Random(8)
    datas = [rng.randbytes(rng.randrange(1, 2 * BLOCK_SIZE)) for _ in range(12)]
    objs = [put(s3_client, s3_bucket, d) for d in datas]
    s3_relay.fail_ratio = 0.3
    failures: list[str] = []

    def attempt(policy: FetchPolicy, cache: str) -> MountStats:
        async def body(f: ContentFetcher) -> None:
            for obj, data in zip(objs, datas, strict=True):
                try:
                    got = await f.read([obj], 0, len(data), ReadaheadState())
                    assert bytes(got) == data
                except StoreError as e:
                    failures.append(str(e))

        return run_with_fetcher(
            tmp_path / cache, s3_store(s3_relay, s3_bucket, policy), body, policy
        )

    policy = FetchPolicy(attempts=12, fetch_timeout=60)  # 0.3**12: a failed read ~1e-5 per run
    stats = attempt(policy, "c1")
    assert failures == [] and stats.counters["fetch.retries"] > 0
    gets = len(s3_relay.gets())
    assert gets == 18 + stats.counters["fetch.retries"]  # one GET per attempt: no hidden layer
    attempt(FetchPolicy(attempts=1), "c2")
    assert failures  # without the retry loop, 503s become failed reads


def test_concurrent_readers_of_a_block_share_one_get(
    tmp_path: Path,
    s3_client,
    s3_bucket: str,
    s3_relay: S3Relay,  # type: ignore[no-untyped-def]
) -> None:
    data = os.urandom(3 * BLOCK_SIZE)
    obj = put(s3_client, s3_bucket, data)
    s3_relay.stall = 0.5  # every reader arrives while the first GET is under way

    async def body(f: ContentFetcher) -> None:
        async def reader() -> None:
            got = await f.read([obj], BLOCK_SIZE + 100, 1000, ReadaheadState())
            assert bytes(got) == data[BLOCK_SIZE + 100 : BLOCK_SIZE + 1100]

        async with trio.open_nursery() as n:
            for _ in range(20):
                n.start_soon(reader)

    policy = FetchPolicy()
    run_with_fetcher(tmp_path / "c", s3_store(s3_relay, s3_bucket, policy), body, policy)
    assert len(s3_relay.gets(obj.hash)) == 1


def test_an_abandoned_download_holds_no_slot(
    tmp_path: Path,
    s3_client,
    s3_bucket: str,
    s3_relay: S3Relay,  # type: ignore[no-untyped-def]
) -> None:
    """With one download slot: a read given up on a stalled store frees the slot at once,
    so the next read is served while the abandoned thread still waits."""
    stuck = put(s3_client, s3_bucket, os.urandom(2 * BLOCK_SIZE))
    fine_data = os.urandom(2 * BLOCK_SIZE)
    fine = put(s3_client, s3_bucket, fine_data)
    # The attempt timeout (and the socket's) is long: only the read's deadline gives up.
    policy = FetchPolicy(max_fetches=1, fetch_timeout=1.5, attempt_timeout=10, attempts=1)
    took: list[float] = []

    async def body(f: ContentFetcher) -> None:
        s3_relay.stall = 20
        with pytest.raises(StoreError, match="fetch-timeout"):
            await f.read([stuck], 0, 1000, ReadaheadState())
        s3_relay.stall = 0
        start = time.monotonic()
        got = await f.read([fine], 0, 1000, ReadaheadState())
        took.append(time.monotonic() - start)
        assert bytes(got) == fine_data[:1000]

    run_with_fetcher(tmp_path / "c", s3_store(s3_relay, s3_bucket, policy), body, policy)
    assert took[0] < 1.0, took


def test_object_failing_its_hash_is_condemned_then_recovered(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"))
    data = os.urandom(2 * BLOCK_SIZE + 3)
    obj = ObjectRef(hash_bytes(data), len(data))
    store.put_bytes(data_key(obj.hash), os.urandom(len(data)))  # wrong bytes, right size
    bad: list[str] = []

    async def on_bad(h: str) -> None:
        bad.append(h)

    async def body(f: ContentFetcher) -> None:
        await f.read([obj], 0, len(data), ReadaheadState())  # served: the block window
        with trio.fail_after(10):
            while not bad:
                await trio.sleep(0.01)
        assert not f.is_trusted([obj])
        with pytest.raises(CorruptObjectError, match="hashes to"):
            await f.read([obj], 0, 10, ReadaheadState())
        store.put_bytes(data_key(obj.hash), data)
        await trio.sleep(f.policy.failure_ttl + 0.1)
        got = await f.read([obj], 0, len(data), ReadaheadState())
        assert bytes(got) == data
        assert f.is_trusted([obj])

    stats = run_with_fetcher(tmp_path / "c", store, body, on_bad=on_bad)
    assert bad == [obj.hash]
    assert stats.counters["verify.failed"] == 2  # the background check, the strict refetch


@pytest.mark.parametrize("order", ["forward", "shuffled"])
def test_large_object_is_hashed_as_its_blocks_arrive(tmp_path: Path, order: str) -> None:
    """Read in order, an object is verified by the time its last block is served, without
    reading a block again; read out of order with a memory of two blocks, the blocks that
    left memory are re-read from disk once all were seen."""
    store = LocalStore(str(tmp_path / "store"))
    count = 6
    data = os.urandom(count * BLOCK_SIZE - 5)
    obj = ObjectRef(hash_bytes(data), len(data))
    store.put_bytes(data_key(obj.hash), data)
    indices = list(range(count))
    if order == "shuffled":
        random.Random(5).shuffle(indices)
        indices.remove(0)
        indices.append(0)  # block 0 last: nothing can be hashed before the end

    async def body(f: ContentFetcher) -> None:
        for i in indices:  # a new state per read: no readahead
            off = i * BLOCK_SIZE
            got = await f.read([obj], off, BLOCK_SIZE, ReadaheadState())
            assert bytes(got) == data[off : off + BLOCK_SIZE]
        if order == "forward":
            assert f.is_trusted([obj])  # judged with the last block, nothing re-read
        with trio.fail_after(10):
            while not f.is_trusted([obj]):
                await trio.sleep(0.01)

    policy = FetchPolicy(max_memory=2 * BLOCK_SIZE)
    stats = run_with_fetcher(tmp_path / "c", store, body, policy=policy)
    assert stats.counters["verify.objects"] == 1
    if order == "forward":
        assert stats.counters["verify.streamed"] == 1
        assert stats.counters.get("cache.hits", 0) == 0  # no block loaded again
    else:
        assert "verify.streamed" not in stats.counters


def test_verification_waits_for_cache_writes_under_way(tmp_path: Path) -> None:
    """Blocks that left memory before they reached the disk (the cache lock is held by
    another process meanwhile) are awaited, not taken for evicted: the object is verified
    once the writes land, without another read."""
    import fcntl

    store = LocalStore(str(tmp_path / "store"))
    count = 6
    data = os.urandom(count * BLOCK_SIZE - 5)
    obj = ObjectRef(hash_bytes(data), len(data))
    store.put_bytes(data_key(obj.hash), data)
    cache_dir = tmp_path / "c"
    BlockCache(str(cache_dir), 1 << 30).close()  # creates the lock file
    lock = os.open(cache_dir / "lock", os.O_RDWR)

    async def body(f: ContentFetcher) -> None:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as another process's long eviction would
        for i in [3, 1, 5, 2, 4, 0]:  # block 0 last: nothing is hashed on the way
            await f.read([obj], i * BLOCK_SIZE, BLOCK_SIZE, ReadaheadState())
        await trio.sleep(1.0)
        assert not f.is_trusted([obj])
        fcntl.flock(lock, fcntl.LOCK_UN)
        with trio.fail_after(10):
            while not f.is_trusted([obj]):
                await trio.sleep(0.01)

    try:
        stats = run_with_fetcher(
            cache_dir, store, body, policy=FetchPolicy(max_memory=2 * BLOCK_SIZE)
        )
    finally:
        os.close(lock)
    assert stats.counters["verify.objects"] == 1
    assert stats.counters["fetch.blocks"] == count  # nothing fetched again


def test_a_sequential_read_fetches_whole_aligned_groups(
    tmp_path: Path,
    s3_client,
    s3_bucket: str,
    s3_relay: S3Relay,  # type: ignore[no-untyped-def]
) -> None:
    """Readahead asks for the aligned group of RUN_BLOCKS blocks its window reaches into,
    one ranged GET each, whichever block a reader is at: a 1 MiB-at-a-time read of 16
    blocks costs a handful of GETs, not one per block."""
    data = os.urandom(16 * BLOCK_SIZE)
    obj = put(s3_client, s3_bucket, data)

    async def body(f: ContentFetcher) -> None:
        state = ReadaheadState()
        for off in range(0, len(data), MiB):
            got = await f.read([obj], off, MiB, state)
            assert bytes(got) == data[off : off + MiB]

    policy = FetchPolicy()
    stats = run_with_fetcher(tmp_path / "c", s3_store(s3_relay, s3_bucket, policy), body, policy)
    gets = s3_relay.gets(obj.hash)
    assert stats.counters["fetch.blocks"] == 16
    assert len(gets) <= 4, [g.range for g in gets]


def test_a_connection_cut_mid_block_is_retried(
    tmp_path: Path,
    s3_client,
    s3_bucket: str,
    s3_relay: S3Relay,  # type: ignore[no-untyped-def]
) -> None:
    """A body that ends before its Content-Length (a reset connection) is a failed attempt,
    retried, never a short or zero-filled block."""
    data = os.urandom(3 * BLOCK_SIZE + 11)
    obj = put(s3_client, s3_bucket, data)
    s3_relay.reset_after = BLOCK_SIZE + 100_000

    async def body(f: ContentFetcher) -> None:
        got = await f.read([obj], 0, 10, ReadaheadState())  # block 0 arrives whole
        assert bytes(got) == data[:10]
        s3_relay.reset_after = 100_000  # every later GET is cut in its first block
        with pytest.raises(StoreError):
            await f.read([obj], 2 * BLOCK_SIZE, 10, ReadaheadState())
        s3_relay.reset_after = None
        await trio.sleep(f.policy.failure_ttl + 0.1)  # the failed read is remembered till then
        got = await f.read([obj], 0, len(data), ReadaheadState())
        assert bytes(got) == data

    policy = FetchPolicy(attempts=2, fetch_timeout=30)
    stats = run_with_fetcher(tmp_path / "c", s3_store(s3_relay, s3_bucket, policy), body, policy)
    assert stats.counters["fetch.retries"] >= 1


def test_readahead_fits_in_a_small_memory(tmp_path: Path) -> None:
    """With --max-memory of 4 blocks (and a cache too small to keep them), a sequential read
    fetches every block once: readahead runs and window shrink to fit memory, so blocks
    fetched ahead are not evicted before the reader gets to them."""
    store = LocalStore(str(tmp_path / "store"))
    data = os.urandom(16 * BLOCK_SIZE)
    obj = ObjectRef(hash_bytes(data), len(data))
    store.put_bytes(data_key(obj.hash), data)
    policy = FetchPolicy(max_memory=4 * BLOCK_SIZE)
    stats = MountStats()

    async def main() -> None:
        cache = BlockCache(str(tmp_path / "c"), 2 * BLOCK_SIZE, min_free_ratio=0)
        fetcher = ContentFetcher(cache, store, stats, policy)
        async with trio.open_nursery() as nursery:
            fetcher.attach(nursery)
            state = ReadaheadState()
            for off in range(0, len(data), MiB):
                got = await fetcher.read([obj], off, MiB, state)
                assert bytes(got) == data[off : off + MiB]
            await fetcher.drain(10)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert stats.counters["fetch.blocks"] == 16


def test_a_cache_hit_in_the_page_cache_is_loaded_on_the_event_loop(tmp_path: Path) -> None:
    """Blocks whose files are in the page cache are loaded without a worker thread
    (``cache.inline``); blocks written past the page cache are not, and read right."""
    store = LocalStore(str(tmp_path / "store"))
    data = os.urandom(3 * BLOCK_SIZE)
    obj = ObjectRef(hash_bytes(data), len(data))
    store.put_bytes(data_key(obj.hash), data)

    async def body(f: ContentFetcher) -> None:
        got = await f.read([obj], 0, len(data), ReadaheadState())
        assert bytes(got) == data

    policy = FetchPolicy()
    run_with_fetcher(tmp_path / "c", store, body, policy)  # cold: fetched and cached
    first = run_with_fetcher(tmp_path / "c", store, body, policy)
    assert first.counters["fetch.blocks"] == 0
    for f in (tmp_path / "c").rglob("*"):
        if f.is_file() and f.parent.parent.parent.name == "b":
            f.read_bytes()  # the block files into the page cache
    again = run_with_fetcher(tmp_path / "c", store, body, policy)
    assert again.counters["fetch.blocks"] == 0
    assert again.counters["cache.inline"] == 3


@pytest.mark.timeout(60)
def test_a_fifo_or_link_in_place_of_a_cache_file_is_replaced_not_waited_on(
    tmp_path: Path,
) -> None:
    """A FIFO put where a block file was would block whoever opens it until a writer comes
    (the event loop too, which loads page-cached hits itself); a symbolic link could point
    anywhere. Both are damaged entries: removed and fetched again, the reads right."""
    store = LocalStore(str(tmp_path / "store"))
    data = os.urandom(3 * BLOCK_SIZE)
    obj = ObjectRef(hash_bytes(data), len(data))
    store.put_bytes(data_key(obj.hash), data)
    small = os.urandom(5000)
    sobj = ObjectRef(hash_bytes(small), len(small))
    store.put_bytes(data_key(sobj.hash), small)

    async def body(f: ContentFetcher) -> None:
        with trio.fail_after(30):
            got = await f.read([obj], 0, len(data), ReadaheadState())
            assert bytes(got) == data
            assert bytes(await f.read([sobj], 0, 5000, ReadaheadState())) == small

    run_with_fetcher(tmp_path / "c", store, body)
    cache = BlockCache(str(tmp_path / "c"), 1 << 30)
    fifo = Path(cache.path(cache.block_name(obj.hash, 1)))
    fifo.unlink()
    os.mkfifo(fifo)
    link = Path(cache.path(cache.block_name(obj.hash, 2)))
    link.unlink()
    link.symlink_to(tmp_path / "store" / data_key(obj.hash))
    whole = Path(cache.path(cache.object_name(sobj.hash)))
    whole.unlink()
    os.mkfifo(whole)
    stats = run_with_fetcher(tmp_path / "c", store, body)
    assert stats.counters["fetch.blocks"] == 2  # blocks 1 and 2 again
    assert fifo.is_file() and not fifo.is_symlink() and link.is_file() and not link.is_symlink()
    assert stats.counters["cache.corrupt"] == 2

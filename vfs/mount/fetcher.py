"""Getting object content into the block cache and serving reads from it.

What is fetched how (design: mountpoint-s3's prefetcher, CernVM-FS's verified cache):

* An object of at most ``BLOCK_SIZE`` bytes is fetched whole, checked against its xxh128
  and size, and only then renamed into the cache.
* A larger object (a big v1 file, or a 256 MiB chunk of a v2 file) is fetched in blocks by
  ranged GETs. A block cannot be checked on its own (the hash covers the whole object), so
  its length is checked; as soon as every block of the object is cached the whole object
  is hashed, and on a mismatch its blocks are evicted, an error naming the key is logged,
  and the next read fetches them again.
* Cache hits are verified once per process before first use: a whole object is hashed; a
  large object whose blocks are all present is hashed as a whole. A corrupt or truncated
  entry is evicted and fetched again.
* One fetch per cache entry is in flight at a time; every reader of that entry waits for it
  (request coalescing). Downloads run in worker threads: their number is bounded by
  ``max_fetches`` and by the memory budget (``max_memory`` / ``BLOCK_SIZE``).
* Sequential reads through one file handle grow a readahead window (1, 2, 4 … blocks up to
  ``READAHEAD_MAX_BLOCKS``); readahead only uses spare download slots, so it never delays a
  reader, and a non-sequential read resets it.
* Every attempt has a timeout; failed attempts are retried with exponential backoff and
  jitter until ``attempts`` or ``fetch_timeout`` runs out, then the read fails (EIO). A 404
  or 403 is not retried. Cached data is served without touching the store, so it keeps
  working while the store is unreachable.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import trio
import xxhash

from vfs.errors import (
    AccessDeniedError,
    CacheFullError,
    CorruptObjectError,
    ObjectNotFoundError,
    StoreError,
)
from vfs.mount.blockcache import BLOCK_SIZE, BlockCache
from vfs.mount.objects import CHUNK_SIZE, ObjectRef
from vfs.mount.stats import MountStats
from vfs.storage import ObjectStore, Readable, data_key
from vfs.storage.ranges import get_range, open_range

log = logging.getLogger(__name__)

READAHEAD_MAX_BLOCKS = 32
"""Largest readahead window, in blocks (128 MiB)."""

RUN_BLOCKS = 8
"""Blocks fetched by one readahead GET (one ranged GET of up to 32 MiB, streamed)."""

FDS_PER_HANDLE = 8
"""Cache entries a file handle keeps open."""

STREAM_CHUNK = 4 * 1024 * 1024
INLINE_VERIFY_LIMIT = 256 * 1024
"""Cached objects up to this size are verified on the event loop (cheaper than a thread hop)."""


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Limits of the fetcher. Times in seconds, sizes in bytes."""

    max_fetches: int = 16
    max_memory: int = 256 * 1024 * 1024
    fetch_timeout: float = 60.0
    attempt_timeout: float = 30.0
    attempts: int = 5


DEFAULT_POLICY = FetchPolicy()


class ReadState:
    """What one open file handle keeps: open cache entries and its readahead window."""

    __slots__ = ("fds", "next_offset", "window")

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.next_offset = 0
        self.window = 0

    def fd(self, cache: BlockCache, name: str) -> int:
        """An open descriptor of cache entry ``name``. Raises ``FileNotFoundError`` if gone."""
        fd = self.fds.get(name)
        if fd is not None:
            return fd
        fd = os.open(cache.path(name), os.O_RDONLY | os.O_CLOEXEC)
        if len(self.fds) >= FDS_PER_HANDLE:
            oldest = next(iter(self.fds))
            os.close(self.fds.pop(oldest))
        self.fds[name] = fd
        return fd

    def drop(self, name: str) -> None:
        """Close the descriptor of ``name`` (after the entry turned out to be corrupt)."""
        fd = self.fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Close every descriptor."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class Downloader:
    """Blocking downloads from ``store`` into ``cache`` (run in worker threads).

    Both methods reserve the space first, write a temporary file, check it, and commit it
    as a cache entry; on any failure nothing is cached and the reservation is released.
    ``pinned`` names entries that must not be evicted to make room. They return the bytes
    fetched and raise the store's errors, ``CorruptObjectError`` or ``CacheFullError``.
    """

    def __init__(self, cache: BlockCache, store: ObjectStore) -> None:
        self.cache = cache
        self.store = store

    def whole(self, obj: ObjectRef, pinned: Collection[str] = ()) -> int:
        """Fetch a whole object, verify its size and xxh128, cache it."""
        key = data_key(obj.hash)
        name = self.cache.object_name(obj.hash)
        self.cache.reserve(obj.size, pinned)
        fd, tmp = self.cache.new_temp()
        try:
            hasher = xxhash.xxh3_128()
            written = 0
            with os.fdopen(fd, "wb") as out, self.store.open_read(key) as body:
                while written <= obj.size:
                    chunk = body.read(STREAM_CHUNK)
                    if not chunk:
                        break
                    hasher.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
            where = self.store.describe(key)
            if written != obj.size:
                raise CorruptObjectError(
                    f"object {where} has {written}{'+' if written > obj.size else ''} bytes, "
                    f"the manifest says {obj.size}",
                    key=where,
                    hint="the store holds wrong data for this hash; re-upload the file",
                )
            if hasher.hexdigest() != obj.hash:
                raise CorruptObjectError(
                    f"object {where} hashes to {hasher.hexdigest()}, not {obj.hash}",
                    key=where,
                    hint="the store holds wrong data for this hash; re-upload the file",
                )
            self.cache.commit(tmp, name, obj.size, reserved=obj.size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.cache.release(obj.size)
            raise
        return written

    def block(self, obj: ObjectRef, index: int, pinned: Collection[str] = ()) -> int:
        """Fetch block ``index`` of a large object by a ranged GET, check its length, cache it."""
        key = data_key(obj.hash)
        length = block_length(obj, index)
        self.cache.reserve(length, pinned)
        try:
            data = get_range(self.store, key, index * BLOCK_SIZE, length)
            if len(data) != length:
                where = self.store.describe(key)
                raise CorruptObjectError(
                    f"object {where} returned {len(data)} bytes for block {index}, "
                    f"expected {length}: it is shorter than the manifest says",
                    key=where,
                )
            fd, tmp = self.cache.new_temp()
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                self.cache.commit(tmp, self.cache.block_name(obj.hash, index), length, length)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except BaseException:
            self.cache.release(length)
            raise
        return length

    def run(
        self,
        obj: ObjectRef,
        first: int,
        count: int,
        on_block: Callable[[int], None],
        pinned: Collection[str] = (),
    ) -> int:
        """Fetch blocks ``first`` … ``first + count - 1`` of a large object with one streamed
        ranged GET, committing (and reporting with ``on_block(index)``) each block as soon
        as it has arrived and its length is checked. Blocks already cached at the start of
        the run are skipped. Returns the bytes fetched."""
        while count and self.cache.has(
            self.cache.block_name(obj.hash, first), block_length(obj, first)
        ):
            on_block(first)
            first += 1
            count -= 1
        if not count:
            return 0
        key = data_key(obj.hash)
        start = first * BLOCK_SIZE
        total = min(obj.size, (first + count) * BLOCK_SIZE) - start
        self.cache.reserve(total, pinned)
        used = 0
        try:
            with open_range(self.store, key, start, total) as body:
                for index in range(first, first + count):
                    length = block_length(obj, index)
                    data = _read_exactly(body, length)
                    if len(data) != length:
                        where = self.store.describe(key)
                        raise CorruptObjectError(
                            f"object {where} ended {length - len(data)} bytes early in "
                            f"block {index}: it is shorter than the manifest says",
                            key=where,
                        )
                    self._commit_block(obj, index, data)
                    used += length
                    on_block(index)
        except BaseException:
            self.cache.release(total - used)
            raise
        return used

    def _commit_block(self, obj: ObjectRef, index: int, data: bytes) -> None:
        fd, tmp = self.cache.new_temp()
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            self.cache.commit(tmp, self.cache.block_name(obj.hash, index), len(data), len(data))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class _Inflight:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BaseException | None = None


class ContentFetcher:
    """Serves reads of objects from ``cache``, fetching what is missing from ``store``."""

    def __init__(
        self,
        cache: BlockCache,
        store: ObjectStore,
        stats: MountStats,
        policy: FetchPolicy | None = None,
    ) -> None:
        self.cache = cache
        self.store = store
        self.stats = stats
        self.policy = policy or FetchPolicy()
        self.downloader = Downloader(cache, store)
        slots = max(1, min(self.policy.max_fetches, self.policy.max_memory // BLOCK_SIZE))
        self.limiter = trio.CapacityLimiter(slots)
        self._inflight: dict[str, _Inflight] = {}
        self._verified: set[str] = set()
        self._contact: dict[str, trio.Event] = {}
        self._present: dict[str, int] = {}
        self._states: set[ReadState] = set()
        self._nursery: trio.Nursery | None = None
        self._readahead_runs = 0

    def attach(self, nursery: trio.Nursery) -> None:
        """Give the fetcher a nursery for readahead and background verification."""
        self._nursery = nursery

    def open_state(self) -> ReadState:
        """A new per-handle state; its open entries are never evicted by this process."""
        state = ReadState()
        self._states.add(state)
        return state

    def close_state(self, state: ReadState) -> None:
        """Close a per-handle state."""
        state.close()
        self._states.discard(state)

    def _pinned(self) -> frozenset[str]:
        return frozenset(name for s in self._states for name in s.fds)

    # -- reading ----------------------------------------------------------------------------

    async def read(
        self, parts: Sequence[ObjectRef], off: int, size: int, state: ReadState
    ) -> bytes:
        """Bytes ``[off, off + size)`` of a file made of ``parts`` (one object, or v2 chunks).

        Raises ``StoreError`` subclasses, ``VfsError`` or ``OSError`` when content cannot
        be had (the FUSE layer answers EIO).
        """
        if len(parts) == 1:
            return await self._read_object(parts[0], off, size, state)
        pieces: list[bytes] = []
        end = off + size
        for index, part in enumerate(parts):
            start = index * CHUNK_SIZE
            if start >= end:
                break
            if start + part.size <= off:
                continue
            lo = max(off, start) - start
            hi = min(end, start + part.size) - start
            pieces.append(await self._read_object(part, lo, hi - lo, state))
        return b"".join(pieces)

    async def _read_object(self, obj: ObjectRef, off: int, size: int, state: ReadState) -> bytes:
        end = min(off + size, obj.size)
        if off >= end:
            return b""
        if obj.size <= BLOCK_SIZE:
            name = self.cache.object_name(obj.hash)
            if name in state.fds:  # open and verified: no stat on the hot path
                self.stats.add("cache.hits")
            else:
                name = await self._ensure_whole(obj)
            return await self._pread(state, name, end - off, off, lambda: self._ensure_whole(obj))
        await self._first_contact(obj)
        first, last = off // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        self._readahead(obj, off, end, last, state)
        pieces: list[bytes] = []
        for index in range(first, last + 1):
            start = index * BLOCK_SIZE
            lo = max(off, start) - start
            hi = min(end, start + BLOCK_SIZE) - start
            name = self.cache.block_name(obj.hash, index)
            if name in state.fds:  # open already: no stat on the hot path
                self.stats.add("cache.hits")
            else:
                name = await self._ensure_block(obj, index)
            refetch = functools.partial(self._ensure_block, obj, index)
            pieces.append(await self._pread(state, name, hi - lo, lo, refetch))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _pread(
        self,
        state: ReadState,
        name: str,
        size: int,
        off: int,
        refetch: Callable[[], Awaitable[str]],
    ) -> bytes:
        try:
            fd = state.fd(self.cache, name)
        except FileNotFoundError:  # evicted by another process since we checked
            state.drop(name)
            name = await refetch()
            fd = state.fd(self.cache, name)
        self.cache.touch(name)
        return os.pread(fd, size, off)

    # -- whole objects ----------------------------------------------------------------------

    async def _ensure_whole(self, obj: ObjectRef) -> str:
        name = self.cache.object_name(obj.hash)
        if self.cache.has(name, obj.size):
            if obj.hash in self._verified:
                self.stats.add("cache.hits")
                return name
            if await self._verify_cached_whole(name, obj):
                self._verified.add(obj.hash)
                self.stats.add("cache.hits")
                return name
        self.stats.add("cache.misses")
        await self._coalesced(name, self.downloader.whole, obj)
        self._verified.add(obj.hash)
        return name

    async def _verify_cached_whole(self, name: str, obj: ObjectRef) -> bool:
        path = self.cache.path(name)
        if obj.size <= INLINE_VERIFY_LIMIT:
            actual = _hash_file(path)
        else:
            actual = await trio.to_thread.run_sync(_hash_file, path)
        if actual == obj.hash:
            return True
        log.error(
            "cache entry %s is corrupt (hashes to %s); fetching %s again",
            path, actual, self.store.describe(data_key(obj.hash)),
        )  # fmt: skip
        self.stats.add("cache.corrupt")
        self._drop_everywhere([name])
        await trio.to_thread.run_sync(self.cache.remove, [name])
        return False

    # -- blocks of large objects ------------------------------------------------------------

    async def _ensure_block(self, obj: ObjectRef, index: int) -> str:
        name = self.cache.block_name(obj.hash, index)
        if self.cache.has(name, block_length(obj, index)):
            self.stats.add("cache.hits")
            return name
        self.stats.add("cache.misses")
        await self._coalesced(name, self.downloader.block, obj, index)
        return name

    async def _first_contact(self, obj: ObjectRef) -> None:
        """Once per process: count the object's cached blocks; hash it if all are there."""
        event = self._contact.get(obj.hash)
        if event is not None:
            await event.wait()
            return
        event = self._contact[obj.hash] = trio.Event()
        try:
            present = await trio.to_thread.run_sync(self._count_blocks, obj)
            self._present[obj.hash] = present
            if present == nblocks(obj):
                await self._verify_blocks(obj)
        finally:
            event.set()

    def _count_blocks(self, obj: ObjectRef) -> int:
        return sum(
            self.cache.has(self.cache.block_name(obj.hash, i), block_length(obj, i))
            for i in range(nblocks(obj))
        )

    async def _verify_blocks(self, obj: ObjectRef) -> None:
        """Hash a large object from its cached blocks; evict them all on a mismatch."""
        names = [self.cache.block_name(obj.hash, i) for i in range(nblocks(obj))]
        actual = await trio.to_thread.run_sync(hash_entries, self.cache, names)
        if actual is None:  # a block was evicted meanwhile
            return
        if actual == obj.hash:
            self._verified.add(obj.hash)
            return
        log.error(
            "object %s: its cached blocks hash to %s, not %s; evicted them, the next read "
            "fetches them again",
            self.store.describe(data_key(obj.hash)), actual, obj.hash,
        )  # fmt: skip
        self.stats.add("verify.failed")
        self._present[obj.hash] = 0
        self._drop_everywhere(names)
        await trio.to_thread.run_sync(self.cache.remove, names)

    def _drop_everywhere(self, names: Sequence[str]) -> None:
        """Close every handle's descriptor of entries found corrupt, so that the next read
        opens the refetched entry instead of the evicted one."""
        for state in self._states:
            for name in names:
                state.drop(name)

    def _block_arrived(self, obj: ObjectRef) -> None:
        count = self._present.get(obj.hash, 0) + 1
        self._present[obj.hash] = count
        if count >= nblocks(obj) and obj.hash not in self._verified and self._nursery:
            self._nursery.start_soon(self._verify_blocks, obj)

    def _readahead(self, obj: ObjectRef, off: int, end: int, last: int, state: ReadState) -> None:
        sequential = off == state.next_offset and off > 0
        state.window = min(max(1, state.window * 2), READAHEAD_MAX_BLOCKS) if sequential else 0
        state.next_offset = end
        if not state.window or self._nursery is None:
            return
        run: list[int] = []
        for index in range(last + 1, min(last + 1 + state.window, nblocks(obj))):
            name = self.cache.block_name(obj.hash, index)
            if name in self._inflight or self.cache.has(name, block_length(obj, index)):
                self._start_run(obj, run)
                run = []
                continue
            run.append(index)
            if len(run) == RUN_BLOCKS:
                self._start_run(obj, run)
                run = []
        self._start_run(obj, run)

    def _start_run(self, obj: ObjectRef, run: list[int]) -> None:
        """Start fetching contiguous blocks ``run`` in the background, if a slot is spare
        (one is always left for readers). The blocks count as in flight at once."""
        if not run or self._nursery is None:
            return
        if self._readahead_runs >= self.limiter.total_tokens - 1:
            return
        entries = {}
        for index in run:
            entry = entries[index] = _Inflight()
            self._inflight[self.cache.block_name(obj.hash, index)] = entry
        self._readahead_runs += 1
        self.stats.add("readahead.blocks", len(run))
        self._nursery.start_soon(self._fetch_run, obj, run[0], len(run), entries)

    async def _fetch_run(
        self, obj: ObjectRef, first: int, count: int, entries: dict[int, _Inflight]
    ) -> None:
        token = trio.lowlevel.current_trio_token()

        def on_block(index: int) -> None:  # in the worker thread
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(
                    self._run_block_done, obj, index, entries, trio_token=token
                )

        try:
            fetched = await self._with_retries(
                self.cache.block_name(obj.hash, first), self.downloader.run,
                obj, first, count, on_block,
            )  # fmt: skip
            self.stats.add("fetch.runs")
            self.stats.add("fetch.bytes", fetched)
        except Exception as e:  # a reader that needs one of the blocks will report it
            self.stats.add("readahead.errors")
            log.debug("readahead of %s blocks %d+%d failed: %s", obj.hash, first, count, e)
            for entry in entries.values():
                if not entry.done.is_set():
                    entry.error = e
        finally:
            self._readahead_runs -= 1
            for index, entry in entries.items():
                self._finish(self.cache.block_name(obj.hash, index), entry)

    def _run_block_done(self, obj: ObjectRef, index: int, entries: dict[int, _Inflight]) -> None:
        entry = entries[index]
        if entry.done.is_set():
            return
        self.stats.add("fetch.blocks")
        self._finish(self.cache.block_name(obj.hash, index), entry)
        self._block_arrived(obj)

    def _finish(self, name: str, entry: _Inflight) -> None:
        if self._inflight.get(name) is entry:
            del self._inflight[name]
        entry.done.set()

    # -- coalescing and retries -------------------------------------------------------------

    async def _coalesced(
        self, name: str, download: Callable[..., int], obj: ObjectRef, *args: Any
    ) -> None:
        """Run ``download`` for cache entry ``name`` unless it is running; wait for it."""
        inflight = self._inflight.get(name)
        if inflight is not None:
            with trio.fail_after(self.policy.fetch_timeout + self.policy.attempt_timeout):
                await inflight.done.wait()
            if inflight.error is not None:
                raise inflight.error
            return
        inflight = self._inflight[name] = _Inflight()
        try:
            fetched = await self._with_retries(name, download, obj, *args)
            self.stats.add("fetch.objects" if download == self.downloader.whole else "fetch.blocks")
            self.stats.add("fetch.bytes", fetched)
            if download != self.downloader.whole:
                self._block_arrived(obj)
        except BaseException as e:
            inflight.error = e if isinstance(e, Exception) else StoreError(f"{name}: cancelled")
            self.stats.add("fetch.errors")
            raise
        finally:
            del self._inflight[name]
            inflight.done.set()

    async def _with_retries(
        self, name: str, download: Callable[..., int], obj: ObjectRef, *args: Any
    ) -> int:
        policy = self.policy
        deadline = trio.current_time() + policy.fetch_timeout
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - trio.current_time()
            try:
                with trio.fail_after(max(0.01, min(policy.attempt_timeout, remaining))):
                    job = functools.partial(download, obj, *args, self._pinned())
                    return await trio.to_thread.run_sync(
                        job, limiter=self.limiter, abandon_on_cancel=True
                    )
            except (ObjectNotFoundError, AccessDeniedError, CorruptObjectError, CacheFullError):
                raise
            except trio.TooSlowError:
                error: Exception = StoreError(
                    f"{self.store.describe(data_key(obj.hash))}: no answer within "
                    f"{min(policy.attempt_timeout, remaining):.0f} s",
                    key=self.store.describe(data_key(obj.hash)),
                )
            except (StoreError, OSError) as e:
                error = e
            left = deadline - trio.current_time()
            if attempt >= policy.attempts or left <= 0:
                raise error
            self.stats.add("fetch.retries")
            delay = min(5.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            log.warning("fetch of %s failed (attempt %d): %s; retrying in %.1f s",
                        name, attempt, error, delay)  # fmt: skip
            await trio.sleep(min(delay, left))

    # -- observability ----------------------------------------------------------------------

    def cached_fraction(self, parts: Sequence[ObjectRef]) -> float:
        """Share of a file's bytes present in the cache (0.0 to 1.0); stats only."""
        total = sum(p.size for p in parts)
        if total == 0:
            return 1.0
        have = 0
        for obj in parts:
            if obj.size <= BLOCK_SIZE:
                have += (
                    obj.size if self.cache.has(self.cache.object_name(obj.hash), obj.size) else 0
                )
            else:
                for i in range(nblocks(obj)):
                    length = block_length(obj, i)
                    if self.cache.has(self.cache.block_name(obj.hash, i), length):
                        have += length
        return have / total


def nblocks(obj: ObjectRef) -> int:
    """Number of blocks of a large object."""
    return -(-obj.size // BLOCK_SIZE)


def block_length(obj: ObjectRef, index: int) -> int:
    """Bytes in block ``index`` of ``obj`` (the last block is shorter)."""
    return min(BLOCK_SIZE, obj.size - index * BLOCK_SIZE)


def hash_entries(cache: BlockCache, names: Sequence[str]) -> str | None:
    """xxh128 of the concatenated cache entries ``names``; ``None`` if one is missing."""
    hasher = xxhash.xxh3_128()
    for name in names:
        try:
            with open(cache.path(name), "rb") as f:
                while chunk := f.read(STREAM_CHUNK):
                    hasher.update(chunk)
        except FileNotFoundError:
            return None
    return hasher.hexdigest()


def _read_exactly(body: Readable, length: int) -> bytes:
    """Up to ``length`` bytes from a stream (fewer only at its end)."""
    first = body.read(length)
    if len(first) >= length or not first:
        return first
    parts = [first]
    got = len(first)
    while got < length:
        chunk = body.read(length - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _hash_file(path: str) -> str:
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(STREAM_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()

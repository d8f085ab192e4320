"""Serving reads of CAS objects: memory, then the block cache, then the store.

How a read of bytes ``[off, end)`` of an object is served (mountpoint-s3's prefetcher and
CernVM-FS's verified cache are the models):

* An object of at most ``BLOCK_SIZE`` bytes is one block: fetched whole and checked against
  its size and xxh128 before any byte is served; loaded from the block cache, it is checked
  again on every load.
* A larger object (a big v1 file, a 256 MiB chunk of a v2 file) is served block by block:
  ranged GETs whose answers are checked to be the range asked for, blocks checked against
  the checksum taken on arrival on every load from disk. Its whole hash is computed as its
  blocks arrive in order and checked when the last one arrives; blocks that arrived out of
  order and left memory are re-read from disk in the background once every block has been
  seen (:mod:`vfs.mount.verify`). Once verified, every block must match the verified
  checksums. An object whose hash fails is marked bad: its blocks are dropped from memory
  and disk, ``on_bad`` is told (the FUSE layer invalidates the kernel's pages of every file
  using it), and each read fails until a full refetch verifies. With ``verify="strict"`` no
  byte of an object is served before its hash is checked.
* Verified blocks are kept in a bounded memory LRU (``max_memory`` bytes, cachetools).
* One fetch per block is in flight at a time; readers of that block wait for it (request
  coalescing). Sequential reads through one handle grow a readahead window
  (:mod:`vfs.mount.readahead`), fetched by runs of blocks on spare download slots only.
* Each read has one budget, ``fetch_timeout`` seconds, for everything it waits for; each
  attempt at most ``attempt_timeout``. Failed attempts are retried here (the store client
  does not retry) with exponential backoff and jitter; 404, 403, wrong data and an ignored
  ``Range`` are not retried. An attempt given up shuts its connection, so the worker thread
  ends and its download slot is free at once. A read that failed is failed again without
  waiting for ``failure_ttl`` seconds (the kernel retries a failed read at once).
* Cache writes happen in the background after the data is served and never fail a read.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import cachetools
import trio

from vfs.errors import (
    AccessDeniedError,
    CorruptObjectError,
    ObjectNotFoundError,
    RangeNotHonoredError,
    StoreError,
)
from vfs.mount.blockcache import BlockCache
from vfs.mount.blockfile import POOL, CorruptEntryError, WouldBlock
from vfs.mount.blocks import (
    BLOCK_SIZE,
    aligned_runs,
    backoff_delay,
    block_length,
    block_span,
    group_end,
    is_whole,
    nblocks,
)
from vfs.mount.download import Abort, fetch_blocks, fetch_object
from vfs.mount.objects import CHUNK_SIZE, ObjectRef
from vfs.mount.readahead import RUN_BLOCKS, ReadaheadState, plan_readahead
from vfs.mount.stats import MountStats
from vfs.mount.verify import VERIFY_MODES, ObjectHasher, VerifyState
from vfs.storage import ObjectStore, data_key

log = logging.getLogger(__name__)

T = TypeVar("T")

PERMANENT_ERRORS = (
    ObjectNotFoundError,
    AccessDeniedError,
    CorruptObjectError,
    RangeNotHonoredError,
)
"""Store errors that another attempt would not change."""

PREFETCH_WORKERS = 4
"""Objects prefetched at once (each on one download slot, only while one is spare)."""

WRITES_WAIT_S = 10.0
"""How long a background verification waits for cache writes under way (seconds) when a
block it needs is neither in memory nor on disk yet."""

WRITERS = 4
"""Cache writes at once (worker threads): block files bypass the page cache, so each write
waits for the disk; a few in parallel keep up with the network."""

STREAMS = 256
"""Large objects hashed as their blocks arrive, at most, at once."""

_Key = tuple[str, int]  # (object hash, block index); index 0 for a whole object


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Limits of the fetcher. Times in seconds, sizes in bytes.

    ``max_fetches`` downloads at once (fewer if ``max_memory`` cannot hold that many
    blocks); ``max_memory`` bytes of blocks kept in memory; ``fetch_timeout`` the whole
    budget of one read; ``attempt_timeout`` of one GET; ``attempts`` per fetch;
    ``verify`` one of :data:`VERIFY_MODES`; ``failure_ttl`` how long a failed read fails
    again at once.
    """

    max_fetches: int = 16
    max_memory: int = 256 * 1024 * 1024
    fetch_timeout: float = 60.0
    attempt_timeout: float = 30.0
    attempts: int = 5
    verify: str = "block"
    failure_ttl: float = 1.0

    def __post_init__(self) -> None:
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, not {self.verify!r}")


DEFAULT_POLICY = FetchPolicy()


class _Job:
    """One block being produced; readers of the block wait on ``done``."""

    __slots__ = ("data", "demand", "done", "error", "keep")

    def __init__(self, demand: bool, keep: bool = True) -> None:
        self.done = trio.Event()
        self.data: bytes | memoryview | None = None
        self.error: Exception | None = None
        self.demand = demand
        self.keep = keep  # keep the block in memory (not for background prefetch)


class ContentFetcher:
    """Serves reads of objects (module docstring) from memory, ``cache`` and ``store``.

    ``on_bad(hash)`` is awaited (in the background) when an object fails its whole hash.
    Call :meth:`attach` with a nursery before the first read.
    """

    def __init__(
        self,
        cache: BlockCache,
        store: ObjectStore,
        stats: MountStats,
        policy: FetchPolicy | None = None,
        on_bad: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.cache = cache
        self.store = store
        self.stats = stats
        self.policy = policy = policy or DEFAULT_POLICY
        self.on_bad = on_bad
        memory_blocks = max(1, policy.max_memory // BLOCK_SIZE)
        slots = max(1, min(policy.max_fetches, memory_blocks))
        self.slots = trio.CapacityLimiter(slots)
        # Readahead within the memory it lands in: runs of at most a quarter of it, a window
        # of at most half (the defaults, 256 MiB: 8-block runs, the whole 32-block window),
        # so that blocks fetched ahead are not evicted before the reader gets to them.
        self._run_blocks = max(1, min(RUN_BLOCKS, memory_blocks // 4))
        self._ahead_bytes = max(1, memory_blocks // 2) * BLOCK_SIZE
        # Worker threads: downloads (also abandoned ones, until their socket is shut),
        # cache loads, cache writes. Download *slots* are the limit that matters.
        self._threads = trio.CapacityLimiter(4 * slots + 16)
        self._writers = trio.CapacityLimiter(WRITERS)
        # (data, checksum taken on arrival); a hit on a verified object is checked against
        # the verified checksums, so a block of an older, wrong copy is never served.
        self.memory = BlockMemory(max(policy.max_memory, 1))
        self._failed: cachetools.TTLCache[_Key, Exception] = cachetools.TTLCache(
            maxsize=4096, ttl=policy.failure_ttl
        )
        self.verify = VerifyState()
        self._inflight: dict[_Key, _Job] = {}
        self._seen: dict[str, set[int]] = {}
        self._contact: dict[str, trio.Event] = {}
        self._verifying: set[str] = set()
        # Objects being hashed as their blocks arrive in order (bounded: a stream dropped
        # leaves the check to a re-read once every block was seen).
        self._streams: cachetools.LRUCache[str, ObjectHasher] = cachetools.LRUCache(maxsize=STREAMS)
        self._object_locks: dict[str, trio.Lock] = {}
        self._runs = 0
        self._pending = 0
        self._prefetch_queue: collections.deque[Iterator[ObjectRef]] = collections.deque()
        self._prefetchers = 0
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Give the fetcher a nursery for readahead, verification and cache writes (call it
        in the Trio run that serves the reads)."""
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()

    def open_state(self) -> ReadaheadState:
        """A new per-handle readahead state."""
        return ReadaheadState()

    def is_trusted(self, parts: Sequence[ObjectRef]) -> bool:
        """True when every byte of a file made of ``parts`` is known right, so the kernel
        may keep its pages across opens."""
        return all(is_whole(p) or self.verify.trusted(p) for p in parts)

    # -- reading ----------------------------------------------------------------------------

    async def read(
        self, parts: Sequence[ObjectRef], off: int, size: int, state: ReadaheadState
    ) -> bytes | memoryview:
        """Bytes ``[off, off + size)`` of a file made of ``parts`` (one object, or v2 chunks
        of ``CHUNK_SIZE``), fewer only at the end of the file.

        Raises ``StoreError`` subclasses (also when ``fetch_timeout`` passes) or ``OSError``
        when content cannot be had; the FUSE layer answers EIO.
        """
        file_size = sum(p.size for p in parts)
        end = min(off + size, file_size)
        if off >= end:
            return b""
        self._readahead(parts, state, off, end, file_size)
        hit = self._read_from_memory(parts, off, end)
        if hit is not None:
            return hit[0] if len(hit) == 1 else b"".join(hit)
        timeout = self.policy.fetch_timeout
        pieces: list[memoryview] = []
        with trio.move_on_after(timeout) as scope:
            for part, lo, hi in _spans(parts, off, end):
                pieces += await self._read_object(part, lo, hi)
        if scope.cancelled_caught:
            where = self.store.describe(data_key(parts[0].hash))
            raise StoreError(f"{where}: no data within --fetch-timeout {timeout:g} s", key=where)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _read_from_memory(
        self, parts: Sequence[ObjectRef], off: int, end: int
    ) -> list[memoryview] | None:
        """The pieces of bytes ``[off, end)`` when every block they need is in memory and
        may be served without waiting (objects met before, not bad, verified when
        ``strict``), else ``None``: the fast path of a sequential read, with no checkpoint,
        deadline or task switch (the same checks as :meth:`_read_object`)."""
        pieces: list[memoryview] = []
        hits = 0
        strict = self.policy.verify == "strict"
        for obj, lo, hi in _spans(parts, off, end):
            if is_whole(obj):
                data = self._from_memory(obj, 0)
                if data is None:
                    return None
                pieces.append(memoryview(data)[lo:hi])
                hits += 1
                continue
            contact = self._contact.get(obj.hash)
            if (
                contact is None
                or not contact.is_set()
                or obj.hash in self.verify.bad
                or (strict and obj.hash not in self.verify.sums)
            ):
                return None
            for index in block_span(lo, hi):
                data = self._from_memory(obj, index)
                if data is None:
                    return None
                first = index * BLOCK_SIZE
                pieces.append(
                    memoryview(data)[max(lo, first) - first : min(hi, first + BLOCK_SIZE) - first]
                )
                hits += 1
        self.stats.add("cache.hits", hits)
        return pieces

    async def _read_object(self, obj: ObjectRef, off: int, end: int) -> list[memoryview]:
        if is_whole(obj):
            return [memoryview(await self._whole(obj))[off:end]]
        await self._first_contact(obj)
        if obj.hash in self.verify.bad or (
            self.policy.verify == "strict" and obj.hash not in self.verify.sums
        ):
            await self._verify_fully(obj)
        pieces = []
        for index in block_span(off, end):
            data = memoryview(await self._block(obj, index))
            start = index * BLOCK_SIZE
            pieces.append(data[max(off, start) - start : min(end, start + BLOCK_SIZE) - start])
        return pieces

    # -- whole objects ----------------------------------------------------------------------

    async def _whole(self, obj: ObjectRef) -> bytes | memoryview:
        return await self._coalesced(obj, 0, functools.partial(self._produce_whole, obj))

    async def _produce_whole(self, obj: ObjectRef) -> bytes | memoryview:
        data: bytes | memoryview
        try:
            if not self.cache.has_object(obj):  # one stat: no thread hop for a miss
                raise FileNotFoundError
            data = await self._thread(self.cache.load_object, obj)
            self.stats.add("cache.hits")
            self._remember((obj.hash, 0), data, 0)
            return data
        except FileNotFoundError:
            pass
        except CorruptEntryError as e:
            self._corrupt_entry(e, obj)
        self.stats.add("cache.misses")
        data = await self._attempts(obj, fetch_object, self.store, obj)
        self.stats.add("fetch.objects")
        self.stats.add("fetch.bytes", len(data))
        self._remember((obj.hash, 0), data, 0)
        self._background(self.cache.store_object, obj, data)
        return data

    def _remember(self, key: _Key, data: bytes | memoryview, checksum: int) -> None:
        if len(data) <= self.memory.maxsize:
            self.memory[key] = (data, checksum)

    def _from_memory(self, obj: ObjectRef, index: int) -> bytes | memoryview | None:
        """Block ``index`` from memory, unless it differs from the verified content."""
        hit = self.memory.get((obj.hash, index))
        if hit is None:
            return None
        expect = self.verify.expected_sum(obj, index) if not is_whole(obj) else None
        if expect is not None and hit[1] != expect:
            del self.memory[(obj.hash, index)]
            return None
        return hit[0]

    # -- blocks of large objects ------------------------------------------------------------

    async def _block(self, obj: ObjectRef, index: int) -> bytes | memoryview:
        return await self._coalesced(obj, index, functools.partial(self._produce_block, obj, index))

    async def _produce_block(self, obj: ObjectRef, index: int) -> bytes | memoryview:
        try:
            expect = self.verify.expected_sum(obj, index)
            data, checksum = await self._load_block(obj, index, expect)
            self.stats.add("cache.hits")
            self._arrived(obj, index, data, checksum)
            return data
        except FileNotFoundError:
            pass
        except CorruptEntryError as e:
            self._corrupt_entry(e, obj)
        self.stats.add("cache.misses")
        job = self._inflight[(obj.hash, index)]
        await self._attempts(obj, self._fetch_run_sync, obj, index, 1, {index: job})
        if job.data is None:  # pragma: no cover - the run delivers or raises
            raise StoreError(f"block {index} of {obj.hash} was not delivered")
        return job.data

    async def _load_block(
        self, obj: ObjectRef, index: int, expect: int | None
    ) -> tuple[memoryview, int]:
        """A cached block, checked (:meth:`BlockCache.load_block`): on the event loop when its
        file is wholly in the page cache, else in a worker thread. A block loaded by the
        thread that replies to the kernel is still in that core's cache when the reply copies
        it (measured in a minimal pyfuse3 server of block files: 1.16 GB/s loading them in a
        worker thread, 1.65 GB/s on the event loop). The event loop may then wait for an
        ``open`` of the cache file, nothing longer."""
        try:
            loaded = self.cache.load_block(obj, index, expect, nowait=True)
        except WouldBlock:
            return await self._thread(self.cache.load_block, obj, index, expect)
        self.stats.add("cache.inline")
        return loaded

    def _fetch_run_sync(
        self, obj: ObjectRef, first: int, count: int, jobs: dict[int, _Job], abort: Abort
    ) -> None:
        """In a worker thread: fetch a run of blocks, delivering each on the event loop."""
        token = self._token

        def deliver(index: int, data: memoryview, checksum: int) -> None:
            trio.from_thread.run_sync(
                self._delivered, obj, index, data, checksum, jobs, trio_token=token
            )

        fetch_blocks(self.store, obj, first, count, abort, deliver)

    def _delivered(
        self, obj: ObjectRef, index: int, data: memoryview, checksum: int, jobs: dict[int, _Job]
    ) -> None:
        """On the event loop: a fetched block arrived (raises into the worker thread, which
        stops the run, when it contradicts the verified content)."""
        self.stats.add("fetch.blocks")
        self.stats.add("fetch.bytes", len(data))
        expect = self.verify.expected_sum(obj, index)
        if expect is not None and checksum != expect:
            where = self.store.describe(data_key(obj.hash))
            self._condemn(obj, f"block {index} fetched again differs from the verified content")
            raise CorruptObjectError(
                f"object {where} changed in the store since it was verified (block {index})",
                key=where,
            )
        job = jobs.get(index)
        self._arrived(obj, index, data, checksum, keep=job is None or job.keep)
        if obj.hash not in self.verify.bad:
            self._background(self.cache.store_block, obj, index, data, checksum)
        if job is not None:
            job.data = data

    def _arrived(
        self,
        obj: ObjectRef,
        index: int,
        data: bytes | memoryview,
        checksum: int,
        *,
        keep: bool = True,
    ) -> None:
        """Note a block at hand (kept in memory when ``keep``); start the whole-object check
        when every block was seen."""
        if obj.hash in self.verify.bad:
            return  # a late block of a copy found wrong: not kept
        if keep:
            self._remember((obj.hash, index), data, checksum)
        seen = self._seen.setdefault(obj.hash, set())
        seen.add(index)
        self._stream_hash(obj, index, data, checksum)
        if (
            len(seen) == nblocks(obj)
            and obj.hash not in self.verify.sums
            and obj.hash not in self._verifying
            and self._nursery is not None
        ):
            self._verifying.add(obj.hash)
            self._nursery.start_soon(self._verify_in_background, obj)

    # -- verification -----------------------------------------------------------------------

    def _stream_hash(
        self, obj: ObjectRef, index: int, data: bytes | memoryview, checksum: int
    ) -> None:
        """Hash a large object as its blocks arrive: block ``index`` is fed when it is the
        next in order, then the following ones still in memory. When the last block is fed
        the object is judged at once, without reading it again (blocks that arrive out of
        order and leave memory first leave that to :meth:`_verify_in_background`)."""
        if obj.hash in self.verify.sums or obj.hash in self._verifying:
            return
        hasher = self._streams.get(obj.hash)
        if hasher is None:
            if index != 0:
                return
            hasher = self._streams[obj.hash] = ObjectHasher()
        if index != hasher.blocks:
            return
        count = nblocks(obj)
        hasher.add(data, checksum)
        while hasher.blocks < count:
            hit = self.memory.get((obj.hash, hasher.blocks))
            if hit is None:
                return
            hasher.add(hit[0], hit[1])
        del self._streams[obj.hash]
        self.stats.add("verify.streamed")
        self._judge(obj, hasher)

    async def _first_contact(self, obj: ObjectRef) -> None:
        """Once per process and object: learn from the index whether some process verified
        it already (then it is not hashed again)."""
        event = self._contact.get(obj.hash)
        if event is not None:
            if not event.is_set():
                await event.wait()
            return
        event = self._contact[obj.hash] = trio.Event()
        try:
            sums = await self._thread(self.cache.verified_sums, obj)
            if sums is not None and len(sums) == nblocks(obj) and obj.hash not in self.verify.bad:
                self.verify.mark_verified(obj, sums)
                self.stats.add("verify.shared")
        finally:
            event.set()

    async def _hash_object(self, obj: ObjectRef, *, fetch: bool) -> ObjectHasher | None:
        """Hash ``obj`` block by block: from memory and disk only (else ``None`` when a block
        is not at hand), or with ``fetch`` through the normal path (memory, disk, store)."""
        hasher = ObjectHasher()
        for index in range(nblocks(obj)):
            data: bytes | memoryview | None
            if fetch:
                data = await self._block(obj, index)
            else:
                data = self._from_memory(obj, index)
                if data is None:
                    try:
                        data, _ = await self._thread(self.cache.load_block, obj, index)
                    except (FileNotFoundError, CorruptEntryError):
                        return None
            assert data is not None
            hasher.add(data)
            await trio.lowlevel.checkpoint()
        return hasher

    async def _hash_from_store(self, obj: ObjectRef) -> ObjectHasher:
        """Hash ``obj`` as the store has it now, in runs of blocks that are neither kept nor
        cached (nothing from memory or disk, which may hold an older, wrong copy)."""
        hasher = ObjectHasher()
        count = nblocks(obj)
        for first in range(0, count, self._run_blocks):
            run = min(self._run_blocks, count - first)
            blocks: list[memoryview] = await self._attempts(
                obj, self._fetch_collect_sync, obj, first, run
            )
            for data in blocks:
                hasher.add(data)
            self.stats.add("fetch.blocks", run)
        return hasher

    def _fetch_collect_sync(
        self, obj: ObjectRef, first: int, count: int, abort: Abort
    ) -> list[memoryview]:
        """In a worker thread: blocks ``first`` … of ``obj`` from the store, in a list."""
        blocks: list[memoryview] = []
        fetch_blocks(self.store, obj, first, count, abort, lambda i, d, c: blocks.append(d))
        return blocks

    async def _verify_in_background(self, obj: ObjectRef) -> None:
        """Hash an object whose blocks were all seen (from memory or disk, nothing fetched);
        condemn it on a mismatch. Never raises: a failure leaves the object unverified."""
        try:
            hasher = await self._hash_object(obj, fetch=False)
            if hasher is None and self._pending:  # blocks still on their way to disk
                await self.drain(WRITES_WAIT_S)
                hasher = await self._hash_object(obj, fetch=False)
            if hasher is None:  # a block was evicted meanwhile: wait until all are seen again
                self._seen[obj.hash] = set()
                return
            self._judge(obj, hasher)
        except Exception as e:
            where = self.store.describe(data_key(obj.hash))
            log.warning("verification of %s was not possible (%s); it stays unverified", where, e)
        finally:
            self._verifying.discard(obj.hash)

    async def _verify_fully(self, obj: ObjectRef) -> None:
        """Get every block of ``obj`` (memory, disk, store) and check its hash before
        anything is served: for ``--verify strict`` and for objects found bad. Raises
        :class:`CorruptObjectError` when it still hashes wrong."""
        lock = self._object_locks.setdefault(obj.hash, trio.Lock())
        async with lock:
            if self.verify.trusted(obj):
                return
            failed = self._failed.get((obj.hash, -1))
            if failed is not None:
                raise failed
            self._verifying.add(obj.hash)  # no background check of the same blocks
            try:
                if obj.hash in self.verify.bad:  # a refetch: what the store has now
                    hasher: ObjectHasher | None = await self._hash_from_store(obj)
                else:
                    hasher = await self._hash_object(obj, fetch=True)
            finally:
                self._verifying.discard(obj.hash)
            assert hasher is not None
            if not self._judge(obj, hasher):
                where = self.store.describe(data_key(obj.hash))
                error = CorruptObjectError(
                    f"object {where} hashes to {hasher.hexdigest()}, not {obj.hash}", key=where
                )
                self._failed[(obj.hash, -1)] = error
                raise error

    def _judge(self, obj: ObjectRef, hasher: ObjectHasher) -> bool:
        """Record the outcome of hashing ``obj``: verified (shared through the index), or
        condemned. Returns whether it hashed right."""
        self.stats.add("verify.objects")
        actual = hasher.hexdigest()
        if actual == obj.hash:
            self.verify.mark_verified(obj, tuple(hasher.sums))
            self._background(self.cache.record_verified, obj, hasher.sums)
            return True
        self._condemn(obj, f"its blocks hash to {actual}, not {obj.hash}")
        return False

    def _condemn(self, obj: ObjectRef, why: str) -> None:
        """``obj`` is wrong: drop its blocks everywhere and have the kernel's pages of every
        file using it invalidated; reads fail until a full refetch verifies."""
        self.stats.add("verify.failed")
        first = obj.hash not in self.verify.bad
        self.verify.mark_bad(obj)
        self._seen.pop(obj.hash, None)
        self._streams.pop(obj.hash, None)
        for key in [k for k in self.memory if k[0] == obj.hash]:
            self.memory.pop(key, None)
        self._background(self.cache.forget_object, obj)
        if first:
            log.error(
                "object %s is wrong: %s; dropped its cached blocks and the kernel's pages of "
                "the files using it; their reads fail (EIO) until a refetch verifies",
                self.store.describe(data_key(obj.hash)), why,
            )  # fmt: skip
        if first and self.on_bad is not None and self._nursery is not None:
            self._nursery.start_soon(self._failsafe, self.on_bad, obj.hash)

    def _corrupt_entry(self, error: CorruptEntryError, obj: ObjectRef) -> None:
        self.stats.add("cache.corrupt")
        log.warning(
            "%s; removed it, fetching %s again", error, self.store.describe(data_key(obj.hash))
        )

    # -- readahead --------------------------------------------------------------------------

    def _readahead(
        self, parts: Sequence[ObjectRef], state: ReadaheadState, off: int, end: int, size: int
    ) -> None:
        ahead = plan_readahead(state, off, end, size)
        if not ahead or self._nursery is None:
            return
        ahead = range(ahead.start, min(ahead.stop, ahead.start + self._ahead_bytes))
        for number, part in enumerate(parts):
            start = number * CHUNK_SIZE
            lo, hi = max(ahead.start, start), min(ahead.stop, start + part.size)
            if lo >= hi or is_whole(part) or not self._may_prefetch(part):
                continue
            # blocks after the ones this read needs (those are fetched on demand), to the end
            # of the aligned group the window reaches into: one GET per group
            after = (end - 1 - start) // BLOCK_SIZE + 1 if end > start else 0
            last = group_end((hi - start - 1) // BLOCK_SIZE, self._run_blocks, nblocks(part))
            wanted = [
                i
                for i in range((lo - start) // BLOCK_SIZE, last)
                if i >= after
                and (part.hash, i) not in self.memory and (part.hash, i) not in self._inflight
                and i not in self._seen.get(part.hash, ())
            ]  # fmt: skip
            for run in aligned_runs(wanted, self._run_blocks):
                if self._runs >= self.slots.total_tokens - 1:
                    return  # one slot is always left for readers
                jobs = self._register(part, run)
                self._runs += 1
                self.stats.add("readahead.blocks", len(run))
                self._nursery.start_soon(self._readahead_run, part, run[0], len(run), jobs)

    async def _present(self, obj: ObjectRef) -> set[int]:
        """Indices of the cached blocks of ``obj`` (from the cache's map, else listed in a
        worker thread)."""
        present = self.cache.known_blocks(obj.hash)
        if present is None:
            present = await self._thread(self.cache.present_blocks, obj.hash)
        return present

    def _may_prefetch(self, obj: ObjectRef) -> bool:
        return obj.hash not in self.verify.bad and (
            self.policy.verify != "strict" or obj.hash in self.verify.sums
        )

    async def _readahead_run(
        self, obj: ObjectRef, first: int, count: int, jobs: dict[int, _Job]
    ) -> None:
        try:
            present = await self._present(obj)
            todo = [i for i in jobs if i not in present]
            missing: list[int] = []

            async def load(index: int) -> None:
                if not await self._prefetch_cached(obj, index, jobs[index]):
                    missing.append(index)

            cached = sorted(set(jobs) - set(todo))
            # a cache disk that hangs holds this run no longer than a read's budget: the
            # blocks not loaded by then are left to their readers (woken by _finish below)
            with trio.move_on_after(self.policy.fetch_timeout):
                if len(cached) > 1:  # one disk read of them all at once, not one by one
                    await self._thread(self.cache.advise_blocks, obj.hash, cached)
                async with trio.open_nursery() as loads:  # cached: into memory, checked
                    for index in cached:
                        loads.start_soon(load, index)
            todo = sorted(todo + missing)
            for run in aligned_runs(todo, self._run_blocks):
                await self._fetch_run(obj, {i: jobs[i] for i in run})
                self.stats.add("fetch.runs")
        except Exception as e:  # a reader that needs one of the blocks fetches it itself
            self.stats.add("readahead.errors")
            log.debug("readahead of %s blocks %d+%d failed: %s", obj.hash, first, count, e)
        finally:
            self._runs -= 1
            self._finish(obj, jobs)

    # -- background prefetch ----------------------------------------------------------------

    def prefetch(self, objects: Iterable[ObjectRef]) -> None:
        """Queue ``objects`` to be fetched into the block cache in the background, on spare
        download slots only (one slot is always left for readers; demand reads go first).
        Cached objects are skipped; nothing is kept in memory. ``objects`` is consumed
        lazily, as the prefetch goes."""
        if self._nursery is None:
            return
        self._prefetch_queue.append(iter(objects))
        while self._prefetchers < PREFETCH_WORKERS and self._prefetch_queue:
            self._prefetchers += 1
            self._nursery.start_soon(self._prefetch_worker)

    async def _prefetch_worker(self) -> None:
        try:
            while self._prefetch_queue:
                obj = next(self._prefetch_queue[0], None)
                if obj is None:
                    self._prefetch_queue.popleft()
                    continue
                try:
                    await self._prefetch_object(obj)
                except Exception as e:  # a reader that needs it fetches it itself
                    self.stats.add("prefetch.errors")
                    log.debug("prefetch of %s failed: %s", obj.hash, e)
        finally:
            self._prefetchers -= 1

    async def _spare_slot(self) -> None:
        """Wait until a download slot is spare beyond the one kept for readers."""
        while self.slots.borrowed_tokens >= self.slots.total_tokens - 1:
            await trio.sleep(0.02)

    async def _prefetch_object(self, obj: ObjectRef) -> None:
        if obj.hash in self.verify.bad:
            return
        if is_whole(obj):
            key = (obj.hash, 0)
            if key in self.memory or key in self._inflight or obj.size == 0:
                return
            if self.cache.has_object(obj):
                return
            await self._spare_slot()
            if key in self._inflight:
                return
            jobs = self._register(obj, [0], keep=False)
            try:
                with trio.fail_after(self.policy.fetch_timeout):
                    data = await self._attempts(obj, fetch_object, self.store, obj)
                jobs[0].data = data
                self.stats.add("prefetch.bytes", len(data))
                self._background(self.cache.store_object, obj, data)
            finally:
                self._finish(obj, jobs)
            return
        present = await self._present(obj)
        missing = [
            i for i in range(nblocks(obj))
            if i not in present and (obj.hash, i) not in self._inflight
            and (obj.hash, i) not in self.memory
        ]  # fmt: skip
        for run in aligned_runs(missing, self._run_blocks):
            await self._spare_slot()
            run = [i for i in run if (obj.hash, i) not in self._inflight]
            if not run:
                continue
            jobs = self._register(obj, run, keep=False)
            try:
                await self._fetch_run(obj, jobs)
                self.stats.add("prefetch.bytes", sum(block_length(obj, i) for i in run))
            finally:
                self._finish(obj, jobs)

    async def _prefetch_cached(self, obj: ObjectRef, index: int, job: _Job) -> bool:
        """Load a cached block ahead of the reader (checked like any load) and hand it to the
        readers waiting on ``job``; ``False`` when it has to be fetched after all."""
        try:
            expect = self.verify.expected_sum(obj, index)
            data, checksum = await self._load_block(obj, index, expect)
        except FileNotFoundError:
            return False
        except CorruptEntryError as e:
            self._corrupt_entry(e, obj)
            return False
        self.stats.add("cache.hits")
        self._arrived(obj, index, data, checksum)
        job.data = data
        self._finish(obj, {index: job})  # readers go on with it before the rest of the run
        return True

    def _register(
        self, obj: ObjectRef, indices: Sequence[int], *, keep: bool = True
    ) -> dict[int, _Job]:
        """Register background jobs for blocks ``indices`` of ``obj`` as in flight (kept in
        memory when delivered if ``keep``), so that readers of them wait instead of fetching."""
        jobs = {i: _Job(demand=False, keep=keep) for i in indices}
        for i, job in jobs.items():
            self._inflight[(obj.hash, i)] = job
        return jobs

    def _finish(self, obj: ObjectRef, jobs: dict[int, _Job]) -> None:
        """``jobs`` of ``obj`` are over (delivered or not): off the in-flight map (unless a
        newer job took the key), their readers woken."""
        for index, job in jobs.items():
            key = (obj.hash, index)
            if self._inflight.get(key) is job:
                del self._inflight[key]
            job.done.set()

    async def _fetch_run(self, obj: ObjectRef, jobs: dict[int, _Job]) -> None:
        """Fetch the consecutive blocks of ``jobs`` with one ranged GET (retried), delivering
        each to its job, within ``fetch_timeout``."""
        first = min(jobs)
        with trio.fail_after(self.policy.fetch_timeout):
            await self._attempts(obj, self._fetch_run_sync, obj, first, len(jobs), jobs)

    # -- coalescing, retries, threads -------------------------------------------------------

    async def _coalesced(
        self, obj: ObjectRef, index: int, produce: Callable[[], Awaitable[bytes | memoryview]]
    ) -> bytes | memoryview:
        """The block ``key`` from memory, from a fetch under way, or by ``produce``. A reader
        whose deadline passes leaves a failure that fails the next reads of the block at once
        for ``failure_ttl`` seconds (the kernel retries a failed read straight away)."""
        key = (obj.hash, index)
        try:
            return await self._coalesced_inner(obj, index, produce)
        except Exception as e:
            self._failed[key] = e
            raise
        except BaseException:  # cancelled: the reader's deadline passed
            where = self.store.describe(data_key(key[0]))
            self._failed[key] = StoreError(
                f"{where}: no data within --fetch-timeout {self.policy.fetch_timeout:g} s",
                key=where,
            )
            raise

    async def _coalesced_inner(
        self, obj: ObjectRef, index: int, produce: Callable[[], Awaitable[bytes | memoryview]]
    ) -> bytes | memoryview:
        key = (obj.hash, index)
        while True:
            data = self._from_memory(obj, index)
            if data is not None:
                self.stats.add("cache.hits")
                return data
            job = self._inflight.get(key)
            if job is None:
                break
            await job.done.wait()
            if job.data is not None:
                return job.data
            if job.demand and job.error is not None:
                raise job.error
            # a readahead run that failed or skipped the block: produce it ourselves
        failed = self._failed.get(key)
        if failed is not None:
            raise failed
        job = self._inflight[key] = _Job(demand=True)
        try:
            job.data = await produce()
            return job.data
        except Exception as e:
            job.error = e
            self.stats.add("fetch.errors")
            raise
        except BaseException:
            job.demand = False  # waiters with time left go on alone
            raise
        finally:
            self._finish(obj, {index: job})

    async def _attempts(self, obj: ObjectRef, download: Callable[..., T], *args: object) -> T:
        """``download(*args, abort)`` in a worker thread on a download slot, retried with
        backoff until ``attempts`` run out; the caller's deadline bounds it all."""
        policy = self.policy
        where = self.store.describe(data_key(obj.hash))
        attempt = 0
        while True:
            attempt += 1
            abort = Abort()
            try:
                with trio.fail_after(policy.attempt_timeout):
                    async with self.slots:
                        return await self._thread(download, *args, abort)
            except PERMANENT_ERRORS:
                raise
            except trio.TooSlowError:
                error: Exception = StoreError(
                    f"GET {where}: no answer within {policy.attempt_timeout:g} s", key=where
                )
            except (StoreError, OSError) as e:
                error = e
            finally:
                abort.fire()  # no-op after a finished download; frees a stalled thread
            if attempt >= policy.attempts:
                raise error
            self.stats.add("fetch.retries")
            delay = backoff_delay(attempt)
            log.info(
                "GET %s failed (attempt %d): %s; retrying in %.1f s", where, attempt, error, delay
            )
            await trio.sleep(delay)

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread; abandoned (not waited for) when cancelled."""
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args), abandon_on_cancel=True, limiter=self._threads
        )

    def _background(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` in a writer thread after the read was served (failsafe)."""
        if self._nursery is None:
            return

        async def run() -> None:
            try:
                await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._writers)
            finally:
                self._pending -= 1

        self._pending += 1
        self._nursery.start_soon(self._failsafe, run)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for background cache writes to finish (before
        unmounting, so that what was read is cached for the next mount)."""
        with trio.move_on_after(timeout):
            while self._pending:
                await trio.sleep(0.02)

    async def _failsafe(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Await ``fn(*args)``; log, never raise, an error (background work never kills the
        mount)."""
        try:
            await fn(*args)
        except Exception:
            log.exception(
                "background task %s failed; the mount goes on", getattr(fn, "__name__", fn)
            )

    # -- observability ----------------------------------------------------------------------

    def cached_fraction(self, parts: Sequence[ObjectRef]) -> float:
        """Share of a file's bytes present in the cache (0.0 to 1.0); stats only."""
        total = sum(p.size for p in parts)
        if total == 0:
            return 1.0
        have = 0
        for obj in parts:
            if is_whole(obj):
                have += obj.size if self.cache.has_object(obj) else 0
            else:
                present = self.cache.present_blocks(obj.hash)
                have += sum(block_length(obj, i) for i in present if i < nblocks(obj))
        return have / total


def _spans(parts: Sequence[ObjectRef], off: int, end: int) -> Iterator[tuple[ObjectRef, int, int]]:
    """The objects of a file made of ``parts`` (v2 chunks of ``CHUNK_SIZE``) that bytes
    ``[off, end)`` of the file touch, each with its own ``[lo, hi)`` range of those bytes."""
    for number, obj in enumerate(parts):
        start = number * CHUNK_SIZE
        if start >= end:
            break
        if start + obj.size > off:
            yield obj, max(off, start) - start, min(end, start + obj.size) - start


def _entry_size(entry: tuple[bytes | memoryview, int]) -> int:
    return len(entry[0])


class BlockMemory(cachetools.LRUCache[_Key, tuple[bytes | memoryview, int]]):
    """Blocks in memory, ``(data, checksum taken on arrival)`` by ``(hash, index)``, at most
    ``maxsize`` bytes, least recently used out first. A block's buffer leaving goes back to
    :data:`~vfs.mount.blockfile.POOL`, to be reused once nothing else uses it."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize=maxsize, getsizeof=_entry_size)

    def __delitem__(self, key: _Key) -> None:
        data = cachetools.Cache.__getitem__(self, key)[0]
        super().__delitem__(key)
        POOL.retire(data)

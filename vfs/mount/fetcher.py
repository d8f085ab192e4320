"""Getting CAS objects into the cache without blocking the trio loop.

One fetch per object is in flight at a time: every reader that needs an object being
fetched waits for that fetch (request coalescing, as CernVM-FS collapses same-URL
downloads). Downloads and hashing run in worker threads bounded by a
``trio.CapacityLimiter``.
"""

from __future__ import annotations

import logging

import trio

from vfs.mount.cache import ObjectCache
from vfs.mount.stats import MountStats
from vfs.storage import ObjectStore

log = logging.getLogger(__name__)


class _Inflight:
    __slots__ = ("done", "error", "path")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.path: str | None = None
        self.error: BaseException | None = None


class ObjectFetcher:
    """Ensures objects are in ``cache``, fetching them from ``store`` when missing.

    ``max_fetches`` bounds concurrent downloads (worker threads).
    """

    def __init__(
        self, cache: ObjectCache, store: ObjectStore, stats: MountStats, max_fetches: int = 16
    ) -> None:
        self.cache = cache
        self.store = store
        self.stats = stats
        self.limiter = trio.CapacityLimiter(max_fetches)
        self._inflight: dict[str, _Inflight] = {}

    async def ensure(self, hash_: str, size: int) -> str:
        """Path of the verified cached object ``hash_`` of ``size`` bytes.

        Raises what the fetch raised (``StoreError`` subclasses, ``OSError``) to every waiter.
        """
        path = self.cache.lookup(hash_, size)
        if path is not None:
            self.stats.add("cache.hits")
            return path
        self.stats.add("cache.misses")
        inflight = self._inflight.get(hash_)
        if inflight is not None:
            await inflight.done.wait()
            if inflight.error is not None:
                raise inflight.error
            assert inflight.path is not None
            return inflight.path
        inflight = self._inflight[hash_] = _Inflight()
        try:
            inflight.path = await trio.to_thread.run_sync(
                self.cache.fetch, self.store, hash_, size, limiter=self.limiter
            )
            self.stats.add("fetch.objects")
            self.stats.add("fetch.bytes", size)
            return inflight.path
        except BaseException as e:
            inflight.error = e
            self.stats.add("fetch.errors")
            raise
        finally:
            del self._inflight[hash_]
            inflight.done.set()

"""Filling the block cache ahead of a task (``vfs cache warm``).

What to warm comes from the mount's own :class:`~vfs.mount.tree.InodeTree` (same loading,
same merge, same checks), so that ``cache warm`` fetches exactly the content a mount of the
same manifests would read.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vfs.errors import CorruptObjectError, VfsError
from vfs.mount.blockcache import BLOCK_SIZE, BlockCache
from vfs.mount.fetcher import Downloader, block_length, hash_entries, nblocks
from vfs.mount.objects import ObjectRef
from vfs.mount.tree import ROOT_INODE, InodeTree
from vfs.storage import ObjectStore, data_key

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WarmSummary:
    """Outcome of warming: distinct objects, how many were already cached, bytes fetched,
    and the failures (one line each, naming the key)."""

    objects: int = 0
    cached: int = 0
    fetched_bytes: int = 0
    failures: list[str] | None = None


def tree_objects(
    tree: InodeTree, include: Sequence[str] = ()
) -> tuple[list[str], dict[str, ObjectRef]]:
    """The regular files of ``tree`` whose path matches an ``include`` glob (``fnmatch``;
    every file when there is none), and the distinct CAS objects holding their content
    (one per file, or each 256 MiB chunk of a chunked v2 file), by hash.

    Symbolic links have no content and are left out. Paths are relative, ``/``-separated,
    as the manifests spell them.
    """
    paths: list[str] = []
    objects: dict[str, ObjectRef] = {}
    stack: list[tuple[int, str]] = [(ROOT_INODE, "")]
    while stack:
        dir_ino, prefix = stack.pop()
        for bname, ino in tree.entries(dir_ino):
            path = prefix + bname.decode("utf-8", "surrogateescape")
            if tree.is_dir(ino):
                stack.append((ino, path + "/"))
                continue
            if ino in tree.symlinks:
                continue
            if include and not any(fnmatch.fnmatch(path, g) for g in include):
                continue
            paths.append(path)
            for part in tree.file_parts(ino):
                objects[part.hash] = part
    return paths, objects


def warm_cache(
    cache: BlockCache,
    store: ObjectStore,
    objects: Iterable[ObjectRef],
    *,
    workers: int = 8,
    on_bytes: Callable[[int], None] | None = None,
) -> WarmSummary:
    """Fetch every object not yet cached, verified like the mount verifies reads.

    Large objects are fetched block by block and then hashed as a whole; on a mismatch
    their blocks are evicted and the failure is reported. ``on_bytes(n)`` is called as
    bytes arrive or are found cached (for a progress bar).
    """
    downloader = Downloader(cache, store)
    distinct = {o.hash: o for o in objects}
    summary = WarmSummary(objects=len(distinct), failures=[])
    lock = threading.Lock()

    def progress(n: int) -> None:
        if on_bytes is not None:
            with lock:
                on_bytes(n)

    def one(obj: ObjectRef) -> None:
        try:
            fetched = _warm_one(cache, downloader, obj, progress)
        except (VfsError, OSError) as e:
            with lock:
                assert summary.failures is not None
                summary.failures.append(str(e))
            return
        with lock:
            summary.fetched_bytes += fetched
            summary.cached += fetched == 0

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, distinct.values()))
    return summary


def _warm_one(
    cache: BlockCache, downloader: Downloader, obj: ObjectRef, progress: Callable[[int], None]
) -> int:
    if obj.size <= BLOCK_SIZE:
        if cache.has(cache.object_name(obj.hash), obj.size):
            progress(obj.size)
            return 0
        fetched = downloader.whole(obj)
        progress(obj.size)
        return fetched
    fetched = 0
    names = []
    for index in range(nblocks(obj)):
        name = cache.block_name(obj.hash, index)
        names.append(name)
        length = block_length(obj, index)
        if not cache.has(name, length):
            fetched += downloader.block(obj, index, pinned=names)
        progress(length)
    actual = hash_entries(cache, names)
    if actual != obj.hash:
        cache.remove(names)
        where = store_key(downloader, obj)
        raise CorruptObjectError(
            f"object {where} hashes to {actual}, not {obj.hash}; its blocks were evicted",
            key=where,
        )
    return fetched


def store_key(downloader: Downloader, obj: ObjectRef) -> str:
    """Full location of an object for messages."""
    return downloader.store.describe(data_key(obj.hash))

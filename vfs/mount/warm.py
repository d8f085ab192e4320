"""Filling the block cache ahead of a task (``vfs cache warm``).

What to warm comes from the mount's own :class:`~vfs.mount.tree.InodeTree` (same loading,
same merge, same checks), so that ``cache warm`` fetches exactly the content a mount of the
same manifests would read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vfs.errors import CorruptObjectError, VfsError
from vfs.manifest.globs import glob_matches
from vfs.mount.blockcache import BlockCache
from vfs.mount.blockfile import CorruptEntryError
from vfs.mount.blocks import is_whole, nblocks
from vfs.mount.download import Abort, fetch_blocks, fetch_object
from vfs.mount.objects import ObjectRef
from vfs.mount.readahead import RUN_BLOCKS
from vfs.mount.tree import ROOT_INODE, InodeTree
from vfs.mount.verify import ObjectHasher
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
    """The regular files of ``tree`` whose path matches an ``include`` glob (every file when
    there is none), and the distinct CAS objects holding their content
    (one per file, or each 256 MiB chunk of a chunked v2 file), by hash.

    The globs mean what they mean to ``vfs manifest snapshot -i`` (deadline's recursive
    ``glob``, :mod:`vfs.manifest.globs`): ``*`` stays within one path component, ``**/``
    spans directories, and neither matches names starting with ``.``. Symbolic links have
    no content and are left out. Paths are relative, ``/``-separated, as the manifests
    spell them.
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
            if include and not any(glob_matches(path, g) for g in include):
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

    A whole object is checked against its hash before it is cached. A large object is
    hashed as a whole from its cached and fetched blocks (each checked on load); when it
    hashes right it is recorded as verified in the cache index (mounts then trust it
    without hashing again), otherwise its blocks are removed and the failure is reported.
    ``on_bytes(n)`` is called as bytes arrive or are found cached (for a progress bar).
    """
    distinct = {o.hash: o for o in objects}
    summary = WarmSummary(objects=len(distinct), failures=[])
    lock = threading.Lock()

    def progress(n: int) -> None:
        if on_bytes is not None:
            with lock:
                on_bytes(n)

    def one(obj: ObjectRef) -> None:
        try:
            fetched = _warm_one(cache, store, obj, progress)
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
    cache: BlockCache, store: ObjectStore, obj: ObjectRef, progress: Callable[[int], None]
) -> int:
    """Warm one object; the bytes fetched (0: it was cached)."""
    if is_whole(obj):
        try:
            cache.load_object(obj)
            progress(obj.size)
            return 0
        except (FileNotFoundError, CorruptEntryError):
            pass
        data = fetch_object(store, obj, Abort())
        _store(cache.store_object(obj, data), obj)
        progress(obj.size)
        return len(data)
    known = cache.verified_sums(obj)
    hasher = ObjectHasher()
    fetched = 0
    present = cache.present_blocks(obj.hash)
    index = 0
    count = nblocks(obj)
    while index < count:
        if index in present:
            try:
                expect = known[index] if known else None
                block, _ = cache.load_block(obj, index, expect)
                hasher.add(block)
                progress(len(block))
                index += 1
                continue
            except (FileNotFoundError, CorruptEntryError):
                pass
        run = 1
        while run < RUN_BLOCKS and index + run < count and index + run not in present:
            run += 1

        def deliver(i: int, data: memoryview, checksum: int) -> None:
            nonlocal fetched
            hasher.add(data)
            cache.store_block(obj, i, data, checksum)
            fetched += len(data)
            progress(len(data))

        fetch_blocks(store, obj, index, run, Abort(), deliver)
        index += run
    if hasher.hexdigest() != obj.hash:
        cache.forget_object(obj)
        where = store.describe(data_key(obj.hash))
        raise CorruptObjectError(
            f"object {where} hashes to {hasher.hexdigest()}, not {obj.hash}; "
            "its blocks were removed from the cache",
            key=where,
        )
    if known is None:
        cache.record_verified(obj, hasher.sums)
    return fetched


def _store(stored: bool, obj: ObjectRef) -> None:
    if not stored:
        log.info("object %s was fetched but not cached (cache full or busy)", obj.hash)

"""The pyfuse3 ``Operations`` of a read-only mount: a thin translation layer.

Requests are answered from the :class:`~vfs.mount.tree.InodeTree` (metadata) and the
:class:`~vfs.mount.fetcher.ContentFetcher` (content). The tree never changes while mounted,
so every reply carries long entry and attribute timeouts, absent names are answered with
cached negative entries, and files whose every byte is known right (small objects, large ones
whose whole hash was checked) are opened with ``keep_cache``: after the first pass the kernel
answers on its own (fuse-anchors.md §3.3). When an object turns out wrong, the kernel's pages of
every file using it are invalidated (:meth:`ReadOnlyOperations.invalidate_object`).

A read returns exactly ``min(size, file size - offset)`` bytes or fails with EIO: a short
read would make the kernel take the file for shorter than ``st_size`` (FUSE trims its size on
a short read), so it is never passed off as the end of a file.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar

import pyfuse3
import trio

from vfs.errors import VfsError
from vfs.mount.fetcher import ContentFetcher
from vfs.mount.objects import ObjectRef
from vfs.mount.prefetch import PrefetchPlanner
from vfs.mount.readahead import ReadaheadState
from vfs.mount.stats import MountStats
from vfs.mount.tree import InodeTree

log = logging.getLogger(__name__)

CACHE_TIMEOUT = 365 * 24 * 3600.0
"""Entry and attribute timeout in seconds: the base tree is immutable."""

BLOCK_SIZE = 128 * 1024
"""``st_blksize`` reported for files: the preferred I/O size."""

XATTR_HASH = b"user.vfs.hash"
XATTR_CACHED = b"user.vfs.cached"
XATTR_SOURCE = b"user.vfs.source"
XATTR_STATS = b"user.vfs.stats"


_P = ParamSpec("_P")
_R = TypeVar("_R")
_Self = TypeVar("_Self", bound="ReadOnlyOperations")


def _guarded(
    handler: Callable[Concatenate[_Self, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_Self, _P], Coroutine[Any, Any, _R]]:
    """Turn an unexpected exception into EIO and a log line.

    pyfuse3 only answers ``FUSEError``; any other exception would end its main loop and
    take the mount down with it.
    """

    @functools.wraps(handler)
    async def wrapper(self: _Self, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await handler(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            self.stats.add("eio")
            log.exception("internal error in %s%r", handler.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass(slots=True)
class _Handle:
    inode: int
    parts: tuple[ObjectRef, ...]
    size: int
    state: ReadaheadState
    read_once: bool = False


def describe_error(error: BaseException) -> str:
    """One line for the log: vfs errors name their key; others get their type."""
    if isinstance(error, VfsError):
        return str(error)
    if isinstance(error, OSError):
        return f"{error.strerror or error} ({error.filename or 'cache'})"
    return f"{type(error).__name__}: {error}"


class ReadOnlyOperations(pyfuse3.Operations):
    """FUSE operations over ``tree``, reading content through ``fetcher``."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: InodeTree,
        fetcher: ContentFetcher,
        stats: MountStats,
        prefetch: PrefetchPlanner | None = None,
    ) -> None:
        super().__init__()
        self.tree = tree
        self.fetcher = fetcher
        self.stats = stats
        self.prefetch = prefetch
        # Owner and permission bits of the base tree (--uid, --gid, --dir-mode, --file-mode);
        # runnable files get x where file_mode has r.
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.dir_mode = 0o755
        self.file_mode = 0o644
        self._handles: dict[int, _Handle] = {}
        self._dir_handles: dict[int, list[tuple[bytes, int]]] = {}
        self._next_fh = 1

    # -- attributes -------------------------------------------------------------------------

    def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        tree = self.tree
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = CACHE_TIMEOUT
        a.attr_timeout = CACHE_TIMEOUT
        if ino in tree.children:
            a.st_mode = stat.S_IFDIR | self.dir_mode
            a.st_size = 4096
            a.st_nlink = tree.nlink(ino)
        else:
            if ino in tree.symlinks:
                a.st_mode = stat.S_IFLNK | 0o777
            elif ino in tree.runnable:
                a.st_mode = stat.S_IFREG | self.file_mode | (self.file_mode & 0o444) >> 2
            else:
                a.st_mode = stat.S_IFREG | self.file_mode
            a.st_size = tree.size[ino]
            a.st_nlink = 1
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_blksize = BLOCK_SIZE
        a.st_blocks = (a.st_size + 511) // 512
        ns = tree.mtime[ino] * 1000
        a.st_mtime_ns = ns
        a.st_ctime_ns = ns
        a.st_atime_ns = ns
        return a

    def _negative(self) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = 0
        a.entry_timeout = CACHE_TIMEOUT
        return a

    @_guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.stats.add("req.lookup")
        if name == b".":
            return self._attrs(parent_inode)
        if name == b"..":
            return self._attrs(self.tree.parent[parent_inode] or parent_inode)
        ino = self.tree.lookup(parent_inode, name)
        if ino is None:
            return self._negative()
        return self._attrs(ino)

    @_guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.stats.add("req.getattr")
        if not self.tree.exists(inode):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:  # type: ignore[override]
        # Base inodes live as long as the mount; lookup counts need no tracking.
        return None

    @_guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLOCK_SIZE
        s.f_frsize = 4096
        s.f_blocks = (self.tree.total_size + 4095) // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.tree)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    @_guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        self.stats.add("req.readlink")
        target = self.tree.symlinks.get(inode)
        if target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return target

    # -- directories ------------------------------------------------------------------------

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self.stats.add("req.opendir")
        if not self.tree.is_dir(inode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        # Snapshot the entries once per open: readdir is called many times with offsets.
        self._dir_handles[fh] = list(self.tree.entries(inode))
        return fh

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self.stats.add("req.readdir")
        entries = self._dir_handles[fh]
        for index in range(start_id, len(entries)):
            name, ino = entries[index]
            if not pyfuse3.readdir_reply(token, name, self._attrs(ino), index + 1):
                break

    @_guarded
    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    # -- files ------------------------------------------------------------------------------

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self.stats.add("req.open")
        if self.tree.is_dir(inode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not self.tree.exists(inode):
            raise pyfuse3.FUSEError(errno.ENOENT)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        parts = self.tree.file_parts(inode)
        fh = self._next_fh
        self._next_fh += 1
        size = self.tree.size[inode]
        self._handles[fh] = _Handle(inode, parts, size, self.fetcher.open_state())
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.fetcher.is_trusted(parts))

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.stats.add("req.read")
        handle = self._handles[fh]
        if off >= handle.size:
            return b""
        want = min(size, handle.size - off)
        try:
            data = await self.fetcher.read(handle.parts, off, size, handle.state)
        except Exception as e:
            self._failed_read(handle, describe_error(e))
        if len(data) != want:
            self._failed_read(handle, f"{len(data)} bytes at offset {off} instead of {want}")
        self.stats.add("read.bytes", want)
        if not handle.read_once:
            handle.read_once = True
            if self.prefetch is not None:
                planner = self.prefetch
                self.fetcher.prefetch(planner.objects(planner.after_read(handle.inode)))
        return data  # type: ignore[return-value]  # any buffer will do for pyfuse3

    def _failed_read(self, handle: _Handle, why: str) -> NoReturn:
        self.stats.add("eio")
        log.error("read of %s failed: %s", self.tree.path_of(handle.inode), why)
        raise pyfuse3.FUSEError(errno.EIO) from None

    @_guarded
    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    async def invalidate_object(self, hash_: str) -> None:
        """Drop the kernel's cached pages (and attributes) of every file whose content
        includes object ``hash_`` (it failed verification). Runs the invalidations in a
        worker thread: pyfuse3 advises against calling them from the main loop."""
        inodes = self.tree.inodes_with_hash(hash_)

        def invalidate() -> None:
            for ino in inodes:
                try:
                    pyfuse3.invalidate_inode(ino, attr_only=False)
                except OSError as e:  # ENOENT: the kernel does not know the inode
                    log.debug("invalidate_inode(%d): %s", ino, e)

        await trio.to_thread.run_sync(invalidate, abandon_on_cancel=True)
        log.info("invalidated the kernel's pages of %d file(s) using %s", len(inodes), hash_)

    # -- extended attributes ----------------------------------------------------------------

    @_guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        tree = self.tree
        if name == XATTR_STATS and inode == pyfuse3.ROOT_INODE:
            return self.stats.to_json()
        if tree.exists(inode) and not tree.is_dir(inode) and inode not in tree.symlinks:
            if name == XATTR_HASH:
                return tree.hash_text(inode).encode()
            if name == XATTR_SOURCE:
                return tree.source_of(inode).encode("utf-8", "surrogateescape")
            if name == XATTR_CACHED:
                fraction = self.fetcher.cached_fraction(tree.file_parts(inode))
                return f"{fraction:.4f}".encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @_guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if inode == pyfuse3.ROOT_INODE:
            return [XATTR_STATS]
        tree = self.tree
        if tree.exists(inode) and not tree.is_dir(inode) and inode not in tree.symlinks:
            return [XATTR_HASH, XATTR_SOURCE, XATTR_CACHED]
        return []

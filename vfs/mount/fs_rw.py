"""The pyfuse3 ``Operations`` of a writable mount: a thin translation onto the overlay.

Decisions (what exists, copy-up, whiteouts, errors) live in :class:`~vfs.mount.overlay.Overlay`;
this layer turns its answers into pyfuse3 attributes and its ``OSError`` into ``FUSEError``.

Extended attributes: vfs's own ``user.vfs.*`` (read-only) and any other ``user.*``
attribute, set on any file or directory (on a base inode that records its metadata in the
overlay, never its content); other namespaces give ``ENOTSUP`` (see
:meth:`~vfs.mount.overlay.Overlay.set_xattr`).

Caching: every change goes through the kernel, which updates its own dentries and sizes, so
entries keep long timeouts. A base inode never changed keeps the long attribute timeout and
``keep_cache`` of the read-only mount; changed and new inodes get :data:`CHANGED_TIMEOUT`
and no ``keep_cache``. Writeback caching stays off.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar

import pyfuse3

from vfs.mount.fetcher import ContentFetcher
from vfs.mount.fs import (
    BLOCK_SIZE,
    CACHE_TIMEOUT,
    ReadOnlyOperations,
    _guarded,
    describe_error,
)
from vfs.mount.overlay import Attr, BaseContentError, Overlay, XattrSpaceError
from vfs.mount.prefetch import PrefetchPlanner
from vfs.mount.readahead import ReadaheadState
from vfs.mount.stats import MountStats
from vfs.mount.tree import InodeTree

log = logging.getLogger(__name__)

XATTR_OVERLAY = b"user.vfs.overlay"
"""Extended attribute of a writable mount's root: the overlay directory (``vfs commit
MOUNTPOINT`` finds the overlay by it)."""

XATTR_VFS = b"user.vfs."
"""Prefix of vfs's own extended attributes (read-only; see :mod:`vfs.mount.fs`). Other
``user.*`` attributes are the overlay's (:meth:`~vfs.mount.overlay.Overlay.set_xattr`)."""

CHANGED_TIMEOUT = 1.0
"""Attribute timeout in seconds of new and changed inodes."""

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR

_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Self = TypeVar("_Self", bound="WritableOperations")


def _translated(
    handler: Callable[Concatenate[_Self, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_Self, _P], Coroutine[Any, Any, _R]]:
    """Answer the overlay's ``OSError`` with its errno (disk trouble is also logged), a
    failed overlay database with ENOSPC (disk full) or EIO, and any other unexpected
    exception with EIO and a log line: the mount stays up."""

    @functools.wraps(handler)
    async def wrapper(self: _Self, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await handler(self, *args, **kwargs)
        except OSError as e:
            code = e.errno or errno.EIO
            if code in _DISK_ERRORS and not isinstance(e, XattrSpaceError):
                log.error("%s in %s: %s", handler.__name__, self.overlay.root, describe_error(e))
            raise pyfuse3.FUSEError(code) from None
        except sqlite3.Error as e:  # the overlay's database: disk full, or worse
            full = "full" in str(e)
            log.error("%s in %s: the overlay database failed (%s)", handler.__name__,
                      self.overlay.root, e)  # fmt: skip
            raise pyfuse3.FUSEError(errno.ENOSPC if full else errno.EIO) from None

    return _guarded(wrapper)  # FUSEError passes, anything else: EIO and a log line


@dataclass(slots=True)
class _WHandle:
    inode: int
    state: ReadaheadState
    writable: bool


class WritableOperations(ReadOnlyOperations):
    """FUSE operations over ``overlay`` (which lies over ``tree``)."""

    def __init__(
        self,
        tree: InodeTree,
        fetcher: ContentFetcher,
        stats: MountStats,
        overlay: Overlay,
        prefetch: PrefetchPlanner | None = None,
    ) -> None:
        super().__init__(tree, fetcher, stats, prefetch)
        self.overlay = overlay
        self._whandles: dict[int, _WHandle] = {}

    # -- attributes -------------------------------------------------------------------------

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.generation = 0
        e.entry_timeout = CACHE_TIMEOUT
        e.attr_timeout = CHANGED_TIMEOUT if a.changed else CACHE_TIMEOUT
        e.st_mode = a.mode
        e.st_size = a.size
        e.st_nlink = a.nlink
        e.st_uid = self.uid
        e.st_gid = self.gid
        e.st_blksize = BLOCK_SIZE
        e.st_blocks = (a.size + 511) // 512
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        e.st_atime_ns = a.mtime_ns
        return e

    def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        try:
            return self._entry(self.overlay.attr(ino))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.ENOENT) from None

    @_translated
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.stats.add("req.lookup")
        if name == b".":
            return self._attrs(parent_inode)
        if name == b"..":
            return self._attrs(self.overlay.parent_of(parent_inode))
        ino = self.overlay.lookup(parent_inode, name)
        if ino is None:
            return self._negative()
        return self._attrs(ino)

    @_translated
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.stats.add("req.getattr")
        return self._attrs(inode)

    @_translated
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self.stats.add("req.setattr")
        overlay = self.overlay
        if (fields.update_uid and attr.st_uid != self.uid) or (
            fields.update_gid and attr.st_gid != self.gid
        ):
            log.warning(
                "chown of %s refused (EPERM): a vfs mount has one owner",
                overlay.path_of(inode),
            )
            raise pyfuse3.FUSEError(errno.EPERM)
        if fields.update_size:
            await overlay.truncate(inode, attr.st_size)
        mode = attr.st_mode if fields.update_mode else None
        mtime = attr.st_mtime_ns if fields.update_mtime else None
        if mode is not None or mtime is not None:
            overlay.setattr(inode, mode=mode, mtime_ns=mtime)
        return self._attrs(inode)

    @_translated
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = self.overlay.statvfs()
        s = pyfuse3.StatvfsData()
        s.f_bsize = st.f_bsize
        s.f_frsize = st.f_frsize
        s.f_blocks = st.f_blocks
        s.f_bfree = st.f_bfree
        s.f_bavail = st.f_bavail
        s.f_files = st.f_files
        s.f_ffree = st.f_ffree
        s.f_favail = st.f_favail
        s.f_namemax = 255
        return s

    @_translated
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        self.stats.add("req.readlink")
        return self.overlay.readlink(inode)

    # -- namespace --------------------------------------------------------------------------

    @_translated
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.stats.add("req.mkdir")
        return self._entry(self.overlay.mkdir(parent_inode, name, mode & ~ctx.umask))

    @_translated
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.stats.add("req.symlink")
        return self._entry(self.overlay.symlink(parent_inode, name, target))

    @_translated
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.stats.add("req.unlink")
        self.overlay.unlink(parent_inode, name)

    @_translated
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.stats.add("req.rmdir")
        self.overlay.rmdir(parent_inode, name)

    @_translated
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self.stats.add("req.rename")
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        noreplace = bool(flags & pyfuse3.RENAME_NOREPLACE)
        self.overlay.rename(parent_inode_old, name_old, parent_inode_new, name_new, noreplace)

    @_translated
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        log.warning(
            "hard link to %s refused (EPERM): a vfs mount has no hard links",
            self.overlay.path_of(inode),
        )
        raise pyfuse3.FUSEError(errno.EPERM)

    @_translated
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        log.warning(
            "mknod of %r refused (EPERM): a vfs mount holds files, directories and symlinks",
            name.decode("utf-8", "surrogateescape"),
        )
        raise pyfuse3.FUSEError(errno.EPERM)

    # -- directories ------------------------------------------------------------------------

    @_translated
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self.stats.add("req.opendir")
        if not self.overlay.exists(inode):
            raise pyfuse3.FUSEError(errno.ENOENT)
        if not self.overlay.is_dir(inode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        self._dir_handles[fh] = self.overlay.entries(inode)
        return fh

    @_translated
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self.stats.add("req.readdir")
        entries = self._dir_handles[fh]
        for index in range(start_id, len(entries)):
            name, ino = entries[index]
            try:
                attrs = self._entry(self.overlay.attr(ino))
            except OSError:
                continue  # removed since opendir
            if not pyfuse3.readdir_reply(token, name, attrs, index + 1):
                break

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None  # namespace changes are committed before they return

    # -- files ------------------------------------------------------------------------------

    def _handle(self, inode: int, writable: bool) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._whandles[fh] = _WHandle(inode, self.fetcher.open_state(), writable)
        self.overlay.opened(inode, writing=writable)
        return fh

    @_translated
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self.stats.add("req.open")
        overlay = self.overlay
        if not overlay.exists(inode):
            raise pyfuse3.FUSEError(errno.ENOENT)
        if overlay.is_dir(inode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        writable = bool(flags & _WRITE_FLAGS)
        if writable and flags & os.O_TRUNC:
            await overlay.truncate(inode, 0)
        keep = False
        if not writable and not overlay.content_changed(inode):
            keep = self.fetcher.is_trusted(self.tree.file_parts(inode))
        return pyfuse3.FileInfo(fh=self._handle(inode, writable), keep_cache=keep)

    @_translated
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self.stats.add("req.create")
        a = self.overlay.create(parent_inode, name, mode & ~ctx.umask)
        fh = self._handle(a.ino, True)
        return pyfuse3.FileInfo(fh=fh), self._entry(a)

    @_translated
    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.stats.add("req.read")
        handle = self._whandles[fh]
        try:
            data = await self.overlay.read(handle.inode, off, size, handle.state)
        except BaseContentError as e:
            self._base_failed("read", e)
        self.stats.add("read.bytes", len(data))
        return data  # type: ignore[return-value]  # any buffer will do for pyfuse3

    @_translated
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.stats.add("req.write")
        handle = self._whandles[fh]
        if not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            return await self.overlay.write(handle.inode, off, buf)
        except BaseContentError as e:
            self._base_failed("write (copy-up)", e)

    def _base_failed(self, what: str, error: BaseContentError) -> NoReturn:
        self.stats.add("eio")
        log.error("%s failed: %s", what, error.strerror)
        raise pyfuse3.FUSEError(errno.EIO) from None

    @_translated
    async def flush(self, fh: int) -> None:
        handle = self._whandles.get(fh)
        if handle is not None:
            self.overlay.flush(handle.inode)

    @_translated
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._whandles.get(fh)
        if handle is not None:
            await self.overlay.fsync(handle.inode)

    @_translated
    async def release(self, fh: int) -> None:
        handle = self._whandles.pop(fh, None)
        if handle is not None:
            self.overlay.released(handle.inode, writing=handle.writable)

    # -- extended attributes ----------------------------------------------------------------

    @_translated
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name.startswith(XATTR_VFS):
            if name == XATTR_OVERLAY and inode == pyfuse3.ROOT_INODE:
                return os.fsencode(self.overlay.root)
            if self.overlay.content_changed(inode) and inode != pyfuse3.ROOT_INODE:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)  # the base's hash, source… no longer
            return await super().getxattr(inode, name, ctx)
        value = self.overlay.get_xattr(inode, name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_translated
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        names: list[bytes] = []
        if inode == pyfuse3.ROOT_INODE:
            names = [*await super().listxattr(inode, ctx), XATTR_OVERLAY]
        elif not self.overlay.content_changed(inode):
            names = list(await super().listxattr(inode, ctx))
        return names + self.overlay.list_xattrs(inode)

    @_translated
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self.stats.add("req.setxattr")
        self.overlay.set_xattr(inode, name, value)

    @_translated
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.stats.add("req.removexattr")
        self.overlay.set_xattr(inode, name, None)

"""The durable local overlay of a writable mount (EdenFS-style), with no FUSE in it.

The base :class:`~vfs.mount.tree.InodeTree` never changes; everything written through the
mount lands here, in an overlay directory ``DIR``:

- ``DIR/overlay.db``: the namespace changes (:mod:`vfs.mount.overlaydb`): new inodes, changed
  metadata, directory entries added, whiteouts of removed or renamed-away base names, and
  which parts of base files the data files hold.
- ``DIR/data/<ino>``: the content of a new or changed file, a sparse file of the file's
  size. For a base file, copy-up is block-granular and lazy: a write puts its bytes in the
  data file and then records them, as extents of the :data:`~vfs.mount.blocks.BLOCK_SIZE`
  blocks it touches (a block covered whole is recorded as held whole). A read takes each
  byte of a block not held whole from the base object (through the fetcher and block cache)
  unless an extent covers it; bytes past ``base_limit`` always come from the data file
  (zeros where a truncate extended the file). So a write fetches nothing: neither a block
  overwritten whole in many FUSE requests (the kernel splits writes into 1 MiB) nor one
  written in part. A block written in more than :data:`MAX_EXTENTS` pieces is copied up: its
  base bytes are fetched into the gaps, then it is recorded whole. Data is always written
  before it is recorded, so a crash never exposes bytes that were not written.

Base inodes keep the tree's numbers; new inodes get numbers above the tree's largest, from a
persisted counter, so numbers are stable across renames and remounts. Namespace operations
commit before they return. Size and mtime of a file being written are kept in memory and
committed on flush, fsync, release and close (and every second by the mount); after a
``kill -9`` the data file's size is taken as the file's size.

Hash reuse: while a file is written strictly sequentially from offset 0 (a renderer writing
a frame), a running xxh128 of its bytes is kept; at its last close for writing, when those
writes covered its whole content, the hash is recorded (``hashes``, with size and mtime) for
``vfs commit``, which then does not read the file again. Any other write, a truncate below
what was hashed, or a write after the close drops the record (in the database before the
data file changes). :meth:`Overlay.generation` counts content changes per inode, so that
work done meanwhile in another thread (write-behind hashing) can tell it is stale.

Errors are ``OSError`` with the errno the caller should answer (``ENOENT``, ``EEXIST``,
``ENOTEMPTY``, ``ENOSPC`` …); the FUSE adapter passes them on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from vfs.errors import MountError, VfsError
from vfs.hashing import new_hasher
from vfs.mount.blocks import BLOCK_SIZE
from vfs.mount.fetcher import ContentFetcher
from vfs.mount.overlaydb import (
    XATTR_MAX_BYTES,
    DirentView,
    KnownHash,
    Node,
    OverlayDB,
    content_sources,
)
from vfs.mount.overlaydb import base_fingerprint as base_fingerprint  # re-exported
from vfs.mount.readahead import ReadaheadState
from vfs.mount.stats import MountStats
from vfs.mount.tree import ROOT_INODE, InodeTree

log = logging.getLogger(__name__)

BaseReader = Callable[[int, int, int, ReadaheadState], Awaitable[bytes | memoryview]]
"""``(ino, offset, size, state) -> bytes``: base content of a base file (exactly ``size``
bytes when within the base size); the mount passes the fetcher's read."""


def fetcher_reader(tree: InodeTree, fetcher: ContentFetcher) -> BaseReader:
    """The reader of base content a mount gives its overlay: file ``ino``'s bytes through
    ``fetcher`` (block cache, then store)."""

    async def read(ino: int, off: int, size: int, state: ReadaheadState) -> bytes | memoryview:
        return await fetcher.read(tree.file_parts(ino), off, size, state)

    return read


DIR_SIZE = 4096
"""``st_size`` reported for directories."""

MAX_EXTENTS = 64
"""Written pieces a base block may be in before it is copied up (fetched into the gaps)."""


def _merge(spans: list[tuple[int, int]], new: tuple[int, int]) -> list[tuple[int, int]]:
    """``spans`` (sorted, disjoint ``[start, end)``) with ``new`` added, touching spans
    joined: ``[(0, 2), (5, 6)] + (2, 5) -> [(0, 6)]``."""
    lo, hi = new
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if b < lo or a > hi:
            out.append((a, b))
        else:
            lo, hi = min(lo, a), max(hi, b)
    out.append((lo, hi))
    out.sort()
    return out


class _Sequential:
    """The running xxh128 of a file written sequentially from offset 0: ``pos`` is the
    number of bytes hashed, the offset the next write must start at to continue."""

    __slots__ = ("hasher", "pos")

    def __init__(self) -> None:
        self.hasher = new_hasher()
        self.pos = 0


class BaseContentError(OSError):
    """The base content of a file could not be read (store or block cache trouble); the
    message names the file and the cause. Its errno is EIO."""


class XattrSpaceError(OSError):
    """An inode's extended attributes would pass
    :data:`~vfs.mount.overlaydb.XATTR_MAX_BYTES` (errno ``ENOSPC``; the disk is fine)."""


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {what}")


@dataclass(frozen=True, slots=True)
class Attr:
    """Attributes of an inode: ``mode`` is ``st_mode``; ``size`` in bytes; times in
    nanoseconds since the epoch; ``changed`` is False for a base inode never touched (its
    attributes are the manifest's and may be cached for long)."""

    ino: int
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    changed: bool


class Overlay(DirentView):
    """Namespace and content of a writable mount over ``tree``, stored in ``root``.

    Open with :meth:`open`; ``read_base`` reads base content. Raises :class:`MountError`
    naming the directory when it is in use by another mount, was made over another base
    manifest, or cannot be opened.
    """

    def __init__(
        self, root: str, tree: InodeTree, read_base: BaseReader, stats: MountStats
    ) -> None:
        self.root = root
        self.tree = tree
        self.read_base = read_base
        self.stats = stats
        self.data_dir = os.path.join(root, "data")
        self.dir_mode = 0o755  # permission bits of base directories (--dir-mode)
        self.file_mode = 0o644  # and base files (--file-mode; runnable ones add x under r)
        self._lock_fd = -1
        self.closed = False
        self.db: OverlayDB
        self.nodes: dict[int, Node] = {}
        self.dirents: dict[int, dict[bytes, int]] = {}
        self.xattrs: dict[int, dict[bytes, bytes]] = {}  # user.* attributes per inode
        self.next_ino = len(tree) + 1
        self._fds: dict[int, int] = {}
        self._open: dict[int, int] = {}
        self._writers: dict[int, int] = {}  # handles open for writing, per inode
        self._dirty: set[int] = set()
        self._changing = 0
        self._nlinks: dict[int, int] = {}  # link counts of changed directories, until a
        # subdirectory is added to or removed from them
        self.hashes: dict[int, KnownHash] = {}  # recorded content hashes (hash reuse)
        self._sequential: dict[int, _Sequential] = {}  # files being written from offset 0
        self._generation: dict[int, int] = {}  # content changes per inode, this mount
        self.on_closed: Callable[[int], None] | None = None
        """Called with the inode when a file's last handle open for writing is released
        and the file still has a name and changed content (write-behind queues it)."""
        stats.gauges(self.counters)

    def counters(self) -> dict[str, int]:
        """The overlay's state for ``vfs stats``: ``overlay.files.changed`` (regular files
        with a name whose content is new or written: created, or base files with a data
        file), ``overlay.files.created`` (of those, the new ones), ``overlay.bytes.changed``
        (their sizes, in bytes), ``overlay.files.deleted`` (base files and directories
        removed), ``overlay.hashes.known`` (changed files whose hash is recorded)."""
        files = created = size = deleted = known = 0
        for ino, node in self.nodes.items():
            if node.nlink == 0:
                deleted += node.base
                continue
            if stat.S_ISREG(node.mode) and node.data:
                files += 1
                created += not node.base
                size += node.size
                known += ino in self.hashes
        return {
            "overlay.files.changed": files,
            "overlay.files.created": created,
            "overlay.bytes.changed": size,
            "overlay.files.deleted": deleted,
            "overlay.hashes.known": known,
        }

    @classmethod
    def open(cls, root: str, tree: InodeTree, read_base: BaseReader, stats: MountStats) -> Overlay:
        """Open (or create) the overlay in directory ``root`` and load it. See the class."""
        self = cls(root, tree, read_base, stats)
        try:
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            self._lock_fd = os.open(os.path.join(root, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise MountError(
                f"cannot use overlay dir {root}: {e.strerror}",
                hint="give a writable directory with --overlay-dir",
            ) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise MountError(
                f"overlay dir {root} is in use by another mount",
                hint="unmount that mount first, or give another --overlay-dir",
            ) from None
        try:
            self._load()
        except BaseException:
            os.close(self._lock_fd)
            raise
        return self

    def _load(self) -> None:
        try:
            self.db = OverlayDB(os.path.join(self.root, "overlay.db"))
            fingerprint = base_fingerprint(self.tree)
            recorded = self.db.get_meta("base")
            if recorded is None:
                with self.db.transaction():
                    self.db.set_meta("base", fingerprint)
                    self.db.set_meta("next_ino", str(self.next_ino))
            elif recorded != fingerprint:
                self.db.close()
                raise MountError(
                    f"overlay dir {self.root} was made over other base manifests",
                    hint="mount the manifests it was made over, or give a new --overlay-dir",
                )
            self.next_ino = int(self.db.get_meta("next_ino") or self.next_ino)
            self.nodes = self.db.load_nodes()
            self.dirents = self.db.load_dirents()
            self.xattrs = self.db.load_xattrs()
            self._recover()
            self.hashes = self.db.load_hashes()  # after the rows of dropped content went
        except Exception as e:
            if isinstance(e, MountError):
                raise
            raise MountError(
                f"cannot open the overlay in {self.root}: {e}",
                hint="check the directory, or give a new --overlay-dir",
            ) from None

    def _recover(self) -> None:
        """After a crash: forget the files recorded open for writing and overlay inodes
        that were unlinked while open, drop data files no row claims, and take each data
        file's size as its file's size."""
        self.db.clear_writers()
        for ino, node in list(self.nodes.items()):
            if node.nlink == 0 and not node.base:
                self.db.delete_node(ino)
                del self.nodes[ino]
                self.xattrs.pop(ino, None)
            elif node.nlink == 0 and node.data:
                node.data, node.blocks, node.extents = False, set(), {}
                node.base_limit = node.size = 0
                self.db.save_node(node)
                self.db.clear_content(ino)
            if node.nlink == 0 and self.xattrs.pop(ino, None) is not None:
                self.db.clear_xattrs(ino)
        for name in os.listdir(self.data_dir):
            found = self.nodes.get(int(name)) if name.isdigit() else None
            path = os.path.join(self.data_dir, name)
            if found is None or not found.data:
                os.unlink(path)
                continue
            size = os.stat(path).st_size
            if size != found.size or found.base_limit > size:
                found.size = size
                found.base_limit = min(found.base_limit, size)
                self.db.save_node(found)

    def close(self) -> None:
        """Write pending size/mtime changes, close data files and the database, and release
        the overlay dir's lock (a second call does nothing)."""
        if self.closed:
            return
        self.closed = True
        self.persist()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def persist(self) -> None:
        """Commit the in-memory size/mtime changes of files being written."""
        dirty = [n for n in map(self.nodes.get, self._dirty) if n is not None and n.dirty]
        if dirty:
            with self._change():
                for node in dirty:
                    self.db.save_node(node)
        self._dirty.clear()

    @contextlib.contextmanager
    def _change(self) -> Iterator[None]:
        """One committed transaction for a change; when it fails (disk full, I/O error) the
        in-memory state is loaded again from the database, so both keep agreeing."""
        self._changing += 1
        try:
            with self.db.transaction():
                yield
        except BaseException:
            if self._changing == 1:
                self._resync()
            raise
        finally:
            self._changing -= 1

    def _resync(self) -> None:
        """Reload nodes and entries from the database; sizes from the data files."""
        try:
            self.next_ino = max(self.next_ino, int(self.db.get_meta("next_ino") or 0))
            self.nodes = self.db.load_nodes()
            self.dirents = self.db.load_dirents()
            self.hashes = self.db.load_hashes()
            self._sequential.clear()
            self.xattrs = self.db.load_xattrs()
            self._nlinks.clear()
            for node in self.nodes.values():
                if node.data:
                    with contextlib.suppress(OSError):
                        node.size = os.stat(self._data_path(node.ino)).st_size
                        node.base_limit = min(node.base_limit, node.size)
        except Exception as e:  # the change's own error is the one to report
            log.error("reloading the overlay in %s failed: %s", self.root, e)

    # -- namespace queries ------------------------------------------------------------------

    def exists(self, ino: int) -> bool:
        """True while ``ino`` is an inode of the mount (also unlinked but still open)."""
        node = self.nodes.get(ino)
        if node is not None:
            return node.nlink > 0 or self._open.get(ino, 0) > 0
        return self.tree.exists(ino)

    def is_dir(self, ino: int) -> bool:
        """True when ``ino`` is a directory."""
        node = self.nodes.get(ino)
        if node is not None:
            return stat.S_ISDIR(node.mode)
        return self.tree.is_dir(ino)

    def changed(self, ino: int) -> bool:
        """True when ``ino`` is new or any of its attributes or content changed."""
        return ino in self.nodes

    def content_changed(self, ino: int) -> bool:
        """True when file ``ino``'s content is not (only) the base object's."""
        node = self.nodes.get(ino)
        return node is not None and (not node.base or node.data)

    def parent_of(self, ino: int) -> int:
        """The directory holding ``ino`` (the root for the root)."""
        node = self.nodes.get(ino)
        if node is not None:
            return node.parent
        return self.tree.parent[ino] or ROOT_INODE

    def attr(self, ino: int) -> Attr:
        """Attributes of ``ino``. Raises ``OSError(ENOENT)`` when it does not exist."""
        node = self.nodes.get(ino)
        if node is not None:
            if node.nlink == 0 and not self._open.get(ino):
                raise _err(errno.ENOENT, f"inode {ino}")
            if stat.S_ISDIR(node.mode):
                nlink = self._nlinks.get(ino)
                if nlink is None:
                    nlink = 2 + sum(1 for _, i in self.entries(ino) if self.is_dir(i))
                    self._nlinks[ino] = nlink
                size = DIR_SIZE
            else:
                nlink, size = node.nlink, node.size
            return Attr(ino, node.mode, size, node.mtime_ns, node.ctime_ns, nlink, True)
        tree = self.tree
        if not tree.exists(ino):
            raise _err(errno.ENOENT, f"inode {ino}")
        ns = tree.mtime[ino] * 1000
        if tree.is_dir(ino):
            return Attr(ino, self._base_mode(ino), DIR_SIZE, ns, ns, tree.nlink(ino), False)
        return Attr(ino, self._base_mode(ino), tree.size[ino], ns, ns, 1, False)

    def _base_mode(self, ino: int) -> int:
        """``st_mode`` of base inode ``ino`` as the mount shows it: :attr:`dir_mode` for
        directories, :attr:`file_mode` for files (with x where it has r for runnable ones),
        0o777 for symlinks. A base inode keeps this mode in its overlay record from its
        first change on (chmod, a write, an attribute); new inodes keep their creator's."""
        tree = self.tree
        if tree.is_dir(ino):
            return stat.S_IFDIR | self.dir_mode
        if ino in tree.symlinks:
            return stat.S_IFLNK | 0o777
        mode = self.file_mode
        if ino in tree.runnable:
            mode |= (mode & 0o444) >> 2
        return stat.S_IFREG | mode

    def readlink(self, ino: int) -> bytes:
        """Target of symlink ``ino``. Raises ``OSError(EINVAL)`` for anything else."""
        node = self.nodes.get(ino)
        target = node.target if node is not None else self.tree.symlinks.get(ino)
        if target is None:
            raise _err(errno.EINVAL, f"inode {ino} is not a symbolic link")
        return target

    def path_of(self, ino: int) -> str:
        """Path of ``ino`` under the root, for messages (``?`` for unknown names)."""
        parts: list[str] = []
        seen = 0
        while ino != ROOT_INODE and seen < 4096:
            parent = self.parent_of(ino)
            name = next((n for n, i in self.entries(parent) if i == ino), b"?")
            parts.append(name.decode("utf-8", "surrogateescape"))
            ino, seen = parent, seen + 1
        return "/".join(reversed(parts))

    # -- namespace changes ------------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        """The node of ``ino``, made from the base attributes on its first change."""
        node = self.nodes.get(ino)
        if node is None:
            a = self.attr(ino)
            node = Node(ino, a.mode, a.size, a.mtime_ns, a.ctime_ns, self.parent_of(ino), True,
                        target=self.tree.symlinks.get(ino), base_limit=a.size)  # fmt: skip
            self.nodes[ino] = node
        return node

    def _dir_changed(self, parent: int, now: int) -> None:
        node = self._node(parent)
        node.mtime_ns = node.ctime_ns = now
        self.db.save_node(node)

    def _set_entry(self, parent: int, name: bytes, ino: int) -> None:
        if ino and self.is_dir(ino):
            self._nlinks.pop(parent, None)
        self.dirents.setdefault(parent, {})[name] = ino
        self.db.set_dirent(parent, name, ino)

    def _drop_entry(self, parent: int, name: bytes) -> None:
        """Remove ``name`` from ``parent``: a whiteout when the base has that name."""
        gone = self.lookup(parent, name)
        if gone is not None and self.is_dir(gone):
            self._nlinks.pop(parent, None)
        if self._is_base_dir(parent) and self.tree.lookup(parent, name) is not None:
            self._set_entry(parent, name, 0)
        else:
            self.dirents.get(parent, {}).pop(name, None)
            self.db.delete_dirent(parent, name)

    def _check_dir(self, parent: int) -> None:
        if not self.exists(parent):
            raise _err(errno.ENOENT, f"directory inode {parent}")
        if not self.is_dir(parent):
            raise _err(errno.ENOTDIR, self.path_of(parent))

    def _new(self, parent: int, name: bytes, mode: int, target: bytes | None = None) -> Node:
        self._check_dir(parent)
        if self.lookup(parent, name) is not None:
            raise _err(errno.EEXIST, self._child_path(parent, name))
        now = time.time_ns()
        with self._change():
            ino = self.next_ino
            self.next_ino += 1
            self.db.set_meta("next_ino", str(self.next_ino))
            node = Node(ino, mode, len(target) if target is not None else 0, now, now, parent,
                        False, target=target, data=stat.S_ISREG(mode))  # fmt: skip
            if node.data:
                fd = os.open(self._data_path(ino), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                self._fds[ino] = fd
            self.nodes[ino] = node
            self.db.save_node(node)
            self._set_entry(parent, name, ino)
            self._dir_changed(parent, now)
        return node

    def _child_path(self, parent: int, name: bytes) -> str:
        base = self.path_of(parent)
        child = name.decode("utf-8", "surrogateescape")
        return f"{base}/{child}" if base else child

    def create(self, parent: int, name: bytes, mode: int) -> Attr:
        """New empty regular file ``name`` in ``parent`` with permission bits ``mode``.
        Raises ``OSError`` ``EEXIST``, ``ENOENT``, ``ENOTDIR``."""
        node = self._new(parent, name, stat.S_IFREG | (mode & 0o7777))
        return self.attr(node.ino)

    def mkdir(self, parent: int, name: bytes, mode: int) -> Attr:
        """New empty directory ``name`` in ``parent``. Raises like :meth:`create`."""
        node = self._new(parent, name, stat.S_IFDIR | (mode & 0o7777))
        return self.attr(node.ino)

    def symlink(self, parent: int, name: bytes, target: bytes) -> Attr:
        """New symbolic link ``name`` -> ``target`` in ``parent``. Raises like :meth:`create`."""
        node = self._new(parent, name, stat.S_IFLNK | 0o777, target=target)
        return self.attr(node.ino)

    def unlink(self, parent: int, name: bytes) -> int:
        """Remove non-directory ``name`` from ``parent``; its inode lives on while open.
        Returns the inode. Raises ``OSError`` ``ENOENT``, ``EISDIR``."""
        ino = self.lookup(parent, name)
        if ino is None:
            raise _err(errno.ENOENT, self._child_path(parent, name))
        if self.is_dir(ino):
            raise _err(errno.EISDIR, self._child_path(parent, name))
        with self._change():
            self._drop_entry(parent, name)
            self._dir_changed(parent, time.time_ns())
            self._unlinked(ino)
        return ino

    def rmdir(self, parent: int, name: bytes) -> int:
        """Remove empty directory ``name`` from ``parent``; returns its inode. Raises
        ``OSError`` ``ENOENT``, ``ENOTDIR``, ``ENOTEMPTY``."""
        ino = self.lookup(parent, name)
        if ino is None:
            raise _err(errno.ENOENT, self._child_path(parent, name))
        if not self.is_dir(ino):
            raise _err(errno.ENOTDIR, self._child_path(parent, name))
        if self.entries(ino):
            raise _err(errno.ENOTEMPTY, self._child_path(parent, name))
        with self._change():
            self._drop_entry(parent, name)
            self._dir_changed(parent, time.time_ns())
            self._unlinked(ino)
        return ino

    def _unlinked(self, ino: int) -> None:
        """The last name of ``ino`` is gone: drop it now, or at its last release."""
        node = self._node(ino)
        node.nlink = 0
        node.ctime_ns = time.time_ns()
        if self._open.get(ino):
            self.db.save_node(node)  # an orphan until its last release
        else:
            self._forget(node)

    def _forget(self, node: Node) -> None:
        """Delete an unlinked inode's data; keep a base inode's tombstone row."""
        self._content_changed(node.ino, record=False)  # the rows go with clear_content
        fd = self._fds.pop(node.ino, None)
        if fd is not None:
            os.close(fd)
        if node.data:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._data_path(node.ino))
        self.dirents.pop(node.ino, None)
        if self.xattrs.pop(node.ino, None) is not None:
            self.db.clear_xattrs(node.ino)
        if node.base:
            node.data, node.blocks, node.extents = False, set(), {}
            node.size = node.base_limit = 0
            self.db.save_node(node)
            self.db.clear_content(node.ino)
        else:
            del self.nodes[node.ino]
            self.db.delete_node(node.ino)

    def rename(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, noreplace: bool
    ) -> int | None:
        """Move ``parent/name`` to ``new_parent/new_name`` (its inode number stays).

        Returns the inode that was replaced, if any. Raises ``OSError``: ``ENOENT``,
        ``EEXIST`` (``noreplace`` and the target exists), ``ENOTDIR``/``EISDIR`` (kind
        mismatch), ``ENOTEMPTY`` (target a non-empty directory), ``EINVAL`` (a directory
        into itself).
        """
        ino = self.lookup(parent, name)
        if ino is None:
            raise _err(errno.ENOENT, self._child_path(parent, name))
        self._check_dir(new_parent)
        old = self.lookup(new_parent, new_name)
        if old == ino:
            return None
        is_dir = self.is_dir(ino)
        if old is not None:
            where = self._child_path(new_parent, new_name)
            if noreplace:
                raise _err(errno.EEXIST, where)
            if is_dir and not self.is_dir(old):
                raise _err(errno.ENOTDIR, where)
            if not is_dir and self.is_dir(old):
                raise _err(errno.EISDIR, where)
            if is_dir and self.entries(old):
                raise _err(errno.ENOTEMPTY, where)
        if is_dir:
            up = new_parent
            while up != ROOT_INODE:
                if up == ino:
                    raise _err(errno.EINVAL, f"{self._child_path(parent, name)} into itself")
                up = self.parent_of(up)
        now = time.time_ns()
        with self._change():
            self._drop_entry(parent, name)
            self._set_entry(new_parent, new_name, ino)
            node = self._node(ino)
            node.parent = new_parent
            node.ctime_ns = now
            self.db.save_node(node)
            self._dir_changed(parent, now)
            if new_parent != parent:
                self._dir_changed(new_parent, now)
            if old is not None:
                self._unlinked(old)
        return old

    def setattr(self, ino: int, mode: int | None = None, mtime_ns: int | None = None) -> Attr:
        """Change permission bits (``mode & 0o7777``) and/or mtime (ns); commits. Raises
        ``OSError(ENOENT)``."""
        if not self.exists(ino):
            raise _err(errno.ENOENT, f"inode {ino}")
        node = self._node(ino)
        node.ctime_ns = time.time_ns()
        if mode is not None:
            node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
        if mtime_ns is not None:
            node.mtime_ns = mtime_ns
        known = self.hashes.get(ino)
        with self._change():
            self.db.save_node(node)
            if known is not None and mtime_ns is not None:  # the content stays: so does its hash
                known = KnownHash(known.hash, known.size, mtime_ns)
                self.db.set_hash(ino, known)
                self.hashes[ino] = known
        return self.attr(ino)

    # -- extended attributes ------------------------------------------------------------------

    def get_xattr(self, ino: int, name: bytes) -> bytes | None:
        """Value of the ``user.*`` attribute ``name`` of ``ino``, or ``None``."""
        return self.xattrs.get(ino, {}).get(name)

    def list_xattrs(self, ino: int) -> list[bytes]:
        """Names of the ``user.*`` attributes set on ``ino``."""
        return list(self.xattrs.get(ino, ()))

    def set_xattr(self, ino: int, name: bytes, value: bytes | None) -> None:
        """Set (``value``) or remove (``None``) the extended attribute ``name`` of ``ino``;
        committed before it returns, kept across renames and remounts, dropped with the
        inode's last name. A base inode gets an overlay record of its metadata (its content
        stays the base's: nothing is fetched), as chmod does.

        Raises ``OSError``: ``ENOTSUP`` for names outside ``user.`` (``trusted.``,
        ``security.``, ``system.``: a vfs mount keeps none), ``EPERM`` for ``user.vfs.*``
        (vfs's own read-only attributes), ``ENODATA`` when removing an attribute that is
        not set, :class:`XattrSpaceError` (``ENOSPC``) when the inode's names and values
        would pass :data:`~vfs.mount.overlaydb.XATTR_MAX_BYTES`, ``ENOENT``.
        """
        if not name.startswith(b"user."):
            raise _err(errno.ENOTSUP, f"{name!r} on {self.path_of(ino)}: only user.* "
                       "extended attributes are kept")  # fmt: skip
        if name.startswith(b"user.vfs."):
            raise _err(errno.EPERM, f"{name!r} on {self.path_of(ino)} is vfs's own")
        if not self.exists(ino):
            raise _err(errno.ENOENT, f"inode {ino}")
        current = self.xattrs.get(ino, {})
        if value is None and name not in current:
            raise _err(errno.ENODATA, f"{name!r} on {self.path_of(ino)}")
        if value is not None:
            others = sum(len(n) + len(v) for n, v in current.items() if n != name)
            if others + len(name) + len(value) > XATTR_MAX_BYTES:
                raise XattrSpaceError(
                    errno.ENOSPC,
                    f"extended attributes of {self.path_of(ino)}"
                    f" (at most {XATTR_MAX_BYTES} bytes of names and values)",
                )
        node = self._node(ino)
        node.ctime_ns = time.time_ns()
        with self._change():
            self.db.save_node(node)
            self.db.set_xattr(ino, name, value)
        if value is None:
            del current[name]
            if not current:
                self.xattrs.pop(ino, None)
        else:
            self.xattrs.setdefault(ino, {})[name] = value

    # -- content ----------------------------------------------------------------------------

    def _data_path(self, ino: int) -> str:
        return os.path.join(self.data_dir, str(ino))

    def _fd(self, ino: int) -> int:
        fd = self._fds.get(ino)
        if fd is None:
            fd = self._fds[ino] = os.open(self._data_path(ino), os.O_RDWR)
        return fd

    def opened(self, ino: int, writing: bool = False) -> None:
        """A handle on ``ino`` was opened (unlinked inodes live until the last release);
        ``writing``: for writing, which the database records for ``vfs commit`` (first,
        so that a failure to record it, e.g. a full disk, leaves no handle counted)."""
        if writing and not self._writers.get(ino):
            self.db.set_writers(ino, 1)
        self._open[ino] = self._open.get(ino, 0) + 1
        if writing:
            self._writers[ino] = self._writers.get(ino, 0) + 1

    def released(self, ino: int, writing: bool = False) -> None:
        """A handle on ``ino`` was released (``writing``: one opened for writing): commit
        its size/mtime; at the last release, close its data file and drop it when it was
        unlinked. The record of the last writer goes after the size and mtime are saved,
        and after the handle is forgotten (even when saving fails)."""
        last_writer = False
        if writing:
            count = self._writers.get(ino, 0) - 1
            if count > 0:
                self._writers[ino] = count
            else:
                self._writers.pop(ino, None)
                last_writer = True
        try:
            self._release(ino)
            if last_writer:
                self._closed_for_writing(ino)
        finally:
            if last_writer:
                self._sequential.pop(ino, None)
                self.db.set_writers(ino, 0)

    def _closed_for_writing(self, ino: int) -> None:
        """The last writer of ``ino`` is gone: record the hash of its content when
        sequential writes from offset 0 covered all of it; tell :attr:`on_closed`."""
        node = self.nodes.get(ino)
        if node is None or node.nlink == 0 or not node.data or not stat.S_ISREG(node.mode):
            return
        seq = self._sequential.pop(ino, None)
        if seq is not None and seq.pos == node.size:
            known = KnownHash(seq.hasher.hexdigest(), node.size, node.mtime_ns)
            try:
                self.record_hash(ino, known)
                self.stats.add("overlay.hash.recorded")
            except (OSError, sqlite3.Error) as e:  # only a saving lost: commit hashes it
                log.warning("recording the hash of %s failed: %s", self.path_of(ino), e)
        if self.on_closed is not None:
            self.on_closed(ino)

    def record_hash(self, ino: int, known: KnownHash) -> None:
        """Record ``known`` as the hash of ``ino``'s whole content (committed). The caller
        vouches that the content has not changed since it was hashed."""
        with self._change():
            self.db.set_hash(ino, known)
        self.hashes[ino] = known

    def generation(self, ino: int) -> int:
        """How many times ``ino``'s content changed during this mount (writes, truncates):
        equal before and after some work means nothing changed it meanwhile."""
        return self._generation.get(ino, 0)

    def writing(self, ino: int) -> bool:
        """True while a handle on ``ino`` is open for writing."""
        return bool(self._writers.get(ino))

    def _content_changed(self, ino: int, record: bool = True) -> None:
        """``ino``'s content is about to change: count it, and drop its recorded hash (in
        the database first, ``record``, so a crash never leaves a stale hash)."""
        self._generation[ino] = self._generation.get(ino, 0) + 1
        if ino in self.hashes:
            if record:
                with self._change():
                    self.db.drop_hash(ino)
            del self.hashes[ino]

    def _release(self, ino: int) -> None:
        left = self._open.get(ino, 0) - 1
        node = self.nodes.get(ino)
        if left > 0:
            self._open[ino] = left
            if node is not None and node.dirty:
                self.db.save_node(node)
            return
        self._open.pop(ino, None)
        if node is None:
            return
        if node.nlink == 0:
            self._forget(node)
            return
        if node.dirty:
            self.db.save_node(node)
        fd = self._fds.pop(ino, None)
        if fd is not None:
            os.close(fd)

    def flush(self, ino: int) -> None:
        """Commit ``ino``'s size and mtime (close and ``fsync`` call this)."""
        node = self.nodes.get(ino)
        if node is not None and node.dirty:
            self.db.save_node(node)

    async def fsync(self, ino: int) -> None:
        """Commit ``ino``'s metadata and ``fsync`` its data file (in a worker thread)."""
        self.flush(ino)
        node = self.nodes.get(ino)
        if node is not None and node.data:
            await trio.to_thread.run_sync(os.fsync, self._fd(ino))

    def _materialize(self, ino: int) -> Node:
        """The node of file ``ino`` with a data file (a sparse file of its size for a base
        file, whose content stays in the base until blocks are copied up)."""
        node = self._node(ino)
        if not stat.S_ISREG(node.mode):
            raise _err(errno.EINVAL if not stat.S_ISDIR(node.mode) else errno.EISDIR,
                       f"inode {ino} is not a regular file")  # fmt: skip
        if not node.data:
            fd = os.open(self._data_path(ino), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self._fds[ino] = fd
            os.ftruncate(fd, node.size)
            node.data = True
            if node.base:
                self.stats.add("overlay.copyup.files")
            with self._change():
                self.db.save_node(node)  # after the data file exists
        return node

    async def read(
        self, ino: int, off: int, size: int, state: ReadaheadState
    ) -> bytes | memoryview:
        """Bytes ``[off, off + size)`` of file ``ino``, fewer only at its end. Raises
        :class:`BaseContentError` when base content cannot be read, ``OSError`` for the
        data file."""
        node = self.nodes.get(ino)
        if node is None or not node.data:
            length = node.size if node is not None else self.tree.size[ino]
            if node is not None:
                length = min(length, node.base_limit)
            end = min(off + size, length)
            if off >= end:
                return b""
            return await self._base(ino, off, end - off, state)  # no copy: base reads
        end = min(off + size, node.size)
        if off >= end:
            return b""
        # Runs of (from the base?, start, stop): the bytes of a block the data file does not
        # hold whole come from the base up to base_limit, except its written extents;
        # everything else (and everything past base_limit) comes from the data file.
        runs: list[list[Any]] = []
        pos = off
        while pos < end:
            index = pos // BLOCK_SIZE
            stop = min((index + 1) * BLOCK_SIZE, end)
            for from_base, lo, hi in self._sources(node, index, pos, stop):
                if runs and runs[-1][0] == from_base and runs[-1][2] == lo:
                    runs[-1][2] = hi
                else:
                    runs.append([from_base, lo, hi])
            pos = stop
        pieces: list[bytes] = []
        fd = self._fd(ino)
        for from_base, lo, hi in runs:
            if from_base:
                pieces.append(bytes(await self._base(ino, lo, hi - lo, state)))
            else:
                data = os.pread(fd, hi - lo, lo)
                pieces.append(data + bytes(hi - lo - len(data)) if len(data) < hi - lo else data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _base(
        self, ino: int, off: int, size: int, state: ReadaheadState
    ) -> bytes | memoryview:
        """Base content of ``ino``; any failure becomes :class:`BaseContentError`."""
        try:
            return await self.read_base(ino, off, size, state)
        except Exception as e:
            cause = str(e) if isinstance(e, VfsError) else f"{type(e).__name__}: {e}"
            raise BaseContentError(
                errno.EIO, f"cannot read the base content of {self.path_of(ino)}: {cause}"
            ) from None

    def _sources(self, node: Node, index: int, lo: int, hi: int) -> list[tuple[bool, int, int]]:
        """Where bytes ``[lo, hi)`` (within block ``index``) are (:func:`content_sources`)."""
        return content_sources(node, index, lo, hi)

    async def write(self, ino: int, off: int, data: bytes) -> int:
        """Write ``data`` at byte ``off`` of file ``ino``; returns ``len(data)``.

        Nothing is fetched: the data goes into the data file, then the byte ranges it
        covers in base blocks not held whole are recorded as extents (a block whose extents
        cover it becomes held whole). A block written in more than :data:`MAX_EXTENTS`
        pieces is copied up: its base bytes are fetched into the gaps, then it is recorded
        whole. Raises ``OSError`` (``ENOSPC`` from the overlay's disk) or
        :class:`BaseContentError` (a copy-up could not read the base).
        """
        node = self._materialize(ino)
        end = off + len(data)
        self._content_changed(ino)
        seq = self._sequential.pop(ino, None)
        if off == 0:  # a new sequential run starts: what it hashes is all written again
            seq = _Sequential()
        self._pwrite(ino, data, off)  # the data first, then the record of where it is
        if seq is not None and seq.pos == off:
            seq.hasher.update(data)
            seq.pos = end
            self._sequential[ino] = seq
        crowded = []
        if off < node.base_limit:
            crowded = self._record_extents(node, off, end)
        node.size = max(node.size, end)
        node.mtime_ns = node.ctime_ns = time.time_ns()
        node.dirty = True
        self._dirty.add(ino)
        self.stats.add("overlay.write.bytes", len(data))
        for index in crowded:
            await self._copy_up(node, index)
        return len(data)

    def _record_extents(self, node: Node, off: int, end: int) -> list[int]:
        """Record ``[off, end)`` as written in the base blocks it touches; returns the
        blocks now in more than :data:`MAX_EXTENTS` pieces."""
        whole: list[int] = []
        partial: dict[int, list[tuple[int, int]]] = {}
        for index in self._base_blocks(node, off, end):
            if index in node.blocks:
                continue
            start = index * BLOCK_SIZE
            stop = min(start + BLOCK_SIZE, node.base_limit)
            spans = _merge(node.extents.get(index, []), (max(off, start), min(end, stop)))
            if spans[0][0] <= start and spans[0][1] >= stop:
                whole.append(index)
            else:
                partial[index] = spans
        if not whole and not partial:
            return []
        with self._change():
            if whole:
                self.db.add_blocks(node.ino, whole)
            for index, spans in partial.items():
                self.db.set_extents(node.ino, index, spans)
        for index in whole:
            node.blocks.add(index)
            node.extents.pop(index, None)
        node.extents.update(partial)
        if whole:
            self.stats.add("overlay.blocks.written", len(whole))
        return [i for i, spans in partial.items() if len(spans) > MAX_EXTENTS]

    def _pwrite(self, ino: int, data: bytes | memoryview, off: int) -> None:
        view = memoryview(data)
        fd = self._fd(ino)
        while view:
            n = os.pwrite(fd, view, off)
            view, off = view[n:], off + n

    def _base_blocks(self, node: Node, off: int, end: int) -> range:
        """Blocks of ``[off, end)`` that start within the base content still valid."""
        last = min(end, node.base_limit)
        if off >= last:
            return range(0)
        return range(off // BLOCK_SIZE, (last - 1) // BLOCK_SIZE + 1)

    async def _copy_up(self, node: Node, index: int) -> None:
        """Fill the gaps between block ``index``'s extents with its base bytes, then record
        it held whole. The gaps are taken again after the fetch: writes meanwhile win."""
        start = index * BLOCK_SIZE
        stop = min(start + BLOCK_SIZE, node.base_limit)
        if stop <= start or index in node.blocks:
            return
        content = memoryview(await self._base(node.ino, start, stop - start, ReadaheadState()))
        stop = min(start + BLOCK_SIZE, node.base_limit)  # a truncate may have come meanwhile
        if index in node.blocks or stop <= start or self.nodes.get(node.ino) is not node:
            return
        for from_base, lo, hi in self._sources(node, index, start, stop):
            if from_base:
                self._pwrite(node.ino, content[lo - start : hi - start], lo)
        with self._change():
            self.db.add_blocks(node.ino, [index])  # after the data is written
        node.blocks.add(index)
        node.extents.pop(index, None)
        self.stats.add("overlay.copyup.fetched")

    async def truncate(self, ino: int, size: int) -> Attr:
        """Set file ``ino``'s size to ``size`` bytes (zeros when it grows); nothing is
        fetched. Raises ``OSError`` (``EISDIR``, ``EINVAL``, ``ENOSPC``)."""
        if size < 0:
            raise _err(errno.EINVAL, f"negative size for {self.path_of(ino)}")
        node = self._materialize(ino)
        self._content_changed(ino)
        seq = self._sequential.get(ino)
        if seq is not None and size < seq.pos:  # bytes hashed are gone
            del self._sequential[ino]
        os.ftruncate(self._fd(ino), size)
        node.base_limit = min(node.base_limit, size)
        node.size = size
        node.mtime_ns = node.ctime_ns = time.time_ns()
        with self._change():
            self.db.save_node(node)
        if not self._open.get(ino):  # truncated by path: no handle keeps the file open
            fd = self._fds.pop(ino, None)
            if fd is not None:
                os.close(fd)
        return self.attr(ino)

    def statvfs(self) -> os.statvfs_result:
        """``statvfs`` of the overlay directory's file system."""
        return os.statvfs(self.root)

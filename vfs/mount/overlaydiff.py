"""What a writable mount's overlay changed, read without the mount (no FUSE, no trio).

:class:`OverlaySnapshot` opens an overlay directory (see :mod:`vfs.mount.overlay`) the way
``vfs commit`` needs it: while its mount runs (one SQLite read transaction over the WAL
database: a consistent view of the namespace) or with the mount stopped. It rebuilds the
base tree from the manifests the mount recorded in ``meta`` (checked against the overlay's
base fingerprint) and walks only what was materialized, EdenFS style: directories that hold
a change somewhere below, and whatever was created, renamed or moved; untouched base
subtrees are never listed.

It yields the regular files that may differ from the base (:class:`FileState`: new paths,
content written, mode or mtime changed, base files renamed to a new path) and the base
files that are gone (:meth:`OverlaySnapshot.deleted_paths`). Whether a candidate's content
really changed is decided by its hash (:mod:`vfs.commit`); a file only touched keeps the
base's content and is not an output.

Content is read with :meth:`OverlaySnapshot.read_content`: data files of the overlay, and
for a base file written only in part, the base objects (by ranged reads from the store).

Limits: data files are read after the namespace snapshot, so a file written again while
a commit reads it is read as it is then (files open for writing are reported in
:attr:`OverlaySnapshot.writers` and skipped by ``vfs commit``). Symbolic links created or
moved are listed apart (:meth:`OverlaySnapshot.changed_links`); :meth:`OverlaySnapshot.follow`
resolves one inside the mount, as a reader of the mount would.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from vfs.errors import VfsError
from vfs.manifest import Manifest, ManifestV2
from vfs.manifest.codec import ManifestColumns, decode_manifest_columns
from vfs.manifest.convert import decode_any_manifest, manifest_hash
from vfs.mount.blocks import BLOCK_SIZE
from vfs.mount.objects import CHUNK_SIZE
from vfs.mount.overlaydb import (
    META_MANIFESTS,
    META_MOUNTPOINT,
    META_STORE,
    DirentView,
    KnownHash,
    Node,
    OverlayDB,
    base_fingerprint,
    content_sources,
)
from vfs.mount.tree import ROOT_INODE, InodeTree
from vfs.storage import ObjectStore, S3Options, data_key, read_location

READ_SIZE = 8 * 1024 * 1024
"""Bytes read from a data file at a time."""


class OverlayError(VfsError):
    """An overlay directory cannot be read for a commit; the message names it."""


MAX_SYMLINKS = 40
"""Symbolic links followed in one path resolution before giving up (Linux's ``ELOOP``)."""


@dataclass(frozen=True, slots=True)
class LinkState:
    """A symbolic link of the mount that is new or moved: ``path`` (relative to the mount
    root, ``/``-separated), its inode ``ino`` and its ``target`` (the link's text)."""

    path: str
    ino: int
    target: bytes


@dataclass(frozen=True, slots=True)
class FileState:
    """A regular file of the mount that may differ from the base.

    ``path``: relative to the mount root, ``/``-separated (surrogateescape for non-UTF-8
    names). ``ino``: its inode. ``size`` in bytes; ``mtime_us`` in microseconds since the
    epoch (``st_mtime_ns // 1000``, as manifests store it). ``runnable``: the owner's
    execute bit. ``known_hash``: its xxh128 when known without reading (content still the
    base object's, or a hash the mount recorded for the current content: then
    ``hash_recorded``), else ``None``. ``base_hash``/``base_runnable``: the base file at the
    same path (``None``/``False`` when the base has no regular file there).
    """

    path: str
    ino: int
    size: int
    mtime_us: int
    runnable: bool
    known_hash: str | None
    base_hash: str | None
    base_runnable: bool
    hash_recorded: bool = False


def _base_mode(tree: InodeTree, ino: int) -> int:
    if tree.is_dir(ino):
        return stat.S_IFDIR | 0o755
    if ino in tree.symlinks:
        return stat.S_IFLNK | 0o777
    return stat.S_IFREG | (0o755 if ino in tree.runnable else 0o644)


class OverlaySnapshot(DirentView):
    """A consistent view of the overlay in ``root``; open with :meth:`open`.

    Attributes: ``tree`` (the base), ``manifests`` (their locations), ``store_uri`` (the
    base objects' store), ``mountpoint`` (where it was last mounted), ``mounted`` (a mount
    holds the overlay now), ``writers`` (inodes open for writing; empty when not mounted),
    ``base_hash`` (the manifest hash of the base when it is one manifest, else ``None``).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.data_dir = os.path.join(root, "data")
        self.manifests: list[str] = []
        self.store_uri = ""
        self.mountpoint = ""
        self.fingerprint = ""
        self.mounted = False
        self.writers: set[int] = set()
        self.nodes: dict[int, Node] = {}
        self.dirents: dict[int, dict[bytes, int]] = {}
        self.hashes: dict[int, KnownHash] = {}
        self.tree = InodeTree()
        self.base_hash: str | None = None
        self._lock_fd = -1

    @classmethod
    def open(cls, root: str, s3: S3Options | None = None) -> OverlaySnapshot:
        """Read the overlay in directory ``root`` and rebuild its base tree.

        When no mount holds the overlay, it is locked (a mount cannot start on it) until
        :meth:`close`. Raises :class:`OverlayError` naming ``root`` when it is no overlay,
        was never mounted by a vfs that records its base, or its base manifests changed;
        the store's and manifest errors when a base manifest cannot be read.
        """
        self = cls(root)
        db_path = os.path.join(root, "overlay.db")
        if not os.path.isfile(db_path):
            raise OverlayError(
                f"{root} is not a vfs overlay (no overlay.db)",
                hint="give the --overlay-dir of a writable mount, or its mount point",
            )
        try:
            self._lock_fd = os.open(os.path.join(root, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.mounted = True
                os.close(self._lock_fd)
                self._lock_fd = -1
            self._read(db_path)
        except OSError as e:
            self.close()
            raise OverlayError(f"cannot read the overlay in {root}: {e.strerror}") from None
        except sqlite3.Error as e:
            self.close()
            raise OverlayError(f"cannot read the overlay database in {root}: {e}") from None
        except BaseException:
            self.close()
            raise
        try:
            manifests = _load_manifests(self.manifests, s3)
            self.tree = InodeTree.from_manifests(manifests, self.manifests)
        except BaseException:
            self.close()
            raise
        if len(manifests) == 1:
            first = manifests[0]
            if isinstance(first, ManifestColumns):
                first = first.to_manifest()
            self.base_hash = manifest_hash(first)
        if base_fingerprint(self.tree) != self.fingerprint:
            self.close()
            raise OverlayError(
                f"the base manifests of the overlay in {root} changed since it was mounted",
                hint="restore the manifests it was mounted with: " + ", ".join(self.manifests),
            )
        return self

    def _read(self, db_path: str) -> None:
        """Everything from the database in one read transaction (one WAL snapshot)."""
        db = OverlayDB.reader(db_path)
        try:
            db.conn.execute("BEGIN")
            manifests = db.get_meta(META_MANIFESTS)
            self.store_uri = db.get_meta(META_STORE) or ""
            self.mountpoint = db.get_meta(META_MOUNTPOINT) or ""
            self.fingerprint = db.get_meta("base") or ""
            if manifests is None:
                raise OverlayError(
                    f"the overlay in {self.root} does not record its base manifests",
                    hint="mount it once with this vfs version (vfs mount --writable), then commit",
                )
            self.manifests = [str(m) for m in json.loads(manifests)]
            self.nodes = db.load_nodes()
            self.dirents = db.load_dirents()
            self.hashes = db.load_hashes()
            self.writers = db.load_writers() if self.mounted else set()
            db.conn.execute("COMMIT")
        finally:
            db.close()

    def reload(self) -> None:
        """Read the database again (a new snapshot of the namespace; the base stays).
        Raises :class:`OverlayError`."""
        try:
            self._read(os.path.join(self.root, "overlay.db"))
        except sqlite3.Error as e:
            raise OverlayError(f"cannot read the overlay database in {self.root}: {e}") from None

    def uploaded(self, store_uri: str) -> dict[str, int]:
        """``{hash: size}`` of the CAS objects the mount's write-behind stored in the store
        at ``store_uri`` (verified as they were sent). Raises :class:`OverlayError`."""
        try:
            db = OverlayDB.reader(os.path.join(self.root, "overlay.db"))
            try:
                return db.load_uploads(store_uri)
            finally:
                db.close()
        except sqlite3.Error as e:
            raise OverlayError(f"cannot read the overlay database in {self.root}: {e}") from None

    def close(self) -> None:
        """Release the lock taken on an unmounted overlay."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> OverlaySnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the namespace, as the mount shows it ------------------------------------------------

    def mode(self, ino: int) -> int:
        """``st_mode`` of ``ino`` now."""
        node = self.nodes.get(ino)
        return node.mode if node is not None else _base_mode(self.tree, ino)

    def is_file(self, ino: int) -> bool:
        """True when ``ino`` is a regular file."""
        return stat.S_ISREG(self.mode(ino))

    def resolve(self, path: str) -> int | None:
        """Inode at ``path`` now (no symlinks followed), or ``None``."""
        ino: int | None = ROOT_INODE
        for part in path.split("/"):
            if ino is None or not stat.S_ISDIR(self.mode(ino)):
                return None
            ino = self.lookup(ino, part.encode("utf-8", "surrogateescape"))
        return ino

    def link_target(self, ino: int) -> bytes | None:
        """The text of symbolic link ``ino``, or ``None`` when it is no link."""
        node = self.nodes.get(ino)
        if node is not None:
            return node.target if stat.S_ISLNK(node.mode) else None
        return self.tree.symlinks.get(ino)

    def follow(self, path: str) -> int | None:
        """The inode ``path`` leads to with every symbolic link followed (also the last
        component), as the mount resolves it; ``None`` when a component is missing, a link
        is absolute or climbs above the mount root (outside it), or after
        :data:`MAX_SYMLINKS` links (a loop)."""
        parts = path.split("/")
        chain = [ROOT_INODE]  # the directories walked, for ".."
        links = 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if len(chain) == 1:
                    return None
                chain.pop()
                continue
            if not stat.S_ISDIR(self.mode(chain[-1])):
                return None
            ino = self.lookup(chain[-1], part.encode("utf-8", "surrogateescape"))
            if ino is None:
                return None
            target = self.link_target(ino)
            if target is None:
                chain.append(ino)
                continue
            links += 1
            if links > MAX_SYMLINKS or target.startswith(b"/"):
                return None
            parts = target.decode("utf-8", "surrogateescape").split("/") + parts
        return chain[-1]

    def state_at(self, path: str, ino: int) -> FileState:
        """The :class:`FileState` of regular file ``ino`` seen at ``path`` (a link's path:
        the content, size and mtime are the file's, the base compared with is ``path``'s)."""
        return self._state(path, ino, self.nodes.get(ino))

    def base_link(self, path: str) -> bytes | None:
        """The target of the base tree's symbolic link at ``path``, or ``None``."""
        tree = self.tree
        ino: int | None = ROOT_INODE
        for part in path.split("/"):
            if ino is None or not tree.is_dir(ino):
                return None
            ino = tree.lookup(ino, part.encode("utf-8", "surrogateescape"))
        return None if ino is None else tree.symlinks.get(ino)

    def _base_file(self, path: str) -> int | None:
        """The base tree's regular file at ``path``, or ``None``."""
        tree = self.tree
        ino: int | None = ROOT_INODE
        for part in path.split("/"):
            if ino is None or not tree.is_dir(ino):
                return None
            ino = tree.lookup(ino, part.encode("utf-8", "surrogateescape"))
        if ino is None or tree.is_dir(ino) or ino in tree.symlinks:
            return None
        return ino

    def _marked(self) -> set[int]:
        """Directories with a change somewhere below (or on themselves)."""
        tree = self.tree
        marked: set[int] = {ROOT_INODE}
        starts = [i for i, n in self.nodes.items() if n.nlink > 0] + list(self.dirents)
        for ino in starts:
            while ino not in marked:
                marked.add(ino)
                node = self.nodes.get(ino)
                if node is not None:
                    ino = node.parent
                elif ino <= len(tree):
                    ino = tree.parent[ino] or ROOT_INODE
                else:  # entries left of an inode that is gone: nothing to walk
                    break
        return marked

    def changed_files(self) -> Iterator[FileState]:
        """The regular files that may differ from the base, in walk order: every file under
        a new or moved directory, every new or renamed file, every base file whose content,
        mode or mtime changed. Unchanged subtrees are not walked."""
        for item in self._changed():
            if isinstance(item, FileState):
                yield item

    def changed_links(self) -> Iterator[LinkState]:
        """The symbolic links that are new or moved (under a new or moved directory, or
        renamed), in walk order; a base link where the base has it is not listed."""
        for item in self._changed():
            if isinstance(item, LinkState):
                yield item

    def _changed(self) -> Iterator[FileState | LinkState]:
        marked = self._marked()
        tree = self.tree
        ntree = len(tree)
        stack: list[tuple[int, str, bool]] = [(ROOT_INODE, "", False)]
        while stack:
            dir_ino, prefix, moved = stack.pop()
            for name, ino in self.entries(dir_ino):
                at_base = (not moved and ino <= ntree and tree.parent[ino] == dir_ino
                           and tree.name_of(ino) == name)  # fmt: skip
                node = self.nodes.get(ino)
                mode = node.mode if node is not None else _base_mode(tree, ino)
                path = prefix + name.decode("utf-8", "surrogateescape")
                if stat.S_ISDIR(mode):
                    if not at_base or ino in marked:
                        stack.append((ino, path + "/", not at_base))
                elif stat.S_ISREG(mode) and (not at_base or node is not None):
                    yield self._state(path, ino, node)
                elif stat.S_ISLNK(mode) and not at_base:
                    target = self.link_target(ino)
                    if target is not None:
                        yield LinkState(path, ino, target)

    def _state(self, path: str, ino: int, node: Node | None) -> FileState:
        tree = self.tree
        base = self._base_file(path)
        base_hash = None if base is None or base in tree.chunks else tree.hash_hex(base)
        if base is not None and base_hash is None:
            base_hash = tree.hash_text(base)  # chunked: never equal to a whole-file hash
        known = None
        if ino <= len(tree) and (node is None or not node.data) and ino not in tree.chunks:
            known = tree.hash_hex(ino)
        recorded = False
        if node is not None:
            size, mtime_us, mode = node.size, node.mtime_ns // 1000, node.mode
            if node.base and not node.data:
                size = min(size, node.base_limit)
            # A hash the mount recorded for this content (dropped before any later change;
            # size and mtime must still be those it was recorded with).
            rec = self.hashes.get(ino)
            if (node.data and rec is not None and rec.size == node.size
                    and rec.mtime_ns == node.mtime_ns):  # fmt: skip
                known, recorded = rec.hash, True
        else:
            size, mtime_us, mode = tree.size[ino], tree.mtime[ino], _base_mode(tree, ino)
        return FileState(
            path, ino, size, mtime_us, bool(mode & stat.S_IXUSR), known, base_hash,
            base is not None and base in tree.runnable, recorded,
        )  # fmt: skip

    def base_chunks(self, ino: int) -> tuple[str, ...] | None:
        """The chunk hashes (format 2025-12-04-beta ``chunkhashes``, 256 MiB each) of file
        ``ino`` when its content is still that of a chunked base file (no byte written,
        same size), else ``None``: its content is then known without reading it."""
        chunks = self.tree.chunks.get(ino)
        if chunks is None:
            return None
        node = self.nodes.get(ino)
        if node is not None and (
            node.data or min(node.size, node.base_limit) != self.tree.size[ino]
        ):
            return None
        return chunks

    def deleted_paths(self) -> list[str]:
        """Base files (paths) that are no longer regular files at their path, sorted."""
        tree = self.tree
        gone: set[str] = set()
        roots: set[int] = set()
        for parent, names in self.dirents.items():
            if not self._is_base_dir(parent):
                continue
            for name, ino in names.items():
                b = tree.lookup(parent, name)
                if b is not None and b != ino:
                    roots.add(b)
        for ino, node in self.nodes.items():
            if node.base and node.nlink == 0:
                roots.add(ino)
        stack = list(roots)
        seen: set[int] = set()
        while stack:
            ino = stack.pop()
            if ino in seen:
                continue
            seen.add(ino)
            if tree.is_dir(ino):
                stack.extend(i for _, i in tree.entries(ino))
            elif ino not in tree.symlinks:
                path = tree.path_of(ino)
                now = self.resolve(path)
                if now is None or not stat.S_ISREG(self.mode(now)):
                    gone.add(path)
        return sorted(gone)

    # -- content ----------------------------------------------------------------------------

    def data_path(self, ino: int) -> str | None:
        """The data file holding all of ``ino``'s content, or ``None`` when some of it is
        still in the base objects (or it has no data file)."""
        node = self.nodes.get(ino)
        if node is None or not node.data:
            return None
        if node.base and node.base_limit > 0:
            blocks = range(0, (node.base_limit - 1) // BLOCK_SIZE + 1)
            if any(i not in node.blocks for i in blocks):
                return None
        return os.path.join(self.data_dir, str(ino))

    def read_content(self, ino: int, store: ObjectStore) -> Iterator[bytes]:
        """The content of file ``ino`` in pieces (up to :data:`READ_SIZE` bytes): its data
        file, base objects read from ``store`` where the overlay does not hold the bytes.
        Raises ``OSError`` for the data file and the store's errors."""
        node = self.nodes.get(ino)
        tree = self.tree
        if node is None or not node.data:
            size = tree.size[ino] if node is None else min(node.size, node.base_limit)
            yield from self._base_range(ino, 0, size, store)
            return
        path = os.path.join(self.data_dir, str(ino))
        with open(path, "rb", buffering=0) as f:
            fd = f.fileno()
            pos = 0
            while pos < node.size:
                index = pos // BLOCK_SIZE
                stop = min((index + 1) * BLOCK_SIZE, node.size, pos + READ_SIZE)
                for from_base, lo, hi in content_sources(node, index, pos, stop):
                    if from_base:
                        yield from self._base_range(ino, lo, hi - lo, store)
                    else:
                        data = os.pread(fd, hi - lo, lo)
                        yield data + bytes(hi - lo - len(data)) if len(data) < hi - lo else data
                pos = stop

    def _base_range(self, ino: int, off: int, size: int, store: ObjectStore) -> Iterator[bytes]:
        """Bytes ``[off, off + size)`` of base file ``ino`` from its objects in ``store``."""
        end = off + size
        for number, part in enumerate(self.tree.file_parts(ino)):
            start = number * CHUNK_SIZE
            lo, hi = max(off, start), min(end, start + part.size)
            if lo >= hi:
                continue
            with store.open_range(data_key(part.hash), lo - start, hi - lo, size=part.size) as s:
                while True:
                    piece = s.read(READ_SIZE)
                    if not piece:
                        break
                    yield piece


def _load_manifests(
    locations: list[str], s3: S3Options | None
) -> list[Manifest | ManifestV2 | ManifestColumns]:
    """Decode the base manifests as the mount does (a canonical v1 manifest column by
    column, anything else in full), so the tree and its fingerprint are the mount's.
    Raises :class:`OverlayError` naming a manifest that cannot be read, and
    :class:`ManifestError` for one that cannot be decoded."""
    out: list[Manifest | ManifestV2 | ManifestColumns] = []
    for location in locations:
        try:
            data = read_location(location, s3)
        except VfsError as e:
            raise OverlayError(
                f"cannot read base manifest {location} of the overlay: {e}",
                hint="the commit needs the manifests the overlay was mounted with",
            ) from None
        out.append(decode_manifest_columns(data) or decode_any_manifest(data, source=location))
    return out

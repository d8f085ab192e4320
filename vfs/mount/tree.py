"""The in-memory inode tree of a mount, built once from merged manifests.

The base tree never changes while mounted, so it is stored compactly: one inode space in
which directories and files are numbered in the order the merged manifest first names them
(the root is inode 1), so the same manifests always give the same inode numbers. Per inode
there is a slot in a few flat arrays (size, mtime, parent, source manifest, 16-byte hash,
offset of its name); all names (bytes, as the kernel sends them) are one ``bytes`` blob in
inode order; each directory owns an ``array`` of its entries' inode numbers. A directory's
lookup index (its names' hashes, sorted, next to the inode numbers) is built when it is
first looked up in. No Python object is kept per file: about 50 bytes per entry plus the
name (and 12 more once its directory is indexed); 1M entries: 117 bytes of daemon RSS each.

A single manifest of format 2023-03-03 (the common mount) is built column by column with
C-level passes and no merge (:meth:`InodeTree._build_single_v1`); everything else, and any
single manifest that might be malformed, goes through :func:`merge_layers` and the general
build, which gives the same tree (or explains the problem).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate, chain, compress, repeat
from operator import attrgetter, itemgetter, ne

from vfs.errors import ManifestError
from vfs.manifest import Manifest, ManifestPath
from vfs.manifest.codec import ManifestColumns, _all_distinct
from vfs.manifest.merge import merge_layers
from vfs.manifest.v2 import ManifestFilePath, ManifestV2
from vfs.mount.objects import CHUNK_SIZE, ObjectRef

ROOT_INODE = 1

MAX_SIZE = 2**63 - 1
"""Largest file size the kernel represents (``st_size`` is a signed 64-bit byte count)."""

MAX_MTIME_US = (2**63 - 1) // 1000
"""Largest mtime magnitude in microseconds whose nanoseconds fit ``st_mtime_ns`` (int64)."""

_PATH = attrgetter("path")
_HASH = attrgetter("hash")
_SIZE = attrgetter("size")
_MTIME = attrgetter("mtime")
_FIRST = itemgetter(0)
_THIRD = itemgetter(2)

MAX_SYMLINK_HOPS = 40
"""Links followed while resolving one path, as the kernel does (``MAXSYMLINKS``); more is
``ELOOP``, which cannot lead anywhere."""


def _name_bytes(name: str, src: str, path: str) -> bytes:
    """The Linux name of a path component (surrogateescape turns back into the raw bytes).

    Raises :class:`ManifestError` naming the manifest and entry for a lone surrogate that
    surrogateescape cannot encode.
    """
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ManifestError(
            "the name cannot be a Linux file name (it holds a lone surrogate)",
            source=src,
            entry=repr(path),
        ) from None


class InodeTree:
    """Directories and files of the merged manifests, by inode number.

    Built with :meth:`from_manifests`. Inode ``0`` is unused; inode ``1`` is the root.
    ``mtime`` values are microseconds since the epoch; a directory's mtime is the newest
    mtime below it.
    """

    def __init__(self) -> None:
        self.children: dict[int, array[int]] = {ROOT_INODE: array("I")}
        self.names = b""
        self.name_off: array[int] = array("I", [0, 0, 0])
        self._index: dict[int, tuple[array[int], array[int]]] = {}
        self.size = array("Q", [0, 0])
        self.mtime = array("q", [0, 0])
        self.parent = array("I", [0, ROOT_INODE])
        self.source = array("H", [0, 0])
        self.hashes = bytearray(32)
        self.subdirs = array("I", [0, 0])
        self.file_count = 0
        self.total_size = 0
        self.sources: list[str] = []
        self.symlinks: dict[int, bytes] = {}
        self.chunks: dict[int, tuple[str, ...]] = {}
        self.runnable: set[int] = set()
        self.warnings: list[str] = []

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_manifests(
        cls,
        manifests: Sequence[Manifest | ManifestV2 | ManifestColumns],
        sources: Sequence[str] | None = None,
    ) -> InodeTree:
        """Merge ``manifests`` with :func:`~vfs.manifest.merge.merge_layers` (last wins per
        path; across manifests a file replaces a directory and a directory a file) and build
        the tree.

        Manifests of both formats may be mixed; a v1 manifest may also be given as
        :class:`~vfs.manifest.codec.ManifestColumns` (what a mount decodes). Of format
        2025-12-04-beta the tree also takes chunked files, symbolic links, the execute bit,
        explicit (also empty) directories, and delete markers, which remove what earlier
        manifests listed. ``sources`` names each manifest (file path or URI) for error
        messages and for provenance. Raises :class:`ManifestError` naming the manifest and
        entry when within one manifest a path is both a file and a directory, a name cannot
        be a Linux file name, or a size or mtime is out of range.
        """
        names = list(sources) if sources is not None else [f"#{i}" for i in range(len(manifests))]
        tree = None
        only = manifests[0] if len(manifests) == 1 else None
        if isinstance(only, (Manifest, ManifestColumns)):
            tree = cls()
            tree.sources = names
            if not tree._build_single_v1(only):
                tree = None  # might be malformed: the general build explains it
        if tree is None:
            tree = cls()
            tree.sources = names
            tree._build_general(
                [m.to_manifest() if isinstance(m, ManifestColumns) else m for m in manifests],
                names,
            )
        tree._check_ranges()
        tree._drop_escaping_symlinks()
        # Directories were created before their children: walk them backwards so that each
        # directory's mtime reaches its parent.
        parent, mtime = tree.parent, tree.mtime
        for ino in sorted(tree.children, reverse=True):
            up = parent[ino]
            if ino != ROOT_INODE and mtime[ino] > mtime[up]:
                mtime[up] = mtime[ino]
        return tree

    def _build_general(self, manifests: Sequence[Manifest | ManifestV2], names: list[str]) -> None:
        """Build from :func:`merge_layers`' result, entry by entry, with a ``dict`` of names
        per directory; then store the names compactly (:meth:`_store_names`)."""
        layers = merge_layers(manifests, sources=names)
        merged, explicit_dirs = layers.files, layers.dirs
        dir_by_path: dict[str, int] = {"": ROOT_INODE}
        children: dict[int, dict[bytes, int]] = {ROOT_INODE: {}}
        size, mtime, parent, source = self.size, self.mtime, self.parent, self.source
        hashes = self.hashes
        path, src = "", 0
        try:
            if merged:
                # The newest mtime below the root is at least that of any one file (which may
                # be before 1970, so 0 is no neutral start); new directories start likewise.
                path, (first, src) = next(iter(merged.items()))
                mtime[ROOT_INODE] = first.mtime or 0
            for path, (entry, src) in merged.items():
                dirpath, _, name = path.rpartition("/")
                dir_ino = dir_by_path.get(dirpath)
                if dir_ino is None:
                    dir_ino = self._make_dirs(
                        children, dirpath, dir_by_path, names[src], path, entry.mtime or 0
                    )
                bname = _name_bytes(name, names[src], path)
                siblings = children[dir_ino]
                if bname in siblings:
                    raise self._conflict(path, names[src])
                ino = len(size)
                siblings[bname] = ino
                parent.append(dir_ino)
                source.append(src)
                if type(entry) is ManifestPath:
                    entry_mtime = entry.mtime
                    size.append(entry.size)
                    mtime.append(entry_mtime)
                    hashes += bytes.fromhex(entry.hash)
                    self.total_size += entry.size
                else:
                    assert isinstance(entry, ManifestFilePath)
                    entry_mtime = self._add_v2_file(ino, entry)
                if entry_mtime > mtime[dir_ino]:
                    mtime[dir_ino] = entry_mtime
            for path, (_, src) in explicit_dirs.items():
                if path not in dir_by_path:
                    self._make_dirs(
                        children, path, dir_by_path, names[src], path, mtime[ROOT_INODE]
                    )
        except OverflowError:
            raise ManifestError(
                "the size or mtime is out of range (size 0 to 2**64-1, mtime a signed 64-bit "
                "count of microseconds)",
                source=names[src],
                entry=repr(path),
            ) from None
        self.file_count = len(merged)
        del merged, explicit_dirs, layers, dir_by_path
        by_ino = [b""] * len(size)
        for entries in children.values():
            for bname, ino in entries.items():
                by_ino[ino] = bname
        self.children = {d: array("I", entries.values()) for d, entries in children.items()}
        del children
        self._store_names(by_ino, array("I", map(len, by_ino)))

    def _store_names(self, parts: list[bytes], lengths: array[int]) -> None:
        """Keep the names (``parts`` joined, in inode order; ``lengths`` one per inode, 0 for
        inodes 0 and 1) as one blob and the offset of each inode's name."""
        self.names = b"".join(parts)
        off_type = "I" if len(self.names) < 2**32 else "Q"
        self.name_off = array(off_type, accumulate(lengths, initial=0))

    def _build_single_v1(self, manifest: Manifest | ManifestColumns) -> bool:
        """Build from one v1 manifest without a merge, run by run of entries that share a
        directory, with C-level passes over the columns; the same tree as
        :meth:`_build_general` gives (inode numbers, mtimes and all).

        Returns ``False`` (the tree is then half built and must be discarded) when the
        manifest might be one the general build refuses or treats specially: empty, a path
        listed twice, a path that is both a file and a directory, a name that is not strict
        UTF-8 (surrogates), a size or mtime out of range, a malformed hash.
        """
        if isinstance(manifest, ManifestColumns):
            paths = manifest.paths
            sizes, mtimes, hash_blob = manifest.sizes, manifest.mtimes, manifest.hashes
        else:
            entries = manifest.paths
            paths = list(map(_PATH, entries))
            try:
                sizes = array("Q", map(_SIZE, entries))
                mtimes = array("q", map(_MTIME, entries))
                hash_blob = bytes.fromhex("".join(map(_HASH, entries)))
            except (OverflowError, TypeError, ValueError):
                return False
            del entries
        n = len(paths)
        if not n or len(hash_blob) != 16 * n or len(sizes) != n or len(mtimes) != n:
            return False
        if not isinstance(manifest, ManifestColumns):  # columns were decoded valid
            try:
                joined = "".join(paths)
                if not joined.isascii():
                    joined.encode("utf-8")  # surrogates: the general build's rules apply
                del joined
            except (UnicodeEncodeError, TypeError):
                return False
            if not _all_distinct(paths):
                return False
        split = list(map(str.rpartition, paths, repeat("/")))
        dirpaths = list(map(_FIRST, split))
        bnames = list(map(str.encode, map(_THIRD, split)))
        del split
        blens = array("I", map(len, bnames))
        starts = list(compress(range(n), map(ne, dirpaths, chain((None,), dirpaths))))
        starts.append(n)
        dir_by_path: dict[str, int] = {"": ROOT_INODE}
        size, mtime, parent, source = self.size, self.mtime, self.parent, self.source
        children = self.children
        parts: list[bytes] = []
        hash_parts: list[bytes] = [bytes(self.hashes)]
        lengths = array("I", [0, 0])
        mtime[ROOT_INODE] = mtimes[0]
        for r in range(len(starts) - 1):
            start, end = starts[r], starts[r + 1]
            dirpath = dirpaths[start]
            d = dir_by_path.get(dirpath)
            if d is None:
                d = self._fast_make_dirs(
                    dirpath, dir_by_path, parts, hash_parts, lengths, mtimes[start]
                )
            first = len(size)
            k = end - start
            children[d].extend(range(first, first + k))
            size.extend(sizes[start:end])
            run_mtimes = mtimes[start:end]
            mtime.extend(run_mtimes)
            parent.extend(array("I", (d,)) * k)
            source.extend(array("H", (0,)) * k)
            hash_parts.append(hash_blob[16 * start : 16 * end])
            parts.append(b"".join(bnames[start:end]))
            lengths.extend(blens[start:end])
            newest = max(run_mtimes)
            if newest > mtime[d]:
                mtime[d] = newest
        if not dir_by_path.keys().isdisjoint(paths):
            return False  # a path is both a file and a directory
        self.file_count = n
        self.total_size = sum(sizes)
        self.hashes = bytearray(b"".join(hash_parts))
        del bnames, dirpaths, paths
        self._store_names(parts, lengths)
        return True

    def _fast_make_dirs(
        self,
        dirpath: str,
        dir_by_path: dict[str, int],
        parts: list[bytes],
        hash_parts: list[bytes],
        lengths: array[int],
        mtime: int,
    ) -> int:
        """:meth:`_make_dirs` for :meth:`_build_single_v1` (names known to be strict UTF-8,
        conflicts checked afterwards)."""
        components = dirpath.split("/")
        current = ROOT_INODE
        for depth in range(len(components)):
            prefix = "/".join(components[: depth + 1])
            found = dir_by_path.get(prefix)
            if found is not None:
                current = found
                continue
            bname = components[depth].encode()
            ino = len(self.size)
            self.children[current].append(ino)
            self.children[ino] = array("I")
            parts.append(bname)
            lengths.append(len(bname))
            self.size.append(0)
            self.mtime.append(mtime)
            self.parent.append(current)
            self.source.append(0)
            hash_parts.append(bytes(16))
            self.subdirs.extend([0] * (ino + 1 - len(self.subdirs)))
            self.subdirs[current] += 1
            dir_by_path[prefix] = ino
            current = ino
        return current

    def _check_ranges(self) -> None:
        """Refuse sizes and mtimes the kernel cannot represent (:data:`MAX_SIZE`,
        :data:`MAX_MTIME_US`), naming the manifest and entry."""
        bad = None
        if self.size and max(self.size) > MAX_SIZE:
            bad = next(i for i, v in enumerate(self.size) if v > MAX_SIZE), "size"
        elif self.mtime and max(max(self.mtime), -min(self.mtime)) > MAX_MTIME_US:
            out = [i for i, v in enumerate(self.mtime) if abs(v) > MAX_MTIME_US]
            bad = next((i for i in out if i not in self.children), out[0]), "mtime"
        if bad is None:
            return
        ino, what = bad
        value = self.size[ino] if what == "size" else self.mtime[ino]
        raise ManifestError(
            f"the {what} {value} is out of range (a size is at most 2**63-1 bytes, an mtime "
            f"at most {MAX_MTIME_US} microseconds from the epoch)",
            source=self.source_of(ino),
            entry=repr(self.path_of(ino)),
            hint="fix the manifest: the kernel cannot represent this file",
        )

    def _drop_escaping_symlinks(self) -> None:
        """Drop, with a warning, every symlink the kernel would resolve to a place outside
        the mount: links are followed through other links in the tree, as the kernel
        resolves them (a check of the link text alone misses ``a -> L/../..`` with
        ``L -> ../..``)."""
        escaping = [ino for ino in self.symlinks if self._escapes(ino)]
        for ino in escaping:
            path = self.path_of(ino)
            self.warnings.append(
                f"dropped symlink {path!r} -> "
                f"{self.symlinks[ino].decode('utf-8', 'backslashreplace')!r} "
                f"(from {self.source_of(ino)}): it leads outside the mount"
            )
            self.children[self.parent[ino]].remove(ino)
            self._index.pop(self.parent[ino], None)
            del self.symlinks[ino]
            self.file_count -= 1

    def _escapes(self, link: int) -> bool:
        """True when following symlink ``link`` climbs above the root (or is absolute)."""
        hops = [0]

        def walk(start: int, target: bytes) -> int | None:
            """Resolve ``target`` from directory ``start``; the inode reached, ``None``
            when resolution stops inside the tree (missing, not a directory, ELOOP);
            raises ``_Escape`` when it leaves the root."""
            if target.startswith(b"/"):
                raise _Escape
            current = start
            parts = [p for p in target.split(b"/") if p and p != b"."]
            for part in parts:
                if current not in self.children:
                    return None  # ENOTDIR
                if part == b"..":
                    if current == ROOT_INODE:
                        raise _Escape
                    current = self.parent[current]
                    continue
                child = self.lookup(current, part)
                if child is None:
                    return None  # ENOENT: nothing after this resolves
                if child in self.symlinks:
                    hops[0] += 1
                    if hops[0] > MAX_SYMLINK_HOPS:
                        return None  # ELOOP
                    resolved = walk(current, self.symlinks[child])
                    if resolved is None:
                        return None
                    child = resolved
                current = child
            return current

        try:
            walk(self.parent[link], self.symlinks[link])
        except _Escape:
            return True
        return False

    def _add_v2_file(self, ino: int, entry: ManifestFilePath) -> int:
        """Fill inode ``ino``'s slots from a v2 entry; return its mtime (0 for links)."""
        if entry.symlink_target is not None:
            target = entry.symlink_target.encode("utf-8", "surrogateescape")
            self.symlinks[ino] = target
            self.size.append(len(target))
            self.mtime.append(0)
            self.hashes += bytes(16)
            return 0
        entry_size = entry.size or 0
        entry_mtime = entry.mtime or 0
        self.size.append(entry_size)
        self.mtime.append(entry_mtime)
        self.total_size += entry_size
        if entry.chunkhashes is not None:
            self.chunks[ino] = tuple(entry.chunkhashes)
            self.hashes += bytes(16)
        else:
            self.hashes += bytes.fromhex(entry.hash or "")
        if entry.runnable:
            self.runnable.add(ino)
        return entry_mtime

    def _make_dirs(
        self,
        children: dict[int, dict[bytes, int]],
        dirpath: str,
        dir_by_path: dict[str, int],
        src: str,
        path: str,
        mtime: int,
    ) -> int:
        """Create ``dirpath`` and its missing ancestors for the file ``path`` whose mtime is
        ``mtime`` (the starting mtime of the new directories); return its inode."""
        parts = dirpath.split("/")
        current = ROOT_INODE
        for depth in range(len(parts)):
            prefix = "/".join(parts[: depth + 1])
            found = dir_by_path.get(prefix)
            if found is not None:
                current = found
                continue
            bname = _name_bytes(parts[depth], src, path)
            siblings = children[current]
            if bname in siblings:  # a file of that name exists already
                raise self._conflict(prefix, src, inside=path)
            ino = len(self.size)
            siblings[bname] = ino
            children[ino] = {}
            self.size.append(0)
            self.mtime.append(mtime)
            self.parent.append(current)
            self.source.append(0)
            self.hashes += bytes(16)
            self.subdirs.extend([0] * (ino + 1 - len(self.subdirs)))
            self.subdirs[current] += 1
            dir_by_path[prefix] = ino
            current = ino
        return current

    def _conflict(self, path: str, src: str, inside: str | None = None) -> ManifestError:
        what = (
            f"it is a file, and a directory holding {inside!r}"
            if inside
            else ("it is a directory, and also a file")
        )
        return ManifestError(
            f"{path!r} is both a file and a directory ({what})",
            source=src,
            entry=repr(inside or path),
            hint="fix the manifests so that no path is used as both",
        )

    # -- queries (the FUSE adapter's hot path) ----------------------------------------------

    def is_dir(self, ino: int) -> bool:
        """True when ``ino`` is a directory."""
        return ino in self.children

    def exists(self, ino: int) -> bool:
        """True when ``ino`` is an inode of this tree."""
        return 0 < ino < len(self.size)

    def lookup(self, parent_ino: int, name: bytes) -> int | None:
        """Inode of ``name`` in directory ``parent_ino``, or ``None``."""
        index = self._index.get(parent_ino)
        if index is None:
            if parent_ino not in self.children:
                return None
            index = self._build_index(parent_ino)
        keys, inodes = index
        key = hash(name)
        i = bisect_left(keys, key)
        names, off = self.names, self.name_off
        while i < len(keys) and keys[i] == key:
            ino = inodes[i]
            if names[off[ino] : off[ino + 1]] == name:
                return ino
            i += 1
        return None

    def _build_index(self, dir_ino: int) -> tuple[array[int], array[int]]:
        """The lookup index of a directory: its names' ``hash()`` values, sorted, and the
        inode numbers in the same order (kept until unmount: 12 bytes per entry)."""
        names, off = self.names, self.name_off
        kids = self.children[dir_ino]
        keys = [hash(names[off[i] : off[i + 1]]) for i in kids]
        order = sorted(range(len(kids)), key=keys.__getitem__)
        index = (array("q", map(keys.__getitem__, order)), array("I", map(kids.__getitem__, order)))
        self._index[dir_ino] = index
        return index

    def name_of(self, ino: int) -> bytes:
        """The name of ``ino`` in its directory (``b""`` for the root)."""
        return self.names[self.name_off[ino] : self.name_off[ino + 1]]

    def hash_hex(self, ino: int) -> str:
        """Content hash of file ``ino`` as 32 hex digits."""
        return self.hashes[16 * ino : 16 * ino + 16].hex()

    def file_parts(self, ino: int) -> tuple[ObjectRef, ...]:
        """The CAS objects holding file ``ino``'s content, in order: one object, or the
        256 MiB chunks of a chunked v2 file."""
        chunks = self.chunks.get(ino)
        if chunks is None:
            return (ObjectRef(self.hash_hex(ino), self.size[ino]),)
        total = self.size[ino]
        return tuple(
            ObjectRef(h, min(CHUNK_SIZE, total - i * CHUNK_SIZE)) for i, h in enumerate(chunks)
        )

    def hash_text(self, ino: int) -> str:
        """The content hash of a file as the manifest gives it: its xxh128, or the chunk
        hashes joined by commas for a chunked file."""
        chunks = self.chunks.get(ino)
        return ",".join(chunks) if chunks is not None else self.hash_hex(ino)

    def nlink(self, ino: int) -> int:
        """Link count: 1 for a file, 2 + subdirectories for a directory."""
        if ino in self.children:
            return 2 + (self.subdirs[ino] if ino < len(self.subdirs) else 0)
        return 1

    def path_of(self, ino: int) -> str:
        """Path of ``ino`` relative to the root (slow: for messages and xattrs only)."""
        parts: list[str] = []
        while ino != ROOT_INODE:
            parts.append(self.name_of(ino).decode("utf-8", "surrogateescape"))
            ino = self.parent[ino]
        return "/".join(reversed(parts))

    def source_of(self, ino: int) -> str:
        """Name of the manifest a file came from."""
        return self.sources[self.source[ino]] if self.sources else ""

    def inodes_with_hash(self, hash_: str) -> list[int]:
        """Files whose content is object ``hash_`` (or that have it as a chunk); a scan of
        the tree, for the rare invalidation after an object failed verification."""
        raw = bytes.fromhex(hash_)
        found = []
        start = self.hashes.find(raw)
        while start >= 0:
            if start % 16 == 0:
                found.append(start // 16)
            start = self.hashes.find(raw, start + 1)
        found += [ino for ino, chunks in self.chunks.items() if hash_ in chunks]
        return found

    def entries(self, dir_ino: int) -> Iterator[tuple[bytes, int]]:
        """``(name, inode)`` of a directory's entries, in a stable order."""
        names, off = self.names, self.name_off
        return ((names[off[i] : off[i + 1]], i) for i in self.children[dir_ino])

    def first_file(self) -> int | None:
        """The inode of the first regular file with content, or ``None`` (no such file)."""
        for ino in range(1, len(self.size)):
            if self.size[ino] and ino not in self.children and ino not in self.symlinks:
                return ino
        return None

    def __len__(self) -> int:
        """Number of inodes, the root included."""
        return len(self.size) - 1


class _Escape(Exception):
    """A symlink resolution left the root."""

"""The durable record of a writable mount's overlay: one SQLite database (WAL).

What it holds (the namespace changes over the immutable base tree; file data lives next to
it in ``data/<ino>`` files, see :mod:`vfs.mount.overlay`):

- ``meta``: ``base`` (fingerprint of the base tree the overlay was made over), ``next_ino``
  (the next inode number to allocate; numbers above the base tree's largest), and what the
  last mount was made of, for ``vfs commit``: ``manifests`` (JSON list of locations),
  ``store`` (URI), ``mountpoint``.
- ``inodes``: one row per overlay inode (a new file, directory or symlink) and per base
  inode whose metadata or content changed: mode (``st_mode`` with the type bits), size in
  bytes, mtime and ctime in nanoseconds since the epoch, symlink target, parent directory,
  ``base`` (1 when the number is a base tree inode), ``data`` (1 when ``data/<ino>`` holds
  content), ``base_limit`` (bytes at the start of the base content still valid), ``nlink``
  (0: unlinked; a base inode's tombstone, or an overlay inode still open when it crashed).
- ``dirents``: ``(parent, name) -> ino`` entries added over the base, and whiteouts
  (``ino = 0``) hiding a base name that was removed or renamed away.
- ``blocks``: ``(ino, index)`` for each :data:`~vfs.mount.blocks.BLOCK_SIZE` block of a base
  file whose data file holds all of it (recorded only after the data is written).
- ``extents``: ``(ino, index) -> spans``, the byte ranges (absolute ``[start, end)`` pairs,
  JSON) of a base file's block that writes put in its data file, for a block written only
  in part; the rest of the block is still read from the base (recorded after the write).
- ``xattrs``: ``(ino, name) -> value``, the ``user.*`` extended attributes set through the
  mount (names and values are bytes; at most :data:`XATTR_MAX_BYTES` per inode).
- ``writers``: ``ino -> handles``, the files the running mount has open for writing
  (recorded when the first such handle opens, dropped at its last release, cleared when a
  mount starts), so that ``vfs commit`` can name and skip files still being written.
- ``hashes``: ``ino -> (hash, size, mtime_ns)``, the xxh128 of a file's whole content
  computed without reading it again (kept while it was written sequentially from offset 0,
  or by write-behind), with the size (bytes) and mtime (ns) it had then. Recorded at the
  last close; the row is deleted *before* any later write or truncate touches the data
  file, so a row present is a hash of the current content (``vfs commit`` also checks the
  size and mtime).
- ``uploads``: ``(hash, store) -> size``: CAS objects write-behind (``--upload-on-close``)
  stored in ``store`` (a store URI), each verified while it was sent (its bytes hash to its
  key), so ``vfs commit`` to the same store skips them.

Every change is committed before the operation that made it returns. The durability target
is ``kill -9`` of the daemon (committed pages are in the kernel), not power loss:
``synchronous=NORMAL`` in WAL mode keeps the database consistent either way.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vfs.hashing import hash_bytes

if TYPE_CHECKING:
    from vfs.mount.tree import InodeTree


class DirentView:
    """The directory view of an overlay over its base: a directory's entries are the base
    tree's, less those the overlay's ``dirents`` hide (inode 0: a whiteout) or replace,
    plus the ones it adds. Shared by the mounted overlay and the commit's snapshot of it;
    subclasses provide ``tree`` and ``dirents`` (parent inode -> {name: inode})."""

    tree: InodeTree
    dirents: dict[int, dict[bytes, int]]

    def _is_base_dir(self, ino: int) -> bool:
        return ino <= len(self.tree) and self.tree.is_dir(ino)

    def entries(self, parent: int) -> list[tuple[bytes, int]]:
        """``(name, inode)`` of directory ``parent``'s entries: the base entries not hidden
        or replaced, then those added."""
        added = self.dirents.get(parent, {})
        out: list[tuple[bytes, int]] = []
        if self._is_base_dir(parent):
            out = [(n, i) for n, i in self.tree.entries(parent) if n not in added]
        out += [(n, i) for n, i in added.items() if i]
        return out

    def lookup(self, parent: int, name: bytes) -> int | None:
        """Inode of ``name`` in directory ``parent``, or ``None``."""
        entries = self.dirents.get(parent)
        if entries is not None and name in entries:
            return entries[name] or None
        if self._is_base_dir(parent):
            return self.tree.lookup(parent, name)
        return None


META_MANIFESTS = "manifests"
"""``meta`` key: JSON list of the base manifests' locations (written by the mount)."""
META_STORE = "store"
"""``meta`` key: URI of the store holding the base objects (written by the mount)."""
META_MOUNTPOINT = "mountpoint"
"""``meta`` key: the mount point the overlay was last mounted on."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY,
    mode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    target BLOB,
    parent INTEGER NOT NULL,
    base INTEGER NOT NULL,
    data INTEGER NOT NULL,
    base_limit INTEGER NOT NULL,
    nlink INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dirents (
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    ino INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (ino, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS extents (
    ino INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    spans TEXT NOT NULL,
    PRIMARY KEY (ino, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS writers (ino INTEGER PRIMARY KEY, handles INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS hashes (
    ino INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    hash TEXT NOT NULL,
    store TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (hash, store)
);
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
"""

XATTR_MAX_BYTES = 64 * 1024
"""Most bytes of ``user.*`` attribute names and values one inode may hold (the kernel's
limit of one value, ``XATTR_SIZE_MAX``, and of a listing, ``XATTR_LIST_MAX``)."""


@dataclass(frozen=True, slots=True)
class KnownHash:
    """A file's content hash known without reading it: ``hash`` (xxh128, 32 hex digits)
    of the whole content, which had ``size`` bytes and mtime ``mtime_ns`` (ns) then."""

    hash: str
    size: int
    mtime_ns: int


@dataclass(slots=True)
class Node:
    """An inode the overlay knows about (new, or a base inode that changed).

    ``mode`` is ``st_mode`` (type and permission bits); ``size`` in bytes; ``mtime_ns`` and
    ``ctime_ns`` in nanoseconds since the epoch; ``target`` the symlink target; ``base``
    True when ``ino`` is a base tree inode; ``data`` True when ``data/<ino>`` holds
    content; ``base_limit`` the bytes at the start of the base content still valid (0 for
    new files); ``blocks`` the indices of blocks held whole by the data file; ``extents``
    per block written in part, its written ``[start, end)`` byte ranges (sorted, disjoint);
    ``nlink`` 0 once unlinked.
    ``dirty`` marks in-memory size/mtime changes not yet written to the database.
    """

    ino: int
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    parent: int
    base: bool
    target: bytes | None = None
    data: bool = False
    base_limit: int = 0
    nlink: int = 1
    blocks: set[int] = field(default_factory=set)
    extents: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    dirty: bool = False


class OverlayDB:
    """The overlay's SQLite database at ``path`` (created when absent).

    Raises ``sqlite3.Error`` on I/O problems; callers name the overlay directory.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)
        self._depth = 0

    @classmethod
    def reader(cls, path: str, timeout: float = 30.0) -> OverlayDB:
        """A connection to an existing database for reading only (``vfs commit``): no
        schema is created and no pragma changed, so it works beside the mount's own
        connection (WAL readers never block it). ``timeout``: seconds to wait for a lock."""
        self = cls.__new__(cls)
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=timeout)
        self._depth = 0
        return self

    def close(self) -> None:
        """Close the connection (everything is committed already)."""
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction (nested uses join the outer one); rolled back when
        the body raises."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.conn
        except BaseException:
            self._depth = 0
            self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self.conn.execute("COMMIT")

    # -- meta -------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """The value of ``key`` in ``meta``, or ``None``."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set ``key`` in ``meta`` (inside or outside a transaction)."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- inodes -----------------------------------------------------------------------------

    def save_node(self, node: Node) -> None:
        """Insert or replace the row of ``node`` (not its blocks); clears ``dirty``."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO inodes (ino, mode, size, mtime_ns, ctime_ns, target,"
                " parent, base, data, base_limit, nlink) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (node.ino, node.mode, node.size, node.mtime_ns, node.ctime_ns, node.target,
                 node.parent, int(node.base), int(node.data), node.base_limit, node.nlink),
            )  # fmt: skip
        node.dirty = False

    def delete_node(self, ino: int) -> None:
        """Remove inode ``ino``'s row, its block records and its extended attributes."""
        with self.transaction() as c:
            c.execute("DELETE FROM inodes WHERE ino = ?", (ino,))
            c.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))
            self.clear_content(ino)

    def clear_content(self, ino: int) -> None:
        """Forget which blocks and extents of ``ino`` the data file holds (and its hash)."""
        with self.transaction() as c:
            c.execute("DELETE FROM blocks WHERE ino = ?", (ino,))
            c.execute("DELETE FROM extents WHERE ino = ?", (ino,))
            c.execute("DELETE FROM hashes WHERE ino = ?", (ino,))

    # -- content hashes and write-behind uploads ---------------------------------------------

    def set_hash(self, ino: int, known: KnownHash) -> None:
        """Record ``known`` as the hash of ``ino``'s whole content."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO hashes (ino, hash, size, mtime_ns) VALUES (?, ?, ?, ?)",
                (ino, known.hash, known.size, known.mtime_ns),
            )

    def drop_hash(self, ino: int) -> None:
        """Forget ``ino``'s recorded hash (its content is about to change)."""
        with self.transaction() as c:
            c.execute("DELETE FROM hashes WHERE ino = ?", (ino,))

    def load_hashes(self) -> dict[int, KnownHash]:
        """Every recorded hash (``{}`` for an overlay made before the table existed)."""
        try:
            rows = self.conn.execute("SELECT ino, hash, size, mtime_ns FROM hashes").fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return {}
            raise
        return {int(i): KnownHash(str(h), int(s), int(m)) for i, h, s, m in rows}

    def add_upload(self, hash_: str, store: str, size: int) -> None:
        """Record that object ``hash_`` (``size`` bytes) is stored in ``store`` (a URI)."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO uploads (hash, store, size) VALUES (?, ?, ?)",
                (hash_, store, size),
            )

    def load_uploads(self, store: str) -> dict[str, int]:
        """``{hash: size}`` of the objects write-behind stored in ``store`` (a URI)."""
        try:
            rows = self.conn.execute(
                "SELECT hash, size FROM uploads WHERE store = ?", (store,)
            ).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return {}
            raise
        return {str(h): int(s) for h, s in rows}

    def add_blocks(self, ino: int, indices: Iterable[int]) -> None:
        """Record blocks ``indices`` of ``ino`` as held whole by the data file (their data
        is written); their extents records go."""
        rows = [(ino, i) for i in indices]
        with self.transaction() as c:
            c.executemany("INSERT OR IGNORE INTO blocks (ino, idx) VALUES (?, ?)", rows)
            c.executemany("DELETE FROM extents WHERE ino = ? AND idx = ?", rows)

    def set_extents(self, ino: int, index: int, spans: list[tuple[int, int]]) -> None:
        """Record the written byte ranges of block ``index`` of ``ino``."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO extents (ino, idx, spans) VALUES (?, ?, ?)",
                (ino, index, json.dumps(spans)),
            )

    def load_nodes(self) -> dict[int, Node]:
        """Every inode row, with its copied-up blocks."""
        nodes: dict[int, Node] = {}
        rows = self.conn.execute(
            "SELECT ino, mode, size, mtime_ns, ctime_ns, target, parent, base, data,"
            " base_limit, nlink FROM inodes"
        )
        for ino, mode, size, mtime, ctime, target, parent, base, data, limit, nlink in rows:
            nodes[ino] = Node(
                ino, mode, size, mtime, ctime, parent, bool(base),
                target=None if target is None else bytes(target),
                data=bool(data), base_limit=limit, nlink=nlink,
            )  # fmt: skip
        for ino, idx in self.conn.execute("SELECT ino, idx FROM blocks"):
            node = nodes.get(ino)
            if node is not None:
                node.blocks.add(idx)
        for ino, idx, spans in self.conn.execute("SELECT ino, idx, spans FROM extents"):
            node = nodes.get(ino)
            if node is not None:
                node.extents[idx] = [(int(a), int(b)) for a, b in json.loads(spans)]
        return nodes

    # -- directory entries ------------------------------------------------------------------

    def set_dirent(self, parent: int, name: bytes, ino: int) -> None:
        """Set entry ``name`` of ``parent`` to ``ino`` (0: a whiteout)."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO dirents (parent, name, ino) VALUES (?, ?, ?)",
                (parent, name, ino),
            )

    def delete_dirent(self, parent: int, name: bytes) -> None:
        """Drop the record of entry ``name`` of ``parent`` (the base entry shows again)."""
        with self.transaction() as c:
            c.execute("DELETE FROM dirents WHERE parent = ? AND name = ?", (parent, name))

    # -- extended attributes ----------------------------------------------------------------

    def set_xattr(self, ino: int, name: bytes, value: bytes | None) -> None:
        """Set attribute ``name`` of ``ino`` to ``value`` (``None``: remove it)."""
        with self.transaction() as c:
            if value is None:
                c.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name))
            else:
                c.execute(
                    "INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?, ?, ?)",
                    (ino, name, value),
                )

    def clear_xattrs(self, ino: int) -> None:
        """Remove every attribute of ``ino`` (its last name is gone)."""
        with self.transaction() as c:
            c.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))

    def load_xattrs(self) -> dict[int, dict[bytes, bytes]]:
        """Every attribute: ``{ino: {name: value}}``."""
        out: dict[int, dict[bytes, bytes]] = {}
        for ino, name, value in self.conn.execute("SELECT ino, name, value FROM xattrs"):
            out.setdefault(ino, {})[bytes(name)] = bytes(value)
        return out

    # -- files open for writing -------------------------------------------------------------

    def set_writers(self, ino: int, handles: int) -> None:
        """Record that ``ino`` has ``handles`` handles open for writing (0: drop the row)."""
        with self.transaction() as c:
            if handles:
                c.execute(
                    "INSERT OR REPLACE INTO writers (ino, handles) VALUES (?, ?)", (ino, handles)
                )
            else:
                c.execute("DELETE FROM writers WHERE ino = ?", (ino,))

    def clear_writers(self) -> None:
        """Forget every writer (a mount starting: no handle survives its predecessor)."""
        with self.transaction() as c:
            c.execute("DELETE FROM writers")

    def load_writers(self) -> set[int]:
        """Inodes recorded as open for writing."""
        return {int(ino) for (ino,) in self.conn.execute("SELECT ino FROM writers")}

    def load_dirents(self) -> dict[int, dict[bytes, int]]:
        """Every recorded entry: ``{parent: {name: ino (0 = whiteout)}}``."""
        out: dict[int, dict[bytes, int]] = {}
        for parent, name, ino in self.conn.execute("SELECT parent, name, ino FROM dirents"):
            out.setdefault(parent, {})[bytes(name)] = ino
        return out


def content_sources(node: Node, index: int, lo: int, hi: int) -> list[tuple[bool, int, int]]:
    """Where bytes ``[lo, hi)`` (within block ``index``) of ``node``'s content are:
    ``(from the base?, start, stop)`` pieces in order, empty ones left out. A block held
    whole, and everything at or past ``base_limit``, is in the data file; otherwise the
    written extents are and the rest comes from the base object."""
    if index in node.blocks or lo >= node.base_limit:
        return [(False, lo, hi)]
    cut = min(hi, node.base_limit)
    out: list[tuple[bool, int, int]] = []
    pos = lo
    for a, b in node.extents.get(index, ()):
        if b <= pos or a >= cut:
            continue
        if a > pos:
            out.append((True, pos, a))
        out.append((False, max(a, pos), min(b, cut)))
        pos = min(b, cut)
    if pos < cut:
        out.append((True, pos, cut))
    if cut < hi:
        out.append((False, cut, hi))
    return out


def base_fingerprint(tree: InodeTree) -> str:
    """xxh128 of the base tree's names, hashes, sizes, mtimes and parents: equal for equal
    merged manifests, so an overlay is only ever opened over the base it was made on."""
    extra = (sorted(tree.symlinks.items()), sorted(tree.chunks.items()), sorted(tree.runnable))
    parts = [tree.names, bytes(tree.hashes), tree.size.tobytes(), tree.mtime.tobytes(),
             tree.parent.tobytes(), repr(extra).encode()]  # fmt: skip
    return hash_bytes(b"\0".join(parts))

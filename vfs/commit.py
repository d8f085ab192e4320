"""``vfs commit``: turn what a writable mount's overlay changed into an output manifest.

Steps (:func:`commit_overlay`):

1. Read the overlay (:class:`~vfs.mount.overlaydiff.OverlaySnapshot`: a consistent view,
   with the mount running or not) and list the candidates: new, renamed, written, chmod'ed
   or touched regular files under the output directories. Files still open for writing
   are named and skipped (or waited for with ``wait``).
2. Hash each candidate whose content is not known (xxh128, :mod:`vfs.hashing`; a hash the
   mount recorded while the file was written sequentially is reused, not read) and keep
   only the outputs: a file whose hash differs from what its path held before (the base
   manifest, or the last commit). A file rewritten with identical bytes, or only touched,
   is not an output; in format 2025-12-04-beta a changed execute bit is recorded, and so
   are deletions. In format 2025-12-04-beta a file larger than one 256 MiB chunk is hashed
   per chunk (``chunkhashes``, reference §2; :class:`~vfs.hashing.ChunkHasher`): its hash
   is then the chunk list, compared with the base's chunk list (``hash_text``) or the last
   commit's, and recorded as such. A whole-file hash the mount recorded does not give the
   chunk hashes, so such a file is read; one still holding a chunked base file's content
   keeps that chunk list unread, and one still holding a base object hashed whole keeps
   that hash (the format allows ``hash`` at any size, and the object is in the store).
3. Upload the outputs' CAS objects, ``Data/{hash}.xxh128`` (reference/job-attachments.md
   §4, §8.3), one per 256 MiB chunk of a chunked file (bytes ``[i * 256 MiB, (i + 1) *
   256 MiB)``, sent from that range with the store's ``put_file_range``; write-behind
   stores whole files, so it rarely spares a chunk); an object the store has at the right
   size is skipped, and so is one the
   mount's write-behind stored in the same store (recorded in the overlay, verified as it
   was sent: no request at all). Unlike deadline, the
   data goes up *before* the manifest, so a published manifest never names missing data.
4. Write the output manifest: canonical format 2023-03-03 by default (paths relative to the
   asset root, the mount's root; reference §1), or a 2025-12-04-beta diff manifest whose
   ``parentManifestHash`` is the base manifest (then the previous v2 commit; reference §2).
   Symbolic links created or moved: format 2025-12-04-beta records them as links (a target
   that is absolute or climbs out of the root is skipped with a warning, as ``vfs manifest
   snapshot`` refuses it); format 2023-03-03 has no links, so, like deadline's scan of the
   asset root (reference §1.1, §8.1: ``os.path.isfile`` follows links), a link to a regular
   file inside the mount is followed and the file recorded under the link's path; a link
   that is dangling, leads out of the mount or to a directory is skipped with a warning
   naming it (deadline would upload a directory link's files too).
   With session ids it goes to the official key ``Manifests/{farm}/{queue}/{job}/{step}/
   [{task}/]{ts}_{sessionAction}/{xxh128(fsl + rootPath)}_output`` with the output metadata
   (``asset-root``…; reference §4, §4.1, §8.4); with ``output_file`` to a local file.
5. Only once the manifest upload is confirmed (the store answers its size), record the
   commit and the committed entries in ``DIR/commits.db`` (:class:`CommitLog`).

Idempotent and resumable: a commit killed anywhere is run again from the start; objects
uploaded before are skipped, the manifest goes to the same key as before (the commit log
keeps the session action start time chosen by an unfinished commit), and nothing is
recorded twice. A second commit after a finished one finds nothing new and writes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from xxhash import xxh3_128

from vfs.errors import UploadError, VfsError
from vfs.hashing import ChunkHasher, hash_bytes, new_hasher
from vfs.manifest import (
    FILE_CHUNK_SIZE_BYTES,
    MANIFEST_VERSION_V1,
    MANIFEST_VERSION_V2,
    Manifest,
    ManifestDirectoryPath,
    ManifestFilePath,
    ManifestPath,
    ManifestV2,
    encode_manifest,
    encode_manifest_v2,
    symlink_target_problem,
)
from vfs.mount.overlaydiff import FileState, LinkState, OverlaySnapshot
from vfs.storage import (
    ObjectStore,
    S3Options,
    data_key,
    manifest_key,
    manifest_metadata,
    manifest_path_of_key,
    open_store,
    output_manifest_name,
    session_action_manifest_prefix,
)
from vfs.storage.slices import FileSlice, RangeUploadStore, ShortReadError
from vfs.transfer.upload import FATAL_ERRORS, LIST_MIN_OBJECTS, settle_by_listing

log = logging.getLogger(__name__)

SMALL_OBJECT = 8 * 1024 * 1024
"""Objects up to this many bytes are sent with one PUT from memory (s3transfer's multipart
threshold; a transfer manager per small file costs about a third more time on a local
server)."""

WAIT_POLL = 0.25
"""Seconds between looks at the files open for writing, with ``wait``."""

ENV_IDS = {
    "farm_id": "DEADLINE_FARM_ID",
    "queue_id": "DEADLINE_QUEUE_ID",
    "job_id": "DEADLINE_JOB_ID",
    "step_id": "DEADLINE_STEP_ID",
    "task_id": "DEADLINE_TASK_ID",
    "session_action_id": "DEADLINE_SESSIONACTION_ID",
    "start_time": "DEADLINE_SESSIONACTION_START_TIME",
}
"""The worker's environment variables of a task's session (reference §8.4: the session
environment plus ``DEADLINE_SESSIONACTION_ID``, ``DEADLINE_SESSIONACTION_START_TIME``,
``DEADLINE_STEP_ID`` and the optional ``DEADLINE_TASK_ID`` of ``attachment_upload.py``)."""


class CommitError(VfsError):
    """A commit cannot be made; the message names the path, key or option and the fix."""


@dataclass(frozen=True, slots=True)
class SessionIds:
    """Where an output manifest goes: the ids of the task's session action and its start
    (``start_time``: seconds since the epoch, the worker's
    ``DEADLINE_SESSIONACTION_START_TIME``; ``None``: chosen at the first try and kept)."""

    farm_id: str
    queue_id: str
    job_id: str
    step_id: str
    task_id: str | None
    session_action_id: str
    start_time: float | None = None

    def identity(self) -> str:
        """The ids without the start time, as one string (the commit log's target)."""
        return "/".join((self.farm_id, self.queue_id, self.job_id, self.step_id,
                         self.task_id or "", self.session_action_id))  # fmt: skip


@dataclass(slots=True)
class CommitOptions:
    """What to commit and where.

    ``output_dirs``: relative directories whose files are outputs (all of the mount when
    empty). ``manifest_version``: ``2023-03-03`` or ``2025-12-04-beta``. ``ids``: the
    official manifest key; ``output_file``: a local manifest file (at least one of the
    two). ``asset_root``: the ``rootPath`` of the job's manifest (metadata and manifest
    name; default: the mount point). ``store_uri``: the store for CAS objects and the
    manifest (default: the mount's store). ``wait``: wait for files open for writing.
    ``include_dotfiles``: also commit names starting with ``.`` (the worker's own scan
    skips them; :class:`OutputSelection`).
    """

    output_dirs: Sequence[str] = ()
    manifest_version: str = MANIFEST_VERSION_V1
    ids: SessionIds | None = None
    output_file: str | None = None
    asset_root: str | None = None
    file_system_location_name: str | None = None
    store_uri: str | None = None
    wait: bool = False
    workers: int = 16
    include_dotfiles: bool = False


@dataclass(slots=True)
class CommitResult:
    """The outcome: counts of files (``files``: outputs written to the manifest; ``bytes``:
    their total size), candidates whose content was read to hash it (``hashed``,
    ``hashed_bytes``) and whose hash the mount recorded while they were written
    (``hash_reused``, ``hash_reused_bytes``: not read), CAS objects uploaded and skipped
    (with bytes; ``written_behind``: skipped without asking the store because the mount's
    write-behind stored them, a subset of ``skipped``), deletions and mode
    changes recorded (v2), ``links`` (symbolic links recorded, v2), the files skipped
    because they are open for writing, the manifest's ``manifest_key`` (relative to the
    store root, ``Manifests/…``) and
    ``manifest_uri`` (the full location), ``output_manifest_path`` (the key without
    ``Manifests/``: what the worker reports as ``outputManifestPath``, reference §4, §8.4)
    and/or ``output_file``, and its hash (``None`` when there was nothing to commit)."""

    files: int = 0
    bytes: int = 0
    hashed: int = 0
    hashed_bytes: int = 0
    hash_reused: int = 0
    hash_reused_bytes: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    written_behind: int = 0
    written_behind_bytes: int = 0
    deleted: int = 0
    mode_changes: int = 0
    links: int = 0
    open_for_writing: list[str] = field(default_factory=list)
    manifest_key: str | None = None
    manifest_uri: str | None = None
    output_manifest_path: str | None = None
    manifest_hash: str | None = None
    output_file: str | None = None
    manifest_version: str = MANIFEST_VERSION_V1

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "files": self.files,
            "bytes": self.bytes,
            "hashed": self.hashed,
            "hashed_bytes": self.hashed_bytes,
            "hash_reused": self.hash_reused,
            "hash_reused_bytes": self.hash_reused_bytes,
            "uploaded": self.uploaded,
            "uploaded_bytes": self.uploaded_bytes,
            "skipped": self.skipped,
            "skipped_bytes": self.skipped_bytes,
            "written_behind": self.written_behind,
            "written_behind_bytes": self.written_behind_bytes,
            "deleted": self.deleted,
            "mode_changes": self.mode_changes,
            "links": self.links,
            "open_for_writing": self.open_for_writing,
            "manifest_key": self.manifest_key,
            "manifest_uri": self.manifest_uri,
            "output_manifest_path": self.output_manifest_path,
            "manifest_hash": self.manifest_hash,
            "output_file": self.output_file,
            "manifest_version": self.manifest_version,
        }


@dataclass(frozen=True, slots=True)
class Committed:
    """What a path held at the last finished commit: ``hash`` (``None``: deleted) and
    ``runnable``."""

    hash: str | None
    runnable: bool


# -- the commit log ------------------------------------------------------------------------------


class CommitLog:
    """``DIR/commits.db`` beside the overlay (never the mount's own ``overlay.db``, whose
    writes must not wait for ours).

    ``commits``: one row per commit: ``target`` (the session ids or the output file),
    ``manifest_hash``, ``manifest_version``, ``start_time`` (seconds since the epoch),
    ``key`` and ``state`` (``pending`` until the manifest upload is confirmed, then
    ``done``). ``committed``: per path (bytes), what the last finished commit recorded
    (``hash``: the xxh128, or a chunked file's chunk hashes joined by commas; NULL for a
    deletion; ``runnable``). ``chunk_lists``: content read by a commit for its 256 MiB
    chunk hashes, by whole-file xxh128 and size (bytes) -> the chunk hashes joined by commas
    (a fact about bytes: a later commit of content whose whole hash the mount recorded
    need not read it again). Raises ``sqlite3.Error``.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS commits (
        id INTEGER PRIMARY KEY, target TEXT NOT NULL, manifest_hash TEXT NOT NULL,
        manifest_version TEXT NOT NULL, start_time REAL, key TEXT, state TEXT NOT NULL,
        created REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS committed (
        path BLOB PRIMARY KEY, hash TEXT, runnable INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS chunk_lists (
        hash TEXT NOT NULL, size INTEGER NOT NULL, chunks TEXT NOT NULL,
        PRIMARY KEY (hash, size)) WITHOUT ROWID;
    """

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(self.SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self.conn.close()

    def committed(self) -> dict[str, Committed]:
        """Every path recorded by finished commits."""
        return {
            bytes(p).decode("utf-8", "surrogateescape"): Committed(h, bool(r))
            for p, h, r in self.conn.execute("SELECT path, hash, runnable FROM committed")
        }

    def chunk_lists(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """The chunk lists known for ``(whole-file xxh128, size)`` keys."""
        out: dict[tuple[str, int], str] = {}
        for h, size in set(keys):
            row = self.conn.execute(
                "SELECT chunks FROM chunk_lists WHERE hash = ? AND size = ?", (h, size)
            ).fetchone()
            if row is not None:
                out[(h, size)] = str(row[0])
        return out

    def add_chunk_list(self, whole: str, size: int, chunks: str) -> None:
        """Record that content of ``size`` bytes hashing to ``whole`` has chunk hashes
        ``chunks`` (joined by commas)."""
        self.conn.execute(
            "INSERT OR REPLACE INTO chunk_lists (hash, size, chunks) VALUES (?, ?, ?)",
            (whole, size, chunks),
        )

    def pending_start(self, target: str) -> float | None:
        """The start time an unfinished commit to ``target`` chose, if any."""
        row = self.conn.execute(
            "SELECT start_time FROM commits WHERE target = ? AND state = 'pending'"
            " ORDER BY id DESC LIMIT 1",
            (target,),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def last_v2_hash(self) -> str | None:
        """Manifest hash of the last finished commit of format 2025-12-04-beta."""
        row = self.conn.execute(
            "SELECT manifest_hash FROM commits WHERE state = 'done' AND manifest_version = ?"
            " ORDER BY id DESC LIMIT 1",
            (MANIFEST_VERSION_V2,),
        ).fetchone()
        return None if row is None else str(row[0])

    def begin(self, target: str, manifest_hash: str, version: str, start: float | None,
              key: str | None) -> int:  # fmt: skip
        """Record a commit about to upload (state ``pending``); returns its id."""
        cur = self.conn.execute(
            "INSERT INTO commits (target, manifest_hash, manifest_version, start_time, key,"
            " state, created) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            (target, manifest_hash, version, start, key, time.time()),
        )
        return int(cur.lastrowid or 0)

    def finish(self, commit_id: int, entries: Iterable[tuple[str, str | None, bool]]) -> None:
        """In one transaction: mark commit ``commit_id`` done (and earlier pending ones to
        the same target superseded) and record ``(path, hash or None, runnable)``."""
        rows = [(p.encode("utf-8", "surrogateescape"), h, int(r)) for p, h, r in entries]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("UPDATE commits SET state = 'done' WHERE id = ?", (commit_id,))
            self.conn.execute(
                "UPDATE commits SET state = 'superseded' WHERE state = 'pending' AND target ="
                " (SELECT target FROM commits WHERE id = ?)",
                (commit_id,),
            )
            self.conn.executemany(
                "INSERT OR REPLACE INTO committed (path, hash, runnable) VALUES (?, ?, ?)", rows
            )
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")


# -- selection ---------------------------------------------------------------------------------


def normalize_output_dirs(dirs: Sequence[str]) -> list[str]:
    """``--output-dir`` values as ``/``-separated relative paths without ``./`` or a
    trailing ``/``. Raises :class:`CommitError` for absolute paths and ``..``."""
    out = []
    for d in dirs:
        parts = [p for p in d.replace(os.sep, "/").split("/") if p not in ("", ".")]
        if d.startswith("/") or ".." in parts:
            raise CommitError(
                f"--output-dir {d!r} must be relative to the mount root, without '..'",
                hint="e.g. --output-dir renders",
            )
        out.append("/".join(parts))
    return out


@dataclass(frozen=True, slots=True)
class OutputSelection:
    """Which relative paths are outputs: those under one of ``dirs`` (all of the mount when
    there are none) whose names below that directory do not start with ``.``, unless
    ``dotfiles``. The worker selects outputs with the glob ``escape(dir) + "/**"``, and a
    Python glob does not match names starting with a dot, so dot-files and everything in
    dot-directories are never outputs there (reference §8.1, §8.2 step 2); by default
    ``vfs commit`` selects the same files."""

    dirs: tuple[str, ...]
    dotfiles: bool = False

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        for d in self.dirs or ("",):
            if d and not path.startswith(d + "/"):
                continue
            below = path[len(d) + 1 :] if d else path
            if self.dotfiles or not any(name.startswith(".") for name in below.split("/")):
                return True
        return False


@dataclass(slots=True)
class _Output:
    """An output file: its state, its content hash as text (``hash``: the xxh128, or for a
    chunked file the chunk hashes joined by commas, as the commit log records it) and the
    temp file holding its assembled content, if any (``lock``: held while it is made)."""

    state: FileState
    hash: str
    temp: str | None  # assembled content (a base file written in part), to upload
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def chunks(self) -> list[str] | None:
        """The chunk hashes of a chunked file (format 2025-12-04-beta), else ``None``."""
        return _chunks_of(self.hash)


def _chunks_of(text: str) -> list[str] | None:
    """A content hash as text, split into chunk hashes when it is a chunk list."""
    return text.split(",") if "," in text else None


def _file_entry(path: str, text: str, size: int, mtime_us: int, runnable: bool) -> ManifestFilePath:
    """A v2 file entry with ``hash`` or, for a chunk list, ``chunkhashes`` (reference §2)."""
    chunks = _chunks_of(text)
    if chunks is not None:
        return ManifestFilePath.chunked(path, chunks, size, mtime_us, runnable=runnable)
    return ManifestFilePath.file(path, text, size, mtime_us, runnable=runnable)


def _is_chunked(version: str, f: FileState) -> bool:
    """Whether an output is hashed per 256 MiB chunk: format 2025-12-04-beta and larger
    than one chunk (reference §2: ``chunkhashes`` only when ``size > chunk``)."""
    return version == MANIFEST_VERSION_V2 and f.size > FILE_CHUNK_SIZE_BYTES


ChunkLists = Mapping[tuple[str, int], str]
"""Chunk lists (hashes joined by commas) by whole-file xxh128 and size (:class:`CommitLog`)."""


def _known_text(
    snap: OverlaySnapshot, f: FileState, chunked: bool, lists: ChunkLists
) -> str | None:
    """A candidate's content hash as text when known without reading: a chunked base file's
    chunk list; in a chunked output, a recorded whole-file hash gives the chunk list only
    when an earlier commit read that content (``lists``; else ``None``: read), and the whole
    hash of content still the base object's is kept (the format allows ``hash`` at any
    size, and that object is in the store)."""
    if f.known_hash is None:
        chunks = snap.base_chunks(f.ino) if chunked else None
        return ",".join(chunks) if chunks is not None else None
    if chunked and f.hash_recorded:
        return lists.get((f.known_hash, f.size))
    return f.known_hash


@dataclass(frozen=True, slots=True)
class _Hashed:
    """A candidate's content hash as text (``text``), the temp file holding its assembled
    content (or ``None``), whether it was read, and for a chunked file read, its whole-file
    xxh128 (``whole``, for :meth:`CommitLog.add_chunk_list`)."""

    text: str
    temp: str | None
    read: bool
    whole: str | None = None


class _ChunksAndWhole:
    """Chunk hashes and the whole-file hash of one stream, in one pass."""

    def __init__(self) -> None:
        self.chunks = ChunkHasher(FILE_CHUNK_SIZE_BYTES)
        self.whole = new_hasher()

    def update(self, data: bytes) -> None:
        self.chunks.update(data)
        self.whole.update(data)

    def hexdigest(self) -> str:
        return self.chunks.hexdigest()


def _hash_candidate(
    snap: OverlaySnapshot,
    f: FileState,
    base: ObjectStore,
    tmp_dir: str,
    chunked: bool,
    lists: ChunkLists,
) -> _Hashed:
    """A candidate's content hash: known (:func:`_known_text`), or read from its data file,
    or assembled into a temp file from data file and base objects (read from ``base``, the
    mount's store). ``chunked``: hash each 256 MiB chunk (:func:`_is_chunked`; the text is
    the chunk list)."""
    known = _known_text(snap, f, chunked, lists)
    if known is not None:
        return _Hashed(known, None, False)
    path = snap.data_path(f.ino)
    hasher: _ChunksAndWhole | xxh3_128 = _ChunksAndWhole() if chunked else new_hasher()

    def result(temp: str | None) -> _Hashed:
        whole = hasher.whole.hexdigest() if isinstance(hasher, _ChunksAndWhole) else None
        return _Hashed(hasher.hexdigest(), temp, True, whole)

    if path is not None:
        with open(path, "rb", buffering=0) as src:
            left = f.size
            while left > 0:
                piece = src.read(min(left, 8 * 1024 * 1024))
                if not piece:  # a sparse tail past the data file's end reads as zeros
                    piece = bytes(min(left, 8 * 1024 * 1024))
                hasher.update(piece)
                left -= len(piece)
        return result(None)
    fd, temp = tempfile.mkstemp(dir=tmp_dir, prefix=f"{f.ino}-")
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in snap.read_content(f.ino, base):
                hasher.update(piece)
                out.write(piece)
    except BaseException:
        os.unlink(temp)
        raise
    return result(temp)


def _upload_source(snap: OverlaySnapshot, out: _Output, base: ObjectStore, tmp_dir: str) -> str:
    """A local file with the output's content, for ``put_file`` (base objects read from
    ``base``). Thread-safe: the chunks of one output share it."""
    with out.lock:
        if out.temp is not None:
            return out.temp
        path = snap.data_path(out.state.ino)
        if path is not None and os.stat(path).st_size == out.state.size:
            return path
        fd, temp = tempfile.mkstemp(dir=tmp_dir, prefix=f"{out.state.ino}-")
        with os.fdopen(fd, "wb") as f:
            for piece in snap.read_content(out.state.ino, base):
                f.write(piece)
        out.temp = temp
        return temp


# -- the commit ----------------------------------------------------------------------------------


def commit_overlay(
    overlay_dir: str,
    options: CommitOptions,
    s3: S3Options | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> CommitResult:
    """Commit the changes of the overlay in ``overlay_dir`` (see the module).

    ``progress(n)`` is called with bytes hashed or uploaded (or found stored);
    ``on_total(n)`` with the bytes to hash and upload: an estimate before hashing, then the
    exact figure once the outputs are known (the bytes done end there). Raises
    :class:`CommitError` (bad options, nothing to write the manifest to, a v2 commit without
    a single base manifest), ``OverlayError`` (not an overlay, base manifests changed),
    :class:`UploadError` (objects or the manifest could not be stored) and the store's
    errors.
    """
    version = options.manifest_version
    if version not in (MANIFEST_VERSION_V1, MANIFEST_VERSION_V2):
        raise CommitError(f"unknown manifest version {version!r}",
                          hint=f"use {MANIFEST_VERSION_V1} or {MANIFEST_VERSION_V2}")  # fmt: skip
    if options.ids is None and options.output_file is None:
        raise CommitError(
            "nowhere to write the output manifest",
            hint="give --farm-id … --session-action-id (or DEADLINE_* variables), or --output FILE",
        )
    dirs = normalize_output_dirs(options.output_dirs)
    selected = OutputSelection(tuple(dirs), options.include_dotfiles)
    with OverlaySnapshot.open(overlay_dir, s3) as snap:
        while True:
            candidates = [f for f in snap.changed_files() if f.path in selected]
            busy = [f for f in candidates if f.ino in snap.writers]
            if not busy or not options.wait:
                break
            log.info("waiting for %d file(s) open for writing: %s", len(busy),
                     ", ".join(f.path for f in busy[:5]))  # fmt: skip
            time.sleep(WAIT_POLL)
            snap.reload()
        result = CommitResult(manifest_version=version)
        result.open_for_writing = sorted(f.path for f in busy)
        for path in result.open_for_writing:
            log.warning("%s is open for writing: not committed (use --wait)", path)
        busy_inos = {f.ino for f in busy}
        links = [k for k in snap.changed_links() if k.path in selected]
        if version == MANIFEST_VERSION_V1:
            candidates += _follow_links(snap, links)
            links = []
        candidates = [f for f in candidates if f.ino not in busy_inos]
        base = open_store(snap.store_uri, s3)
        store = open_store(options.store_uri, s3) if options.store_uri else base
        with _commit_lock(overlay_dir) as tmp_dir:
            log_db = CommitLog(os.path.join(overlay_dir, "commits.db"))
            try:
                return _commit(snap, options, version, selected, candidates, links, (base, store),
                               log_db, tmp_dir, result, progress, on_total)  # fmt: skip
            finally:
                log_db.close()


def _follow_links(snap: OverlaySnapshot, links: list[LinkState]) -> list[FileState]:
    """Format 2023-03-03: each link to a regular file inside the mount, as that file seen
    at the link's path; the others are skipped with a warning naming them."""
    out: list[FileState] = []
    for link in links:
        ino = snap.follow(link.path)
        if ino is not None and snap.is_file(ino):
            out.append(snap.state_at(link.path, ino))
            continue
        why = "is dangling or leads out of the mount" if ino is None else "leads to a directory"
        log.warning("%s is a symbolic link that %s: not committed (format %s records regular "
                    "files only)", link.path, why, MANIFEST_VERSION_V1)  # fmt: skip
    return out


def _link_outputs(
    snap: OverlaySnapshot, links: list[LinkState], committed: dict[str, Committed]
) -> tuple[list[tuple[str, str]], set[str]]:
    """Format 2025-12-04-beta: ``(path, target)`` of the links to record (new or changed
    since the base or the last commit), and the paths of every link with a safe target
    (recorded now or before: not deletions). Unsafe targets are skipped with a warning."""
    out: list[tuple[str, str]] = []
    safe: set[str] = set()
    for link in links:
        try:
            target = link.target.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("%s: the symbolic link's target is not UTF-8: not committed", link.path)
            continue
        problem = symlink_target_problem(link.path, target)
        if problem is not None:
            log.warning("%s: %s: not committed", link.path, problem)
            continue
        safe.add(link.path)
        before = committed.get(link.path)
        if before is not None:
            if before.hash == _link_hash(target):
                continue
        elif snap.base_link(link.path) == link.target:
            continue
        out.append((link.path, target))
    return out, safe


def _link_hash(target: str) -> str:
    """How the commit log records a symbolic link (its ``hash`` column)."""
    return "symlink:" + target


@contextlib.contextmanager
def _commit_lock(overlay_dir: str) -> Iterator[str]:
    """Hold ``DIR/commit.lock`` (one commit at a time per overlay) and yield an emptied
    ``DIR/commit-tmp`` for assembled content (what a killed commit left there goes).
    Raises :class:`CommitError` when another commit holds the lock."""
    fd = os.open(os.path.join(overlay_dir, "commit.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CommitError(
                f"another vfs commit is running on the overlay in {overlay_dir}",
                hint="wait for it to finish",
            ) from None
        tmp_dir = os.path.join(overlay_dir, "commit-tmp")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        os.makedirs(tmp_dir, mode=0o700)
        try:
            yield tmp_dir
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    finally:
        os.close(fd)


def _commit(
    snap: OverlaySnapshot,
    options: CommitOptions,
    version: str,
    selected: OutputSelection,
    candidates: list[FileState],
    links: list[LinkState],
    stores: tuple[ObjectStore, ObjectStore],
    log_db: CommitLog,
    tmp_dir: str,
    result: CommitResult,
    progress: Callable[[int], None] | None,
    on_total: Callable[[int], None] | None,
) -> CommitResult:
    base, store = stores  # the mount's store (base objects), the one committed to
    committed = log_db.committed()
    recorded = [f for f in candidates if f.hash_recorded and _is_chunked(version, f)]
    lists = log_db.chunk_lists((f.known_hash, f.size) for f in recorded if f.known_hash)
    if on_total is not None:
        to_hash = sum(f.size for f in candidates
                      if _known_text(snap, f, _is_chunked(version, f), lists) is None)  # fmt: skip
        on_total(to_hash + sum(f.size for f in candidates if f.hash_recorded) + to_hash)
    lock = threading.Lock()

    def hash_one(f: FileState) -> tuple[FileState, _Hashed]:
        got = _hash_candidate(snap, f, base, tmp_dir, _is_chunked(version, f), lists)
        with lock:
            if got.read:
                result.hashed += 1
                result.hashed_bytes += f.size
                if progress is not None:
                    progress(f.size)
            elif f.hash_recorded:
                result.hash_reused += 1
                result.hash_reused_bytes += f.size
        return f, got

    # A hash as text: the xxh128, or a chunked file's chunk list (the base tree's
    # hash_text, and what the commit log records), so the comparisons are like for like.
    outputs: list[_Output] = []
    mode_changes: list[tuple[FileState, str]] = []
    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        for f, got in pool.map(hash_one, candidates):
            h, temp = got.text, got.temp
            if got.whole is not None:
                log_db.add_chunk_list(got.whole, f.size, h)
            before = committed.get(f.path)
            prev_hash = before.hash if before is not None else f.base_hash
            prev_runnable = before.runnable if before is not None else f.base_runnable
            if h != prev_hash:
                outputs.append(_Output(f, h, temp))
                continue
            if temp is not None:
                os.unlink(temp)
            if f.runnable != prev_runnable:
                mode_changes.append((f, h))
    if on_total is not None:  # exact now: what was hashed, and the objects to store
        on_total(result.hashed_bytes + sum(o.length for o in _objects(outputs)))
    deleted: list[str] = []
    link_outputs: list[tuple[str, str]] = []
    if version == MANIFEST_VERSION_V1:
        mode_changes = []  # format 2023-03-03 records neither
    else:
        link_outputs, linked = _link_outputs(snap, links, committed)
        deleted = [p for p in _deleted(snap, selected, committed) if p not in linked]
    result.files = len(outputs)
    result.bytes = sum(o.state.size for o in outputs)
    result.deleted, result.mode_changes = len(deleted), len(mode_changes)
    result.links = len(link_outputs)
    if not outputs and not mode_changes and not deleted and not link_outputs:
        log.info("nothing to commit in %s", snap.root)
        return result
    dirs = list(selected.dirs)
    data = _encode(snap, version, dirs, outputs, mode_changes, deleted, link_outputs, log_db)
    result.manifest_hash = hash_bytes(data)

    # Where it goes; an unfinished commit to the same place fixes the start time (the key).
    target = options.ids.identity() if options.ids is not None else f"file:{options.output_file}"
    start: float | None = None
    key: str | None = None
    metadata: dict[str, str] = {}
    if options.ids is not None:
        ids = options.ids
        start = ids.start_time
        if start is None:
            start = log_db.pending_start(target) or time.time()
        root_path = options.asset_root or snap.mountpoint
        prefix = session_action_manifest_prefix(ids.farm_id, ids.queue_id, ids.job_id,
                                                ids.step_id, ids.task_id,
                                                ids.session_action_id, start)  # fmt: skip
        fsl = options.file_system_location_name
        key = manifest_key(f"{prefix}/{output_manifest_name(root_path, fsl)}")
        metadata = manifest_metadata(root_path, fsl)
    commit_id = log_db.begin(target, result.manifest_hash, version, start, key)

    _upload_objects(snap, outputs, stores, tmp_dir, options.workers, result, progress)
    if key is not None:
        try:
            store.put_bytes(key, data, metadata)
            confirmed = store.head(key)
        except VfsError as e:
            raise UploadError(f"the output manifest {store.describe(key)} was not stored: {e}",
                              hint="run vfs commit again (it resumes)") from None  # fmt: skip
        if confirmed != len(data):
            raise UploadError(
                f"the output manifest {store.describe(key)} is not in the store after its upload",
                hint="run vfs commit again (it resumes)",
            )
        result.manifest_key, result.manifest_uri = key, store.describe(key)
        result.output_manifest_path = manifest_path_of_key(key)
    if options.output_file is not None:
        _write_file(options.output_file, data)
        result.output_file = options.output_file
    entries: list[tuple[str, str | None, bool]] = [
        (o.state.path, o.hash, o.state.runnable) for o in outputs
    ]
    if version == MANIFEST_VERSION_V2:
        entries += [(f.path, h, f.runnable) for f, h in mode_changes]
        entries += [(p, None, False) for p in deleted]
        entries += [(p, _link_hash(t), False) for p, t in link_outputs]
    log_db.finish(commit_id, entries)
    return result


def _deleted(
    snap: OverlaySnapshot, selected: OutputSelection, committed: dict[str, Committed]
) -> list[str]:
    """Paths (``selected`` ones) that held a file before and hold none now, not recorded
    as deleted by an earlier commit."""
    gone = [p for p in snap.deleted_paths() if p in selected]
    out = [p for p in gone if not (p in committed and committed[p].hash is None)]
    present = set(out)
    for path, c in committed.items():
        if c.hash is None or path in present or path not in selected:
            continue
        ino = snap.resolve(path)
        if ino is None or not snap.is_file(ino):  # a link kept is taken out by the caller
            out.append(path)
    return sorted(out)


def _gone_directory(snap: OverlaySnapshot, path: str, dirs: list[str]) -> str | None:
    """The outermost directory above deleted file ``path`` (within the output ``dirs``)
    whose path now holds a file or a link, or ``None``."""
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        above = "/".join(parts[:i])
        if dirs and not any(above == d or above.startswith(d + "/") for d in dirs if d):
            continue
        ino = snap.resolve(above)
        if ino is None:
            return None  # gone: nothing below is there either; per-file markers are right
        if not stat.S_ISDIR(snap.mode(ino)):
            return above
    return None


def _encode(
    snap: OverlaySnapshot,
    version: str,
    dirs: list[str],
    outputs: list[_Output],
    mode_changes: list[tuple[FileState, str]],
    deleted: list[str],
    links: list[tuple[str, str]],
    log_db: CommitLog,
) -> bytes:
    """The manifest's canonical bytes (v1 snapshot of the outputs, or v2 diff).

    In a v2 diff, the deleted files under a base directory whose path now holds a file or a
    link become one directory delete marker: per-file markers would list that directory as an
    ancestor (v2 paths are ``$N/name`` under a directory table), which a file or link at the
    same path contradicts (reference §2; deletions apply before additions)."""
    if version == MANIFEST_VERSION_V1:
        paths = [ManifestPath(o.state.path, o.hash, o.state.size, o.state.mtime_us)
                 for o in outputs]  # fmt: skip
        return encode_manifest(Manifest(paths))
    parent = log_db.last_v2_hash() or snap.base_hash
    if parent is None:
        raise CommitError(
            f"a {MANIFEST_VERSION_V2} diff needs one base manifest; the overlay in {snap.root} "
            f"was mounted over {len(snap.manifests)}",
            hint=f"commit with --manifest-version {MANIFEST_VERSION_V1}",
        )
    files: list[ManifestFilePath] = []
    for o in outputs:
        st = o.state
        files.append(_file_entry(st.path, o.hash, st.size, st.mtime_us, st.runnable))
    for f, h in mode_changes:
        files.append(_file_entry(f.path, h, f.size, f.mtime_us, f.runnable))
    gone_dirs: set[str] = set()
    for p in deleted:
        gone = _gone_directory(snap, p, dirs)
        if gone is None:
            files.append(ManifestFilePath.deletion(p))
        else:
            gone_dirs.add(gone)
    files += [ManifestFilePath.symlink(p, t) for p, t in links]
    marks = [ManifestDirectoryPath(d, deleted=True) for d in sorted(gone_dirs)]
    return encode_manifest_v2(ManifestV2(files=files, dirs=marks, parent_manifest_hash=parent))


@dataclass(frozen=True, slots=True)
class _Object:
    """A CAS object to store: ``hash`` (its key's), made from ``length`` bytes of output
    ``out``'s content at ``offset`` (a whole file, or one 256 MiB chunk: ``chunk``)."""

    hash: str
    out: _Output
    offset: int
    length: int
    chunk: bool


def _objects(outputs: list[_Output]) -> list[_Object]:
    """The distinct CAS objects of the outputs: one per file, or one per chunk of a chunked
    file (``Data/{chunkhash}.xxh128``, bytes ``[i * 256 MiB, (i + 1) * 256 MiB)``;
    reference §2)."""
    by_hash: dict[str, _Object] = {}
    for o in outputs:
        chunks = o.chunks
        if chunks is None:
            by_hash.setdefault(o.hash, _Object(o.hash, o, 0, o.state.size, False))
            continue
        for i, h in enumerate(chunks):
            start = i * FILE_CHUNK_SIZE_BYTES
            length = min(FILE_CHUNK_SIZE_BYTES, o.state.size - start)
            by_hash.setdefault(h, _Object(h, o, start, length, True))
    return list(by_hash.values())


def _put_range(store: ObjectStore, key: str, source: str, obj: _Object) -> None:
    """Store bytes ``[obj.offset, obj.offset + obj.length)`` of local file ``source`` as
    ``key``: through the store's ranged upload (multipart above :data:`SMALL_OBJECT`), or
    read into memory for a store without one."""
    fd = os.open(source, os.O_RDONLY)
    try:
        if isinstance(store, RangeUploadStore):
            store.put_file_range(key, fd, obj.offset, obj.length,
                                 multipart=obj.length > SMALL_OBJECT)  # fmt: skip
        else:
            store.put_bytes(key, FileSlice(fd, obj.offset, obj.length).read())
    finally:
        os.close(fd)


def _upload_objects(
    snap: OverlaySnapshot,
    outputs: list[_Output],
    stores: tuple[ObjectStore, ObjectStore],
    tmp_dir: str,
    workers: int,
    result: CommitResult,
    progress: Callable[[int], None] | None,
) -> None:
    """Upload each distinct object once (a whole file, or each chunk of a chunked one);
    skip those the store has at the right size. ``stores``: the mount's (base objects are
    read from it) and the one uploaded to. Raises :class:`UploadError` listing the objects
    that failed."""
    base, store = stores
    objects = _objects(outputs)
    lock = threading.Lock()
    failures: list[str] = []
    behind = snap.uploaded(store.uri)  # stored by write-behind, verified as they were sent
    present, missing = _listed(store, [o for o in objects if behind.get(o.hash) != o.length])

    def one(obj: _Object) -> None:
        key = data_key(obj.hash)
        try:
            if behind.get(obj.hash) == obj.length:
                with lock:
                    result.skipped += 1
                    result.skipped_bytes += obj.length
                    result.written_behind += 1
                    result.written_behind_bytes += obj.length
            elif key in present or (key not in missing and store.head(key) == obj.length):
                with lock:
                    result.skipped += 1
                    result.skipped_bytes += obj.length
            else:
                source = _upload_source(snap, obj.out, base, tmp_dir)
                if obj.chunk:
                    _put_range(store, key, source, obj)
                elif obj.length <= SMALL_OBJECT:  # one PUT, no transfer manager
                    with open(source, "rb") as f:
                        store.put_bytes(key, f.read(obj.length))
                else:
                    store.put_file(key, source)
                with lock:
                    result.uploaded += 1
                    result.uploaded_bytes += obj.length
        except (VfsError, OSError, ShortReadError) as e:
            with lock:
                failures.append(f"{obj.out.state.path} ({store.describe(key)}): {e}")
            return
        if progress is not None:
            with lock:
                progress(obj.length)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, objects))
    if failures:
        shown = "\n  ".join(failures[:10])
        raise UploadError(
            f"{len(failures)} of {len(objects)} objects were not uploaded:\n  {shown}",
            hint="run vfs commit again (it resumes)",
        )


def _listed(store: ObjectStore, objects: list[_Object]) -> tuple[set[str], set[str]]:
    """Keys of ``objects`` an S3 store is known to have (right size) and to lack, from a
    listing of ``Data/`` instead of a ``HEAD`` each (:func:`settle_by_listing`, as the
    upload orchestrator does); for fewer than :data:`LIST_MIN_OBJECTS` objects, or another
    store, nothing is settled. A failed listing settles nothing either (the HEAD
    requests then report the error), except a fatal one, raised at once as an
    :class:`UploadError`."""
    if len(objects) < LIST_MIN_OBJECTS or not store.uri.startswith("s3://"):
        return set(), set()
    try:
        return settle_by_listing(store, {data_key(o.hash): o.length for o in objects})
    except FATAL_ERRORS as e:
        raise UploadError(f"no object was uploaded: {e}") from None
    except VfsError as e:
        log.info("listing %s failed (%s); asking for each object", store.uri, e)
        return set(), set()


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temp file beside it, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".vfs-commit-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def ids_from_env(
    given: dict[str, str | None], environ: dict[str, str] | None = None
) -> SessionIds | None:
    """Session ids from ``given`` (option values, ``None`` when not given), else from the
    worker's environment variables (:data:`ENV_IDS`). ``None`` when neither names any.
    Raises :class:`CommitError` naming what is missing when only some are known, or a start
    time that is not a number."""
    env = dict(os.environ if environ is None else environ)
    values = {k: given.get(k) or env.get(var) or None for k, var in ENV_IDS.items()}
    required = ("farm_id", "queue_id", "job_id", "step_id", "session_action_id")
    if not any(values[k] for k in required):
        return None
    missing = [ENV_IDS[k] for k in required if not values[k]]
    if missing:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in required if not values[k])
        raise CommitError(
            f"the output manifest key needs {names} (or {', '.join(missing)})",
            hint="give all the session ids, or none and --output FILE",
        )
    start_text = values["start_time"]
    try:
        start = float(start_text) if start_text else None
    except ValueError:
        raise CommitError(
            f"the session action start time {start_text!r} is not a number of seconds",
            hint="fix DEADLINE_SESSIONACTION_START_TIME or --start-time",
        ) from None
    return SessionIds(
        str(values["farm_id"]), str(values["queue_id"]), str(values["job_id"]),
        str(values["step_id"]), values["task_id"], str(values["session_action_id"]), start,
    )  # fmt: skip

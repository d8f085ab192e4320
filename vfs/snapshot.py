"""Snapshot a directory into a manifest, and diff a directory against one, the way
``deadline manifest snapshot`` and ``deadline manifest diff`` do.

Format facts (reference/job-attachments.md §1.1, §1.4, §8.1–8.2; deadline ``_glob.py``,
``api/manifest.py``, ``_diff.py``):

* files are selected with Python's recursive ``glob`` from the absolute root, include
  patterns default to ``**/*``, exclude patterns are subtracted, only regular files count
  (``os.path.isfile``, symlinks followed); ``*`` and ``**`` do not match names starting with
  ``.``, so dot files and everything under dot directories are left out;
* entries: ``path`` relative to the root, ``/``-separated; ``size`` = ``st_size``;
  ``mtime`` = ``st_mtime_ns // 1000`` (microseconds); ``hash`` = xxh128 of the content;
* the file is named ``{name}-{xxh128(root as given)}-{local time %Y-%m-%dT%H-%M-%S}.manifest``
  where ``name`` defaults to the root with ``/``, ``\\`` and ``:`` replaced by ``_`` and one
  leading ``_`` removed;
* a directory diff is "fast" by default: a file is NEW when its path is not in the base
  manifest, MODIFIED when its size differs or ``|trunc(st_mtime_ns / 1000) - mtime| > 1``,
  and a base path no longer found is DELETED; ``force_rehash`` compares hashes instead.

Symbolic links: format 2023-03-03 cannot hold links, so (like deadline) a link is followed
and the file recorded under the link's path; format 2025-12-04-beta records links as links.
Unlike deadline, vfs never follows a link out of the root: such a file is skipped with a
warning (it would otherwise upload a file from anywhere on the machine).
"""

from __future__ import annotations

import datetime
import glob
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import xxhash

from vfs.errors import SnapshotError
from vfs.hash_cache import RACY_WINDOW_NS, HashCache, HashCacheEntry, hash_file_cached
from vfs.hashing import FILE_BUFFER_SIZE, hash_string
from vfs.manifest import Manifest, ManifestPath, encode_manifest
from vfs.manifest.v2 import (
    FILE_CHUNK_SIZE_BYTES,
    ManifestDirectoryPath,
    ManifestFilePath,
    ManifestV2,
    encode_manifest_v2,
)

log = logging.getLogger(__name__)

DEFAULT_INCLUDE = ("**/*",)
CHUNK_HASH_ALG = f"xxh128-chunks-{FILE_CHUNK_SIZE_BYTES}"
"""Hash-cache algorithm name under which the chunk hashes of large files are stored."""


def glob_files(
    root: str, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> list[str]:
    """Absolute, normalised paths of the regular files under ``root`` the globs select.

    Semantics are deadline's ``_glob_paths`` (see the module docstring). The result is
    sorted for determinism.
    """
    return sorted(p for p in _glob(root, include, exclude) if os.path.isfile(p))


def _glob(root: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> set[str]:
    base = os.path.abspath(root)

    def match(patterns: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for pattern in patterns:
            for p in glob.glob(os.path.join(base, pattern), recursive=True):
                found.add(os.path.normpath(p))
        return found

    # None means the default; an empty list selects nothing (deadline's ``_glob_paths``).
    selected = match(DEFAULT_INCLUDE if include is None else include)
    if exclude:
        selected -= match(exclude)
    return selected


# -- scanning -------------------------------------------------------------------------------


@dataclass(slots=True)
class ScannedFile:
    """A regular file to record: manifest ``path``, the ``real`` file read (links resolved),
    ``size`` in bytes, ``mtime_ns``, and whether its owner may execute it."""

    path: str
    real: str
    size: int
    mtime_ns: int
    runnable: bool


@dataclass(slots=True)
class Scan:
    """What a directory holds: files, symbolic links (``(path, relative target)``, v2
    only), directories (v2 only), and warnings about what was skipped."""

    files: list[ScannedFile] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def scan_directory(
    root: str,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    record_links: bool = False,
) -> Scan:
    """Select and stat what a snapshot of ``root`` records (see the module docstring).

    With ``record_links`` (format 2025-12-04-beta) links stay links, with their target
    made relative to the link's directory, and directories are listed; otherwise links are
    followed. Anything that resolves outside the root, dangling links and unreadable
    entries are skipped and described in ``Scan.skipped`` (each also logged as a warning).
    Raises :class:`SnapshotError` when ``root`` is not a directory.
    """
    if not os.path.isdir(root):
        raise SnapshotError(f"snapshot root {root} is not a directory")
    base = os.path.abspath(root)
    real_root = os.path.realpath(base)
    scan = Scan()
    real_dirs: dict[str, str] = {}
    link_dirs: dict[str, bool] = {}

    def skip(message: str) -> None:
        log.warning("snapshot of %s: %s", base, message)
        scan.skipped.append(message)

    prefix = base.rstrip("/") + "/"

    def rel(path: str) -> str:
        if path.startswith(prefix):  # glob's paths are normalised: the rest is the answer
            return path[len(prefix) :]
        return PurePosixPath(*Path(path).relative_to(base).parts).as_posix()

    def under_link(path: str) -> str | None:
        """The outermost symlinked directory between the root and ``path``, if any."""
        parts = Path(path).relative_to(base).parts[:-1]
        current = base
        for part in parts:
            current = os.path.join(current, part)
            is_link = link_dirs.get(current)
            if is_link is None:
                is_link = link_dirs[current] = os.path.islink(current)
            if is_link:
                return current
        return None

    seen_links: set[str] = set()
    for path in sorted(_glob(base, include, exclude)):
        if record_links:
            outer = under_link(path)
            if outer is not None:
                if outer not in seen_links:
                    seen_links.add(outer)
                    _record_link(outer, base, real_root, rel, scan, skip)
                continue
            if os.path.islink(path):
                if path not in seen_links:
                    seen_links.add(path)
                    _record_link(path, base, real_root, rel, scan, skip)
                continue
            if os.path.isdir(path):
                scan.dirs.append(rel(path))
                continue
        # One lstat per file: it is the file's own stat unless the file is a link.
        try:
            st = os.lstat(path)
        except OSError as e:
            skip(f"skipped {path}: {e.strerror}")
            continue
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            try:
                st = os.stat(real)
            except OSError:
                skip(f"skipped {path}: the symbolic link is dangling")
                continue
        else:
            dirname, _, name = path.rpartition("/")
            real_dir = real_dirs.get(dirname)
            if real_dir is None:
                real_dir = real_dirs[dirname] = os.path.realpath(dirname or "/")
            real = os.path.join(real_dir, name)
        if not stat.S_ISREG(st.st_mode):
            continue
        if not _inside(real, real_root):
            skip(f"skipped {path}: it resolves to {real}, outside the root")
            continue
        scan.files.append(
            ScannedFile(rel(path), real, st.st_size, st.st_mtime_ns, bool(st.st_mode & 0o100))
        )
    return scan


def _record_link(
    link: str,
    base: str,
    real_root: str,
    rel: Callable[[str], str],
    scan: Scan,
    skip: Callable[[str], None],
) -> None:
    real = os.path.realpath(link)
    if not os.path.exists(link):
        skip(f"skipped {link}: the symbolic link is dangling")
        return
    if not _inside(real, real_root):
        skip(f"skipped {link}: it points to {real}, outside the root")
        return
    target = os.path.relpath(real, os.path.realpath(os.path.dirname(link)))
    scan.links.append((rel(link), PurePosixPath(*Path(target).parts).as_posix()))


# -- hashing --------------------------------------------------------------------------------


def _hash_chunks(path: str) -> list[str]:
    hashes = []
    buf = bytearray(FILE_BUFFER_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            hasher = xxhash.xxh3_128()
            left = FILE_CHUNK_SIZE_BYTES
            while left:
                n = f.readinto(view[: min(len(buf), left)])
                if not n:
                    break
                hasher.update(view[:n])
                left -= n
            if left == FILE_CHUNK_SIZE_BYTES:
                break
            hashes.append(hasher.hexdigest())
            if left:
                break
    return hashes


HASH_BATCH_BYTES = 4 * 1024 * 1024
"""Small files go to the hashing threads in batches of about this many bytes (at most
:data:`HASH_BATCH_FILES` files), so that each costs no thread-pool task of its own."""

HASH_BATCH_FILES = 256
"""Most files in one hashing batch."""

_thread_buffers = threading.local()


def _read_buffer() -> memoryview:
    """This thread's reusable read buffer (:data:`FILE_BUFFER_SIZE` bytes)."""
    view: memoryview | None = getattr(_thread_buffers, "view", None)
    if view is None:
        view = _thread_buffers.view = memoryview(bytearray(FILE_BUFFER_SIZE))
    return view


def _hash_as_scanned(f: ScannedFile) -> str | None:
    """xxh128 of ``f.real`` if it is still the regular file the scan saw (same size and
    mtime before and after the read, every byte read); ``None`` otherwise (nothing is read
    from a file that is no longer regular). Raises ``OSError``."""
    view = _read_buffer()
    # O_NONBLOCK: a FIFO put in the file's place since the scan must not block the open
    # (it makes no difference to reading a regular file).
    fd = os.open(f.real, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        before = os.fstat(fd)
        if (
            not stat.S_ISREG(before.st_mode)
            or before.st_size != f.size
            or before.st_mtime_ns != f.mtime_ns
        ):
            return None
        hasher = xxhash.xxh3_128()
        total = 0
        while n := os.readv(fd, [view]):
            hasher.update(view[:n])
            total += n
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if total != f.size or after.st_size != f.size or after.st_mtime_ns != f.mtime_ns:
        return None
    return hasher.hexdigest()


def _batches(todo: list[int], files: Sequence[ScannedFile]) -> Iterator[list[int]]:
    """``todo`` cut into batches of at most :data:`HASH_BATCH_BYTES` (a larger file is
    a batch of its own) and :data:`HASH_BATCH_FILES` files, in order."""
    current: list[int] = []
    size = 0
    for i in todo:
        n = files[i].size
        if current and (size + n > HASH_BATCH_BYTES or len(current) >= HASH_BATCH_FILES):
            yield current
            current, size = [], 0
        current.append(i)
        size += n
    if current:
        yield current


def hash_scanned(
    files: Sequence[ScannedFile],
    *,
    hash_cache: HashCache | None = None,
    chunked: bool = False,
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> list[str | list[str]]:
    """Hash each file: its xxh128, or with ``chunked`` (format 2025-12-04-beta) the list of
    chunk hashes for files larger than one 256 MiB chunk.

    ``hash_cache`` is consulted in one batch first and filled with what was hashed.
    ``on_bytes(n)`` reports progress. Raises :class:`SnapshotError` naming a file that
    cannot be read.
    """
    results: list[str | list[str] | None] = [None] * len(files)
    is_chunked = [chunked and f.size > FILE_CHUNK_SIZE_BYTES for f in files]
    todo = list(range(len(files)))
    if hash_cache is not None:
        hits = hash_cache.get_many(
            (f.real, f.size, f.mtime_ns) for f, c in zip(files, is_chunked, strict=True) if not c
        )
        todo = []
        for i, f in enumerate(files):
            cached = hits.get(f.real) if not is_chunked[i] else None
            if cached is not None:
                results[i] = cached
                if on_bytes is not None:
                    on_bytes(f.size)
            else:
                todo.append(i)
    # Hashes are stored for files whose mtime is older than the racy window at the start
    # (so before any read): see hash_file_cached().
    storable_before = time.time_ns() - RACY_WINDOW_NS
    to_store: list[HashCacheEntry] = []

    def one(i: int) -> None:
        f = files[i]
        try:
            if is_chunked[i]:
                results[i] = _chunk_hashes_cached(hash_cache, f)
            else:
                digest = _hash_as_scanned(f)
                if digest is None:  # changed since the scan, or not a regular file any more
                    results[i] = hash_file_cached(hash_cache, f.real)[0]
                else:
                    results[i] = digest
                    if hash_cache is not None and f.mtime_ns <= storable_before:
                        to_store.append((f.real, f.size, f.mtime_ns, digest))
        except OSError as e:
            raise SnapshotError(
                f"cannot read {f.real}: {e.strerror}", hint="check the file's permissions"
            ) from None
        if on_bytes is not None:
            on_bytes(f.size)

    def batch(indices: list[int]) -> None:
        for i in indices:
            one(i)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(batch, _batches(todo, files)))
    finally:
        if hash_cache is not None and to_store:
            hash_cache.put_many(to_store)  # one transaction
    return [r for r in results if r is not None]


def _chunk_hashes_cached(cache: HashCache | None, f: ScannedFile) -> list[str]:
    n = -(-f.size // FILE_CHUNK_SIZE_BYTES)
    if cache is not None:
        found = [cache.get(f.real, f.size, f.mtime_ns, f"{CHUNK_HASH_ALG}/{i}") for i in range(n)]
        if all(found):
            return [h for h in found if h]
    hashes = _hash_chunks(f.real)
    st = os.stat(f.real)
    stable = (st.st_size, st.st_mtime_ns) == (f.size, f.mtime_ns)
    if cache is not None and stable and st.st_mtime_ns < time.time_ns() - RACY_WINDOW_NS:
        for i, h in enumerate(hashes):
            cache.put(f.real, f.size, f.mtime_ns, h, f"{CHUNK_HASH_ALG}/{i}")
    return hashes


# -- snapshots ------------------------------------------------------------------------------


def snapshot_directory(
    root: str,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    hash_cache: HashCache | None = None,
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Manifest | None:
    """Hash the files of ``root`` selected by the globs into a manifest of format 2023-03-03.

    Returns ``None`` when no file is selected (an empty manifest cannot be written).
    Raises :class:`SnapshotError` naming the root or a file that cannot be read.
    """
    files = scan_directory(root, include, exclude).files
    if not files:
        return None
    hashes = hash_scanned(files, hash_cache=hash_cache, workers=workers, on_bytes=on_bytes)
    return Manifest(
        paths=[
            ManifestPath(f.path, str(h), f.size, f.mtime_ns // 1000)
            for f, h in zip(files, hashes, strict=True)
        ]
    )


def snapshot_directory_v2(
    root: str,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    hash_cache: HashCache | None = None,
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> ManifestV2 | None:
    """Like :func:`snapshot_directory`, in format 2025-12-04-beta: symbolic links, empty
    directories and the execute bit are recorded, files over 256 MiB get chunk hashes."""
    scan = scan_directory(root, include, exclude, record_links=True)
    if not scan.files and not scan.links and not scan.dirs:
        return None
    hashes = hash_scanned(
        scan.files, hash_cache=hash_cache, chunked=True, workers=workers, on_bytes=on_bytes
    )
    entries: list[ManifestFilePath] = []
    for f, h in zip(scan.files, hashes, strict=True):
        mtime = f.mtime_ns // 1000
        if isinstance(h, list):
            entries.append(ManifestFilePath.chunked(f.path, h, f.size, mtime, runnable=f.runnable))
        else:
            entries.append(ManifestFilePath.file(f.path, h, f.size, mtime, runnable=f.runnable))
    entries += [ManifestFilePath.symlink(p, t) for p, t in scan.links]
    return ManifestV2(files=entries, dirs=[ManifestDirectoryPath(d) for d in scan.dirs])


# -- diffs ----------------------------------------------------------------------------------


@dataclass(slots=True)
class DirectoryDiff:
    """Relative paths that are ``new``, ``modified`` or ``deleted`` compared with a base
    manifest (deadline's ``ManifestDiff``), each list sorted."""

    new: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        """``{"new": [...], "modified": [...], "deleted": [...]}``, the JSON deadline prints."""
        return {"new": self.new, "modified": self.modified, "deleted": self.deleted}


def diff_directory(
    base: Manifest,
    root: str,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    force_rehash: bool = False,
    hash_cache: HashCache | None = None,
    workers: int | None = None,
) -> DirectoryDiff:
    """Compare the files under ``root`` with ``base`` (see the module docstring for the rules).

    Raises :class:`SnapshotError` naming the root or an unreadable file.
    """
    scan = scan_directory(root, include, exclude)
    return _compare(base, scan.files, force_rehash, hash_cache, workers, None)[0]


def snapshot_changes(
    base: Manifest,
    root: str,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    force_rehash: bool = False,
    hash_cache: HashCache | None = None,
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Manifest | None:
    """A manifest (format 2023-03-03) of the files new or modified since ``base``, like
    ``deadline manifest snapshot --diff`` (deleted files cannot be expressed and are left
    out). ``None`` when nothing changed. Scans and hashes each file at most once.
    """
    scan = scan_directory(root, include, exclude)
    changes, hashes = _compare(base, scan.files, force_rehash, hash_cache, workers, on_bytes)
    changed = set(changes.new) | set(changes.modified)
    files = [f for f in scan.files if f.path in changed]
    if not files:
        return None
    missing = [f for f in files if f.path not in hashes]
    for f, h in zip(
        missing, hash_scanned(missing, hash_cache=hash_cache, workers=workers, on_bytes=on_bytes),
        strict=True,
    ):  # fmt: skip
        hashes[f.path] = str(h)
    return Manifest(
        paths=[ManifestPath(f.path, hashes[f.path], f.size, f.mtime_ns // 1000) for f in files]
    )


def _compare(
    base: Manifest,
    files: list[ScannedFile],
    force_rehash: bool,
    hash_cache: HashCache | None,
    workers: int | None,
    on_bytes: Callable[[int], None] | None,
) -> tuple[DirectoryDiff, dict[str, str]]:
    """The diff of ``files`` against ``base``, and the hashes computed for it (by path)."""
    by_path = {Path(os.path.normpath(p.path)).as_posix(): p for p in base.paths}
    diff = DirectoryDiff()
    hashes: dict[str, str] = {}
    if force_rehash:
        computed = hash_scanned(files, hash_cache=hash_cache, workers=workers, on_bytes=on_bytes)
        hashes = {f.path: str(h) for f, h in zip(files, computed, strict=True)}
    for f in files:
        old = by_path.get(f.path)
        if old is None:
            diff.new.append(f.path)
        elif force_rehash:
            if old.hash != hashes[f.path]:
                diff.modified.append(f.path)
        elif f.size != old.size or abs(math.trunc(f.mtime_ns / 1000) - old.mtime) > 1:
            diff.modified.append(f.path)
    current = {f.path for f in files}
    diff.deleted = sorted(p.path for p in base.paths if p.path not in current)
    diff.new.sort()
    diff.modified.sort()
    return diff, hashes


# -- manifest files -------------------------------------------------------------------------


def manifest_file_name(
    root: str, name: str | None = None, now: datetime.datetime | None = None
) -> str:
    """The official local manifest file name for ``root`` (see the module docstring).

    ``root`` is hashed exactly as given (deadline hashes the CLI argument unresolved).
    """
    stamp = (now or datetime.datetime.now()).strftime("%Y-%m-%dT%H-%M-%S")
    base = name if name else root.replace("/", "_").replace("\\", "_").replace(":", "_")
    if base.startswith("_"):
        base = base[1:]
    return f"{base}-{hash_string(root)}-{stamp}.manifest"


def write_manifest_file(
    root: str, manifest: Manifest | ManifestV2, destination: str, name: str | None = None
) -> str:
    """Write ``manifest`` under ``destination`` with the official file name; return its path.

    The file holds exactly the canonical bytes (no trailing newline). Raises
    :class:`SnapshotError` when the destination cannot be written.
    """
    path = os.path.join(destination, manifest_file_name(root, name))
    data = (
        encode_manifest(manifest)
        if isinstance(manifest, Manifest)
        else encode_manifest_v2(manifest)
    )
    try:
        os.makedirs(destination, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise SnapshotError(f"cannot write manifest {path}: {e.strerror}") from None
    return path

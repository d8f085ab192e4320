"""Downloading the files of manifests from a content-addressed store: :class:`DownloadOrchestrator`.

Format and behaviour facts (reference/job-attachments.md §7.1, deadline ``download.py::
download_file``): each file is the CAS object ``Data/{hash}.{hashAlg}`` under the store root;
on a 404 the legacy key ``Data/{hash}`` (no suffix) is tried once; the file's mtime and atime
are set to the manifest's ``mtime`` (microseconds since the epoch; vfs sets them to the exact
nanosecond value, deadline through a float, ±1 µs); an existing destination is handled by
:class:`~vfs.transfer.conflicts.ConflictResolution`. Format 2025-12-04-beta adds (reference
§2, :mod:`vfs.manifest.v2`): ``runnable`` (execute bit), symlinks (created, not
downloaded), empty directories, and files of more than 256 MiB stored as one CAS object per
256 MiB chunk (``chunkhashes``), written at ``i * 256 MiB``.

Beyond deadline: every file is written to a temporary file in its destination directory and
renamed when complete and checked (size always, content hash with ``verify_hash``), so no
partial file ever carries a final name; every destination is checked to stay inside its root
(symbolic links resolved); free space is checked before the first byte; large objects are
fetched as parallel ranged GETs; the first error that will not heal (no such bucket, access
denied, no credentials, a store that cannot be reached) stops the whole download.

Retries: request errors are retried by the store's client (botocore's ``standard`` mode for
S3); this module retries only what the client cannot, an answer body broken off mid-read,
by fetching that object or range again (``retries`` times).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import xxhash

from vfs.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CorruptObjectError,
    ObjectNotFoundError,
    StoreError,
    VfsError,
)
from vfs.manifest import (
    FILE_CHUNK_SIZE_BYTES,
    HASH_ALG_XXH128,
    AnyManifest,
    Manifest,
    ManifestDirectoryPath,
    ManifestFilePath,
    ManifestPath,
    ManifestV2,
)
from vfs.osutil import current_umask
from vfs.pathmap.resolve import ResolvedManifestPath
from vfs.storage.base import ObjectStore, Readable
from vfs.storage.layout import DATA_FOLDER, data_key
from vfs.transfer.conflicts import ConflictResolution, place_copy, place_exclusive
from vfs.transfer.localfs import (
    DownloadError,
    PathEscapeError,
    check_free_space,
    check_inside_root,
    make_temp_file,
    remove_quietly,
)
from vfs.transfer.progress import ProgressCallback, ProgressTracker, TransferStatistics

log = logging.getLogger(__name__)

READ_SIZE = 1024 * 1024
"""Bytes asked of a response body per read; cancellation is noticed between reads."""

Entry = ManifestPath | ManifestFilePath
"""A manifest entry of either format."""

ResolvableEntry = ManifestPath | ManifestFilePath | ManifestDirectoryPath
"""What :meth:`DownloadOrchestrator.download_to_resolved_paths` takes: a file entry of
either format, or a v2 directory (created, even when empty)."""


@dataclass(frozen=True, slots=True)
class _Item:
    """One file to create: ``local_path`` inside ``root``; ``hashes`` is one whole-file hash
    or the chunk hashes (256 MiB each); ``mtime`` in microseconds; ``symlink_target`` set
    for a link (then nothing is downloaded)."""

    local_path: str
    root: str
    source: str
    size: int
    mtime: int | None
    hashes: tuple[str, ...]
    runnable: bool = False
    symlink_target: str | None = None


class _Cancelled(Exception):
    """Raised inside a worker when the transfer was cancelled or aborted."""


class _BodyBroken(Exception):
    """A response body failed mid-read: worth fetching again."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def is_fatal(error: BaseException) -> bool:
    """Whether ``error`` will fail every other file too, so the download should stop:
    access denied or no credentials, a missing bucket, a store that cannot be reached
    (after the client's own retries), a full or read-only local disk, a path escape.
    A missing or corrupt object and a wrong size or hash concern one file only."""
    if isinstance(error, AccessDeniedError | BucketNotFoundError | PathEscapeError):
        return True
    if isinstance(error, ObjectNotFoundError | CorruptObjectError | DownloadError):
        return False
    if isinstance(error, StoreError):
        return True
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    return not isinstance(error, VfsError)


def _items_of(entry: Entry, local_path: str, root: str) -> _Item | None:
    """The item for one manifest entry (``None`` for a v2 delete marker)."""
    if isinstance(entry, ManifestPath):
        return _Item(local_path, root, entry.path, entry.size, entry.mtime, (entry.hash,))
    if entry.deleted:
        return None
    if entry.symlink_target is not None:
        return _Item(local_path, root, entry.path, 0, None, (), symlink_target=entry.symlink_target)
    hashes = entry.chunkhashes if entry.chunkhashes is not None else (entry.hash or "",)
    return _Item(
        local_path, root, entry.path, entry.size or 0, entry.mtime, tuple(hashes), entry.runnable
    )


class DownloadOrchestrator:
    """Downloads manifests' files from ``store`` to local directories.

    ``workers``: files downloaded at once. Objects larger than ``multipart_threshold`` bytes
    are fetched as ranges of ``part_size`` bytes, ``range_workers`` at once (on top of the
    file workers). ``retries``: new attempts of an object or range whose answer broke off.
    ``verify_hash``: hash each file (or chunk) before it gets its name and refuse a
    mismatch. ``progress_interval``: seconds between progress reports (also while nothing
    moves; a report is also made whenever a file completes). Thread-safe; one orchestrator
    may run several downloads at a time.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        workers: int = 16,
        range_workers: int = 8,
        part_size: int = 16 * 1024 * 1024,
        multipart_threshold: int = 32 * 1024 * 1024,
        retries: int = 3,
        verify_hash: bool = False,
        progress_interval: float = 0.1,
    ) -> None:
        self.store = store
        self.workers = workers
        self.range_workers = range_workers
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.retries = retries
        self.verify_hash = verify_hash
        self.progress_interval = progress_interval

    # -- entry points --------------------------------------------------------------------

    def download_manifest(
        self,
        manifest: AnyManifest,
        dest_root: str,
        *,
        conflict_resolution: ConflictResolution = ConflictResolution.CREATE_COPY,
        progress: ProgressCallback | None = None,
        available_bytes: int | None = None,
    ) -> TransferStatistics:
        """Download every file of ``manifest`` under ``dest_root`` (created if missing).

        Manifest paths are relative and ``/``-separated; v2 symlinks, runnable bits and
        directories (empty ones included) are recreated; v2 delete markers are ignored.
        ``available_bytes`` replaces the measured free space (bytes) of the destination.
        Returns the statistics (``cancelled`` when ``progress`` returned ``False``). Raises
        :class:`PathEscapeError` (before writing anything) when a destination would leave
        ``dest_root``, :class:`InsufficientSpaceError` when the files do not fit, the
        store's error at the first fatal failure (:func:`is_fatal`), and
        :class:`DownloadError` listing the files that failed once all others are done.
        """
        root = os.path.abspath(dest_root)
        items: list[_Item] = []
        dirs: list[tuple[str, str]] = []
        if isinstance(manifest, Manifest):
            entries: Iterable[Entry] = manifest.paths
        else:
            entries = manifest.files
            dirs = [(os.path.join(root, d.path), root) for d in manifest.dirs if not d.deleted]
        for entry in entries:
            item = _items_of(entry, os.path.join(root, entry.path), root)
            if item is not None:
                items.append(item)
        os.makedirs(root, exist_ok=True)
        return self._run(
            items, dirs, manifest.hash_alg, conflict_resolution, progress, available_bytes
        )

    def download_files_in_directory(
        self,
        manifest: AnyManifest,
        directory: str,
        dest_root: str,
        *,
        conflict_resolution: ConflictResolution = ConflictResolution.CREATE_COPY,
        progress: ProgressCallback | None = None,
        available_bytes: int | None = None,
    ) -> TransferStatistics:
        """Download only the entries of ``manifest`` under ``directory`` into ``dest_root``.

        ``directory`` is a manifest-relative, ``/``-separated directory (``renders/shot1``;
        a trailing ``/`` and a leading ``./`` are ignored; ``""`` or ``.`` means the whole
        manifest). Matching is by whole components: ``ab`` selects ``ab/x`` but neither
        ``abc/x`` nor a file named ``ab`` (deadline's ``download_files_in_directory``
        compares string prefixes, so there ``ab`` also takes ``abc/x``). Files keep their
        full manifest path under ``dest_root`` (``renders/shot1/f.exr`` lands at
        ``{dest_root}/renders/shot1/f.exr``); v2 directories under ``directory`` are
        created too. Raises ``ValueError`` for an absolute ``directory`` or one with
        ``..``, and otherwise as :meth:`download_manifest`.
        """
        prefix = normalize_manifest_directory(directory)
        return self.download_manifest(
            subtree_of(manifest, prefix),
            dest_root,
            conflict_resolution=conflict_resolution,
            progress=progress,
            available_bytes=available_bytes,
        )

    def download_to_resolved_paths(
        self,
        resolved: Iterable[ResolvedManifestPath[ResolvableEntry]],
        roots: Sequence[str],
        *,
        hash_alg: str = HASH_ALG_XXH128,
        conflict_resolution: ConflictResolution = ConflictResolution.CREATE_COPY,
        progress: ProgressCallback | None = None,
        available_bytes: int | None = None,
    ) -> TransferStatistics:
        """Download entries to the absolute local paths already chosen for them
        (:func:`vfs.pathmap.resolve_manifest_paths`, of a manifest's files and, for a v2
        manifest, of its ``dirs`` too: each directory entry is created, empty ones
        included; deleted entries are ignored).

        Each local path must lie inside one of ``roots`` (the destinations of the path
        mapping rules, say; a directory may also be a root itself); the most specific root
        is the one checked, symlinks resolved. Otherwise as :meth:`download_manifest`.
        """
        real_roots = sorted((os.path.abspath(r) for r in roots), key=len, reverse=True)
        items: list[_Item] = []
        dirs: list[tuple[str, str]] = []
        for r in resolved:
            local = os.path.abspath(r.local_path)
            is_dir = isinstance(r.entry, ManifestDirectoryPath)
            root = next(
                (
                    x
                    for x in real_roots
                    if local.startswith(x.rstrip(os.sep) + os.sep) or (is_dir and local == x)
                ),
                None,
            )
            if root is None:
                raise PathEscapeError(
                    f"refusing to write {r.local_path} (from {r.source_path}): it is inside "
                    f"none of the destination roots {', '.join(roots)}",
                    path=r.local_path,
                    hint="check the path mapping rules",
                )
            if isinstance(r.entry, ManifestDirectoryPath):
                if not r.entry.deleted:
                    dirs.append((local, root))
                continue
            item = _items_of(r.entry, local, root)
            if item is not None:
                items.append(item)
        return self._run(items, dirs, hash_alg, conflict_resolution, progress, available_bytes)

    # -- the run -------------------------------------------------------------------------

    def _run(
        self,
        items: list[_Item],
        dirs: list[tuple[str, str]],
        hash_alg: str,
        conflict: ConflictResolution,
        progress: ProgressCallback | None,
        available_bytes: int | None,
    ) -> TransferStatistics:
        for item in items:
            check_inside_root(item.local_path, item.root)
        for d, root in dirs:
            check_inside_root(os.path.join(d, "x"), root)
        stats = TransferStatistics(files_total=len(items))
        todo: list[_Item] = []
        for item in items:
            if conflict is ConflictResolution.SKIP and os.path.lexists(item.local_path):
                stats.files_skipped += 1
                stats.bytes_skipped += item.size
            else:
                todo.append(item)
        self._check_space(todo, available_bytes)
        for d, root in dirs:
            os.makedirs(d, exist_ok=True)
            check_inside_root(os.path.join(d, "x"), root)
        run = _Run(self, hash_alg, conflict, stats, todo, progress)
        return run.execute()

    @staticmethod
    def _check_space(items: list[_Item], available: int | None) -> None:
        needed: dict[int, tuple[str, int]] = {}
        for item in items:
            probe = os.path.dirname(item.local_path)
            while not os.path.exists(probe):
                probe = os.path.dirname(probe)
            dev = os.stat(probe).st_dev
            where, total = needed.get(dev, (item.root, 0))
            needed[dev] = (where, total + item.size)
        for where, total in needed.values():
            check_free_space(where, total, available)


class _Run:
    """One download: the shared state of its workers."""

    def __init__(
        self,
        orch: DownloadOrchestrator,
        hash_alg: str,
        conflict: ConflictResolution,
        stats: TransferStatistics,
        items: list[_Item],
        progress: ProgressCallback | None,
    ) -> None:
        self.o = orch
        self.store = orch.store
        self.ready_dirs: set[tuple[str, str]] = set()  # (directory, root) made and checked
        self.hash_alg = hash_alg
        self.conflict = conflict
        self.stats = stats
        self.items = items
        self.tracker = ProgressTracker(
            progress,
            bytes_total=sum(i.size for i in items),
            files_total=len(items),
            interval=orch.progress_interval,
        )
        self.mode_mask = ~current_umask() & 0o777
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self.fatal: BaseException | None = None
        self.streams: set[Readable] = set()
        self.range_pool: ThreadPoolExecutor | None = None
        if self.hash_alg != HASH_ALG_XXH128 and self.o.verify_hash:
            raise DownloadError(f"cannot verify hashes of algorithm {self.hash_alg!r}")

    def stopped(self) -> bool:
        return self.abort.is_set() or self.tracker.cancelled.is_set()

    def execute(self) -> TransferStatistics:
        start = time.monotonic()
        with (
            ThreadPoolExecutor(self.o.workers, thread_name_prefix="vfs-dl") as pool,
            ThreadPoolExecutor(self.o.range_workers, thread_name_prefix="vfs-dl-range") as rp,
        ):
            self.range_pool = rp
            pending: set[Future[None]] = {pool.submit(self.one, item) for item in self.items}
            try:
                while pending:
                    _, pending = wait(pending, timeout=min(0.1, self.o.progress_interval))
                    self.tracker.tick()
                    if self.stopped():
                        self.abort_streams()
                        break
            except BaseException:  # Ctrl-C: stop the workers, let them remove temp files
                self.tracker.cancel()
                self.abort_streams()
                raise
            finally:
                for f in pending:
                    f.cancel()
                wait(pending)
        self.stats.elapsed = time.monotonic() - start
        self.stats.cancelled = self.tracker.cancelled.is_set() and self.fatal is None
        if self.fatal is not None:
            raise self.fatal
        if self.stats.errors and not self.stats.cancelled:
            shown = "\n  ".join(self.stats.errors[:10])
            more = len(self.stats.errors) - 10
            raise DownloadError(
                f"{self.stats.files_failed} of {self.stats.files_total} files were not "
                f"downloaded:\n  {shown}" + (f"\n  … and {more} more" if more > 0 else "")
            )
        return self.stats

    def abort_streams(self) -> None:
        """Make reads blocked on a stalled connection return now (``RangeStream.abort``),
        so that a cancelled or failed download stops promptly."""
        with self.lock:
            streams = list(self.streams)
        for stream in streams:
            abort = getattr(stream, "abort", None)
            if abort is not None:
                abort()

    # -- one file ------------------------------------------------------------------------

    def one(self, item: _Item) -> None:
        if self.stopped():
            return
        try:
            placed = self.place_symlink(item) if item.symlink_target else self.fetch_file(item)
        except _Cancelled:
            return
        except Exception as e:
            if is_fatal(e):
                with self.lock:
                    if self.fatal is None:
                        self.fatal = e
                self.abort.set()
                return
            with self.lock:
                self.stats.files_failed += 1
                self.stats.errors.append(f"{item.local_path}: {e}")
            self.tracker.file_done(item.local_path)
            return
        with self.lock:
            if placed is None:
                self.stats.files_skipped += 1
                self.stats.bytes_skipped += item.size
            else:
                self.stats.files_transferred += 1
                self.stats.bytes_transferred += item.size
                self.stats.paths.append(placed)
        self.tracker.file_done(item.local_path)

    def prepare_dir(self, item: _Item) -> None:
        """Make the directory of ``item`` inside its root. Each directory is resolved and
        made once per run (about 25 ``stat`` calls, 40 µs); the files after it skip the
        check, which leaves the window deadline's own check has: it checks every path once,
        before downloading anything (reference §7.1 step 1)."""
        parent = os.path.dirname(item.local_path)
        key = (parent, item.root)
        if key in self.ready_dirs and os.path.basename(item.local_path) not in ("", ".", ".."):
            return
        check_inside_root(item.local_path, item.root)
        os.makedirs(parent, exist_ok=True)
        check_inside_root(item.local_path, item.root)  # no link raced in on the way
        self.ready_dirs.add(key)

    def fetch_file(self, item: _Item) -> str | None:
        self.prepare_dir(item)
        fd, tmp = make_temp_file(item.local_path)
        try:
            try:
                os.ftruncate(fd, item.size)
                offset = 0
                for i, h in enumerate(item.hashes):
                    length = (
                        item.size
                        if len(item.hashes) == 1
                        else min(FILE_CHUNK_SIZE_BYTES, item.size - i * FILE_CHUNK_SIZE_BYTES)
                    )
                    self.fetch_object(item, h, fd, offset, length)
                    offset += length
                if offset != item.size:
                    raise DownloadError(
                        f"{item.local_path}: the manifest gives {len(item.hashes)} chunks for "
                        f"{item.size} bytes",
                        path=item.local_path,
                    )
                os.fchmod(fd, (0o777 if item.runnable else 0o666) & self.mode_mask)
                if item.mtime is not None:
                    ns = item.mtime * 1000
                    os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)
            return self.place(tmp, item)
        except BaseException:
            remove_quietly(tmp)
            raise

    def place_symlink(self, item: _Item) -> str | None:
        self.prepare_dir(item)
        assert item.symlink_target is not None
        directory, name = os.path.split(item.local_path)
        tmp = os.path.join(directory, f".{name[:100]}.vfs-{uuid.uuid4().hex[:8]}.part")
        os.symlink(item.symlink_target, tmp)
        try:
            return self.place(tmp, item)
        except BaseException:
            remove_quietly(tmp)
            raise

    def place(self, tmp: str, item: _Item) -> str | None:
        """Give the finished ``tmp`` its final name; the name used, or ``None`` if skipped."""
        if self.stopped():
            raise _Cancelled
        dest = item.local_path
        if self.conflict is ConflictResolution.OVERWRITE:
            os.replace(tmp, dest)
            return dest
        if place_exclusive(tmp, dest):
            return dest
        if self.conflict is ConflictResolution.SKIP:
            remove_quietly(tmp)
            return None
        return place_copy(tmp, dest)

    # -- objects and ranges --------------------------------------------------------------

    def fetch_object(self, item: _Item, hash_: str, fd: int, offset: int, length: int) -> None:
        """Write CAS object ``hash_`` (``length`` bytes) at ``offset`` of ``fd``; on a 404
        try the legacy key without the algorithm suffix (reference §4, §7.1 step 6)."""
        key = data_key(hash_, self.hash_alg)
        try:
            self.fetch_key(item, key, fd, offset, length)
        except ObjectNotFoundError as first:
            if isinstance(first, BucketNotFoundError):
                raise
            try:
                self.fetch_key(item, f"{DATA_FOLDER}/{hash_}", fd, offset, length)
            except ObjectNotFoundError as second:
                if isinstance(second, BucketNotFoundError):
                    raise
                raise ObjectNotFoundError(
                    f"{self.store.describe(key)} does not exist (nor the legacy "
                    f"{self.store.describe(f'{DATA_FOLDER}/{hash_}')}), needed for "
                    f"{item.local_path}",
                    key=self.store.describe(key),
                    hint="check the store's root prefix and that the files were uploaded",
                ) from None
        if self.o.verify_hash:
            got = _hash_range(fd, offset, length)
            if got != hash_:
                raise CorruptObjectError(
                    f"{self.store.describe(key)}: content hash {got}, expected {hash_} "
                    f"(for {item.local_path})",
                    key=self.store.describe(key),
                )

    def fetch_key(self, item: _Item, key: str, fd: int, offset: int, length: int) -> None:
        if length <= self.o.multipart_threshold or self.range_pool is None:
            self.with_retries(item, key, fd, offset, None, length)
            return
        parts = [
            (start, min(self.o.part_size, length - start))
            for start in range(0, length, self.o.part_size)
        ]
        futures = [
            self.range_pool.submit(self.with_retries, item, key, fd, offset + s, s, n, length)
            for s, n in parts
        ]
        _, not_done = wait(futures, return_when=FIRST_EXCEPTION)
        if not_done:
            # One part failed: tell the others to stop, then report the failure.
            for f in not_done:
                f.cancel()
            wait(not_done)
        for f in futures:
            error = None if f.cancelled() else f.exception()
            if error is not None:
                raise error

    def with_retries(
        self,
        item: _Item,
        key: str,
        fd: int,
        file_offset: int,
        start: int | None,
        length: int,
        object_size: int | None = None,
    ) -> None:
        """Fetch the whole object (``start is None``) or ``length`` bytes from ``start``
        into ``fd`` at ``file_offset``, fetching again when the body breaks off."""
        for attempt in range(self.o.retries + 1):
            counted = [0]
            try:
                self.fetch_once(item, key, fd, file_offset, start, length, object_size, counted)
                return
            except _BodyBroken as e:
                self.tracker.add_bytes(-counted[0], item.local_path)
                if attempt == self.o.retries:
                    raise e.error from None
                log.info("%s: %s; fetching it again", self.store.describe(key), e)
                time.sleep(min(0.1 * 2**attempt, 2.0))

    @contextlib.contextmanager
    def registered(self, stream: Readable) -> Iterator[None]:
        """Keep ``stream`` in :attr:`streams` (for :meth:`abort_streams`) while in use."""
        with self.lock:
            self.streams.add(stream)
        try:
            if self.stopped():
                raise _Cancelled
            yield
        finally:
            with self.lock:
                self.streams.discard(stream)

    def fetch_once(
        self,
        item: _Item,
        key: str,
        fd: int,
        file_offset: int,
        start: int | None,
        length: int,
        object_size: int | None,
        counted: list[int],
    ) -> None:
        if start is None:
            opened: contextlib.AbstractContextManager[Readable] = self.store.open_read(key)
        else:
            opened = self.store.open_range(key, start, length, size=object_size)
        where = self.store.describe(key)
        with opened as stream, self.registered(stream):
            pos = 0
            while True:
                if self.stopped():
                    raise _Cancelled
                try:
                    data = stream.read(READ_SIZE)
                except StoreError as e:
                    if self.stopped():  # the read was aborted
                        raise _Cancelled from None
                    raise _BodyBroken(e) from None
                if not data:
                    break
                if pos + len(data) > length:
                    raise CorruptObjectError(
                        f"{where} has more than the {length} bytes the manifest gives "
                        f"{item.source}",
                        key=where,
                    )
                _pwrite_all(fd, data, file_offset + pos)
                pos += len(data)
                counted[0] += len(data)
                self.tracker.add_bytes(len(data), item.local_path)
        if self.stopped():  # an aborted read may end like a short body
            raise _Cancelled
        if pos != length:
            raise CorruptObjectError(
                f"{where} has {pos} bytes, the manifest gives {length} for {item.source}",
                key=where,
            )


def normalize_manifest_directory(directory: str) -> str:
    """``directory`` as a manifest-relative directory without leading ``./`` or trailing
    ``/`` (``""`` for the whole manifest). Raises ``ValueError`` for an absolute path or a
    ``..`` component, which no manifest path has."""
    d = directory.replace("\\", "/") if os.sep == "\\" else directory
    if d.startswith("/"):
        raise ValueError(f"directory {directory!r} must be relative to the manifest's root")
    parts = [p for p in d.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"directory {directory!r} must not contain '..'")
    return "/".join(parts)


def in_directory(path: str, prefix: str) -> bool:
    """Whether the manifest path ``path`` lies under the directory ``prefix`` (normalised
    by :func:`normalize_manifest_directory`), comparing whole components."""
    return not prefix or path.startswith(prefix + "/")


def subtree_of(manifest: AnyManifest, prefix: str) -> AnyManifest:
    """The manifest of the entries under directory ``prefix`` (:func:`in_directory`);
    paths are kept as they are. v2 directories under ``prefix`` are kept as well."""
    if not prefix:
        return manifest
    if isinstance(manifest, Manifest):
        return Manifest(
            paths=[p for p in manifest.paths if in_directory(p.path, prefix)],
            hash_alg=manifest.hash_alg,
            manifest_version=manifest.manifest_version,
        )
    return ManifestV2(
        files=[f for f in manifest.files if in_directory(f.path, prefix)],
        dirs=[d for d in manifest.dirs if in_directory(d.path, prefix)],
        hash_alg=manifest.hash_alg,
    )


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _hash_range(fd: int, offset: int, length: int) -> str:
    """xxh128 (XXH3-128, seed 0; reference §3.1) of ``length`` bytes of ``fd`` from ``offset``."""
    h = xxhash.xxh3_128()
    end = offset + length
    while offset < end:
        data = os.pread(fd, min(READ_SIZE * 4, end - offset), offset)
        if not data:
            break
        h.update(data)
        offset += len(data)
    return h.hexdigest()

"""Uploading the CAS objects of a manifest: :class:`UploadOrchestrator`.

Format and behaviour facts (reference/job-attachments.md §8.3, deadline ``upload.py``
``S3AssetUploader.upload_input_files`` / ``upload_object_to_cas``):

* each file goes to ``{rootPrefix}/Data/{hash}.{hashAlg}``; manifest format 2025-12-04-beta
  (reference §2, :mod:`vfs.manifest.v2`) stores a file of more than 256 MiB as one object per
  256 MiB chunk, ``Data/{chunkhash}.xxh128``, made from bytes ``[i * 256 MiB, (i + 1) *
  256 MiB)`` of the file;
* an object already known is not uploaded again: first the S3 check cache (reference §3.3;
  deadline samples it against the store and resets it when stale), then a ``HEAD`` (vfs
  also compares the size, so a truncated object is replaced). Beyond deadline, from
  :data:`LIST_MIN_OBJECTS` objects on, a listing of the CAS folder comes before the
  ``HEAD`` requests and settles most objects with one request per 1,000 keys
  (:data:`LIST_BUDGET`);
* small and large files are handled apart: ``size <= 160 MiB`` (deadline's
  ``S3_MULTIPART_UPLOAD_CHUNK_SIZE`` 8 MiB × the default ``small_file_threshold_multiplier``
  20) is small. Small files are uploaded in parallel threads, one ``PutObject`` each; large
  files one at a time, each as a multipart upload of 8 MiB parts with 10 parts in flight
  (deadline's ``S3_UPLOAD_MAX_CONCURRENCY`` and s3transfer's defaults), through s3transfer.

Beyond deadline: every object is hashed again right before it is sent, from the same open
file, and refused when it no longer has the manifest's content (a file changed since the
manifest was made would otherwise poison the content-addressed store); when several files
share the content, the next one is tried. A progress callback may cancel: no new object is
started, an unfinished multipart upload is aborted and the partial
:class:`~vfs.transfer.progress.TransferStatistics` are returned. The first error every other
object would meet too (:data:`FATAL_ERRORS`) stops the whole upload.

Retries: only botocore's (the client's ``standard`` mode, :func:`vfs.storage.s3.make_s3_client`);
s3transfer does not retry uploads and this module adds no layer of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import xxhash

from vfs.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    EndpointError,
    StoreError,
    TransferCancelledError,
    UploadError,
    VfsError,
)
from vfs.hashing import hash_bytes
from vfs.manifest import (
    FILE_CHUNK_SIZE_BYTES,
    HASH_ALG_XXH128,
    AnyManifest,
    Manifest,
    ManifestFilePath,
    ManifestPath,
)
from vfs.storage.base import ObjectStore
from vfs.storage.check_cache import S3CheckCache, check_cache_key, reset_check_cache_if_stale
from vfs.storage.layout import data_key
from vfs.storage.slices import CancelToken, FileSlice, RangeUploadStore, ShortReadError
from vfs.transfer.progress import ProgressCallback, ProgressTracker, TransferStatistics

log = logging.getLogger(__name__)

FATAL_ERRORS = (BucketNotFoundError, AccessDeniedError, EndpointError)
"""Store errors every other object would meet too (no such bucket, access denied, no or
rejected credentials, endpoint unreachable): the upload stops at the first."""

MULTIPART_PART_SIZE = 8 * 1024 * 1024
"""Bytes per part of a multipart upload: deadline's ``S3_MULTIPART_UPLOAD_CHUNK_SIZE``
(8 MiB, also s3transfer's default ``multipart_chunksize``)."""

SMALL_FILE_THRESHOLD = MULTIPART_PART_SIZE * 20
"""Largest "small" object, in bytes: 160 MiB, deadline's 8 MiB × the default
``small_file_threshold_multiplier`` (20). Larger objects go one at a time, multipart."""

MULTIPART_CONCURRENCY = 10
"""Parts of one large object in flight at once: deadline's ``S3_UPLOAD_MAX_CONCURRENCY``
(10, s3transfer's default ``max_request_concurrency`` too)."""

LIST_MIN_OBJECTS = 100
"""From this many objects to look for on S3, the CAS folder is listed (1,000 keys per
request) before any ``HEAD`` is sent."""

LIST_BUDGET = 0.1
"""Requests a listing may spend, as a share of the ``HEAD`` requests it would replace: with
N objects to look for, at most N / 10 pages of 1,000 keys (N × 100 keys) are listed. S3
lists keys in ascending order and hashes spread evenly, so a listing stopped early still
settles every key up to the last one listed; the rest are asked for with ``HEAD``. A store
of up to 100 × N objects is listed whole; at worst the listing costs 10 % more requests
than ``HEAD`` alone."""

INLINE_LIMIT = 8 * 1024 * 1024
"""Objects up to this many bytes are read once into memory, hashed there and sent from
there; larger ones are hashed from the file, then streamed from it."""

Entry = ManifestPath | ManifestFilePath
"""A manifest entry of either format."""

ObjectCallback = Callable[[Entry, bool], None]
"""Called once per distinct object: ``(an entry holding it, uploaded)``; ``uploaded`` is
``False`` when the store already had it."""


class UploadIncompleteError(UploadError):
    """Some objects were not uploaded. ``statistics`` holds what was done (partial counts;
    ``errors`` names each failure)."""

    def __init__(
        self, message: str, statistics: TransferStatistics, *, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.statistics = statistics


@dataclass(frozen=True, slots=True)
class _Source:
    """Where an object's bytes are: ``length`` bytes from ``offset`` of the local file
    ``path`` (the manifest says the file has ``file_size`` bytes)."""

    path: str
    offset: int
    length: int
    file_size: int


@dataclass(slots=True)
class _Object:
    """One distinct CAS object: its ``key``, content ``hash``, ``size`` in bytes, the
    places it can be read from and the first manifest ``entry`` holding it."""

    key: str
    hash: str
    size: int
    entry: Entry
    sources: list[_Source] = field(default_factory=list)


def plan_objects(
    manifest: AnyManifest, root: str, chunk_size: int = FILE_CHUNK_SIZE_BYTES
) -> list[_Object]:
    """The distinct objects of ``manifest`` with the local files under ``root`` holding
    them, in manifest order. v2 symlinks and delete markers hold none; a v2 entry with
    ``chunkhashes`` holds one object per ``chunk_size`` bytes (256 MiB in the format;
    other values only for tests)."""
    objects: dict[str, _Object] = {}

    def add(h: str, entry: Entry, source: _Source) -> None:
        obj = objects.get(h)
        if obj is None:
            obj = objects[h] = _Object(data_key(h, manifest.hash_alg), h, source.length, entry)
        obj.sources.append(source)

    for entry in manifest.paths if isinstance(manifest, Manifest) else manifest.files:
        path = os.path.join(root, entry.path)
        if isinstance(entry, ManifestPath):
            add(entry.hash, entry, _Source(path, 0, entry.size, entry.size))
            continue
        if entry.deleted or entry.symlink_target is not None:
            continue
        size = entry.size or 0
        if entry.chunkhashes is None:
            add(entry.hash or "", entry, _Source(path, 0, size, size))
            continue
        for i, h in enumerate(entry.chunkhashes):
            start = i * chunk_size
            add(h, entry, _Source(path, start, max(0, min(chunk_size, size - start)), size))
    return list(objects.values())


class UploadOrchestrator:
    """Uploads the files of manifests to ``store``.

    ``workers``: small objects uploaded at once. ``small_file_threshold``: largest small
    object (bytes); larger ones go one at a time as multipart uploads of ``part_size``
    bytes, ``part_workers`` parts at once (S3; a local store copies). ``check_cache``:
    deadline's S3 check cache (objects seen within 30 days are not asked for; reference
    §3.3). ``list_existing``: look for objects by listing the CAS folder first, within
    ``list_budget`` (see :data:`LIST_BUDGET`; default: for S3 stores, where one listing
    request answers for 1,000 keys). ``chunk_size``: bytes per chunk of v2
    ``chunkhashes`` (the format's 256 MiB; change only in tests). ``progress_interval``:
    seconds between progress reports (a report is also made whenever an object
    completes). One orchestrator may run several uploads at a time.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        workers: int = 16,
        small_file_threshold: int = SMALL_FILE_THRESHOLD,
        part_size: int = MULTIPART_PART_SIZE,
        part_workers: int = MULTIPART_CONCURRENCY,
        check_cache: S3CheckCache | None = None,
        chunk_size: int = FILE_CHUNK_SIZE_BYTES,
        progress_interval: float = 0.1,
        list_existing: bool | None = None,
        list_budget: float = LIST_BUDGET,
    ) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError(f"part_size {part_size}: S3 parts are at least 5 MiB")
        self.store = store
        self.workers = workers
        self.small_file_threshold = small_file_threshold
        self.part_size = part_size
        self.part_workers = part_workers
        self.check_cache = check_cache
        self.chunk_size = chunk_size
        self.progress_interval = progress_interval
        self.list_existing = (
            store.uri.startswith("s3://") if list_existing is None else list_existing
        )
        self.list_budget = list_budget

    def upload_manifest(
        self,
        manifest: AnyManifest,
        root: str,
        *,
        progress: ProgressCallback | None = None,
        on_object: ObjectCallback | None = None,
    ) -> TransferStatistics:
        """Upload the content of every file of ``manifest``, read from under ``root``.

        Returns the statistics of the distinct objects (a "file" in them is one CAS object:
        a whole file, or one 256 MiB chunk of a v2 file): ``files_transferred`` /
        ``bytes_transferred`` uploaded, ``files_skipped`` / ``bytes_skipped`` already in the
        store, ``paths`` the local file each uploaded object was read from. When
        ``progress`` returns ``False`` the upload stops promptly and the partial statistics
        are returned with ``cancelled`` set. Raises :class:`UploadIncompleteError` (an
        :class:`UploadError`, with the partial statistics) listing the objects that failed
        (file missing, changed since the manifest was made, unreadable, refused by the
        store) after the others were uploaded, or naming the single cause when an error of
        :data:`FATAL_ERRORS` stopped the upload; :class:`UploadError` at once when the
        manifest's hash algorithm is not xxh128.
        """
        if manifest.hash_alg != HASH_ALG_XXH128:
            raise UploadError(
                f"cannot upload a manifest with hashAlg {manifest.hash_alg!r}: vfs checks "
                f"every file's content against its {HASH_ALG_XXH128} hash before sending it"
            )
        objects = plan_objects(manifest, root, self.chunk_size)
        return _Run(self, objects, progress, on_object).execute()


class _Failed(Exception):
    """One source of an object could not be used (message names the file)."""


class _Run:
    """One upload: the shared state of its workers."""

    def __init__(
        self,
        orch: UploadOrchestrator,
        objects: list[_Object],
        progress: ProgressCallback | None,
        on_object: ObjectCallback | None,
    ) -> None:
        self.o = orch
        self.store = orch.store
        self.objects = objects
        self.on_object = on_object
        self.stats = TransferStatistics(files_total=len(objects))
        self.tracker = ProgressTracker(
            progress,
            bytes_total=sum(o.size for o in objects),
            files_total=len(objects),
            interval=orch.progress_interval,
        )
        self.cancel = CancelToken()
        self.lock = threading.Lock()
        self.fatal: StoreError | None = None
        self.confirmed: list[str] = []

    # -- driver --------------------------------------------------------------------------

    def execute(self) -> TransferStatistics:
        start = time.monotonic()
        try:
            known = self.cached_keys()
            for obj in self.objects:
                if obj.key in known:
                    self.skipped(obj)
            unknown = [o for o in self.objects if o.key not in known]
            todo, unknown = self.list_existing(unknown)
            todo += self.run_pool(self.check, unknown)
            small = [o for o in todo if o.size <= self.o.small_file_threshold]
            large = [o for o in todo if o.size > self.o.small_file_threshold]
            self.run_pool(self.upload_small, small, lanes=[(self.upload_large, large)])
        finally:
            if self.o.check_cache is not None:
                self.o.check_cache.put_many(check_cache_key(self.store, k) for k in self.confirmed)
            self.stats.elapsed = time.monotonic() - start
        return self.finish()

    def cached_keys(self) -> set[str]:
        cache = self.o.check_cache
        if cache is None:
            return set()
        keys = [o.key for o in self.objects]
        try:
            reset_check_cache_if_stale(cache, self.store, keys)
        except FATAL_ERRORS as e:
            self.set_fatal(e)
            return set()
        cache_keys = {check_cache_key(self.store, k): k for k in keys}
        return {cache_keys[c] for c in cache.fresh_keys(cache_keys)}

    def stopped(self) -> bool:
        return self.cancel.cancelled or self.tracker.cancelled.is_set()

    def run_pool(
        self,
        fn: Callable[[_Object], _Object | None],
        items: list[_Object],
        lanes: list[tuple[Callable[[list[_Object]], None], list[_Object]]] | None = None,
    ) -> list[_Object]:
        """``fn`` on every item in ``workers`` threads (and each lane's function on its list
        in one more thread), reporting progress meanwhile; the items ``fn`` returned."""
        if self.stopped() or self.fatal is not None:
            return []
        out: list[_Object] = []
        lanes = lanes or []
        with ThreadPoolExecutor(self.o.workers + len(lanes), thread_name_prefix="vfs-up") as pool:
            pending: set[Future[object]] = {pool.submit(fn, item) for item in items}
            pending |= {pool.submit(lane, its) for lane, its in lanes if its}
            try:
                while pending:
                    done, pending = wait(pending, timeout=min(0.1, self.o.progress_interval))
                    for f in done:
                        result = f.result()
                        if isinstance(result, _Object):
                            out.append(result)
                    self.tracker.tick()
                    if self.tracker.cancelled.is_set() or self.fatal is not None:
                        self.cancel.cancel()
            except BaseException:  # Ctrl-C: stop the workers (in-flight multipart aborted)
                self.cancel.cancel()
                raise
            finally:
                for f in pending:
                    f.cancel()
                wait(pending)
        return out

    def finish(self) -> TransferStatistics:
        stats = self.stats
        stats.cancelled = self.tracker.cancelled.is_set() and self.fatal is None
        if self.fatal is not None:
            done = stats.files_transferred + stats.files_skipped
            raise UploadIncompleteError(
                f"upload stopped after {done} of {stats.files_total} objects: {self.fatal.message}",
                stats,
                hint=self.fatal.hint,
            )
        if stats.errors and not stats.cancelled:
            shown = "\n  ".join(stats.errors[:10])
            more = len(stats.errors) - 10
            raise UploadIncompleteError(
                f"{stats.files_failed} of {stats.files_total} objects were not uploaded:"
                f"\n  {shown}" + (f"\n  … and {more} more" if more > 0 else ""),
                stats,
            )
        return stats

    # -- outcomes ------------------------------------------------------------------------

    def skipped(self, obj: _Object) -> None:
        with self.lock:
            self.stats.files_skipped += 1
            self.stats.bytes_skipped += obj.size
            self.confirmed.append(obj.key)
            self.tracker.bytes_total -= obj.size  # skipped bytes count in neither total nor done
        self.tracker.file_done(obj.sources[0].path)
        if self.on_object is not None:
            self.on_object(obj.entry, False)

    def uploaded(self, obj: _Object, source: _Source) -> None:
        with self.lock:
            self.stats.files_transferred += 1
            self.stats.bytes_transferred += obj.size
            self.stats.paths.append(source.path)
            self.confirmed.append(obj.key)
        self.tracker.file_done(source.path)
        if self.on_object is not None:
            self.on_object(obj.entry, True)

    def failed(self, obj: _Object, message: str) -> None:
        with self.lock:
            self.stats.files_failed += 1
            self.stats.errors.append(message)
        self.tracker.file_done(obj.sources[0].path)

    def set_fatal(self, error: StoreError) -> None:
        with self.lock:
            if self.fatal is None:
                self.fatal = error
        self.cancel.cancel()

    # -- existence -----------------------------------------------------------------------

    def list_existing(self, objects: list[_Object]) -> tuple[list[_Object], list[_Object]]:
        """Settle what it can of ``objects`` by listing the CAS folder of an S3 store
        (:func:`settle_by_listing`, within the orchestrator's ``list_budget``); present ones
        are counted as skipped. Returns ``(missing, still unknown)``. Without
        ``list_existing``, or for fewer than :data:`LIST_MIN_OBJECTS` objects: all unknown
        (a ``HEAD`` each is cheaper)."""
        if self.fatal is not None or self.stopped():
            return [], []
        if len(objects) < LIST_MIN_OBJECTS or not self.o.list_existing:
            return [], objects
        try:
            present, missing = settle_by_listing(
                self.store, {o.key: o.size for o in objects}, self.o.list_budget
            )
        except FATAL_ERRORS as e:
            self.set_fatal(e)
            return [], []
        except StoreError as e:
            log.info("listing the CAS folder failed (%s); asking for each object", e)
            return [], objects
        unknown: list[_Object] = []
        missing_objects: list[_Object] = []
        for obj in objects:
            if obj.key in present:
                self.skipped(obj)
            elif obj.key in missing:
                missing_objects.append(obj)
            else:
                unknown.append(obj)
        return missing_objects, unknown

    def check(self, obj: _Object) -> _Object | None:
        """``obj`` when it must be uploaded; ``None`` when the store has it (or the upload
        was stopped)."""
        if self.stopped():
            return None
        try:
            present = self.store.head(obj.key) == obj.size
        except FATAL_ERRORS as e:
            self.set_fatal(e)
            return None
        except StoreError as e:  # as deadline: another answer counts as "missing"
            log.debug("HEAD %s: %s; uploading it", self.store.describe(obj.key), e)
            present = False
        if present:
            self.skipped(obj)
            return None
        return obj

    # -- uploads -------------------------------------------------------------------------

    def upload_small(self, obj: _Object) -> None:
        self.upload(obj, multipart=False)

    def upload_large(self, objects: list[_Object]) -> None:
        for obj in objects:
            if self.stopped():
                return
            self.upload(obj, multipart=True)

    def upload(self, obj: _Object, *, multipart: bool) -> None:
        """Upload ``obj`` from the first of its sources that still has the content."""
        if self.stopped():
            return
        problems: list[str] = []
        for source in obj.sources:
            counted = [0]
            try:
                self.send(obj, source, multipart, counted)
            except _Failed as e:
                self.tracker.add_bytes(-counted[0], source.path)
                problems.append(str(e))
                if source is not obj.sources[-1]:
                    log.warning("%s; uploading %s from another file with that content", e, obj.key)
                continue
            except TransferCancelledError:
                return
            except FATAL_ERRORS as e:
                self.set_fatal(e)
                return
            except (VfsError, OSError) as e:
                self.failed(obj, f"{source.path}: {e}")
                return
            self.uploaded(obj, source)
            return
        self.failed(obj, problems[-1])

    def send(self, obj: _Object, source: _Source, multipart: bool, counted: list[int]) -> None:
        """Hash ``source`` and, when it still has ``obj``'s content, send it. Raises
        :class:`_Failed` when the file is missing, unreadable or changed."""
        try:
            fd = os.open(source.path, os.O_RDONLY)
        except FileNotFoundError:
            raise _Failed(
                f"{source.path}: no such file (check --root-dirs, or snapshot the root again)"
            ) from None
        except OSError as e:
            raise _Failed(f"{source.path}: {e.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            data: bytes | None = None
            whole = source.length == source.file_size
            what = "" if whole else f" (bytes {source.offset}+{source.length})"
            if size != source.file_size:
                raise _Failed(
                    f"{source.path} changed since the manifest was made: {size} bytes, "
                    f"manifest {source.file_size} (snapshot the root again)"
                )
            try:
                if not multipart and source.length <= INLINE_LIMIT:
                    data = FileSlice(fd, source.offset, source.length).read()
                    actual = hash_bytes(data)
                else:
                    actual = _hash_range(fd, source.offset, source.length)
            except ShortReadError:
                actual = "(the file shrank while it was read)"
            if actual != obj.hash:
                raise _Failed(
                    f"{source.path} changed since the manifest was made{what}: hash {actual}, "
                    f"manifest {obj.hash} (snapshot the root again)"
                )
            if self.stopped():
                raise TransferCancelledError("upload cancelled")

            def on_bytes(n: int) -> None:
                counted[0] += n
                self.tracker.add_bytes(n, source.path)

            if data is not None:
                self.store.put_bytes(obj.key, data)
                on_bytes(len(data))
            elif isinstance(self.store, RangeUploadStore):
                self.store.put_file_range(
                    obj.key, fd, source.offset, source.length,
                    multipart=multipart, part_size=self.o.part_size,
                    concurrency=self.o.part_workers, on_bytes=on_bytes, cancel=self.cancel,
                )  # fmt: skip
            else:
                try:
                    data = FileSlice(fd, source.offset, source.length).read()
                except ShortReadError:
                    raise _Failed(f"{source.path} shrank while it was being sent") from None
                self.store.put_bytes(obj.key, data)
                on_bytes(source.length)
        finally:
            os.close(fd)


def settle_by_listing(
    store: ObjectStore, wanted: dict[str, int], budget: float = LIST_BUDGET
) -> tuple[set[str], set[str]]:
    """Look for the CAS objects ``wanted`` (``{key: size in bytes}``, keys in one folder,
    e.g. ``Data/…``) by listing that folder instead of a ``HEAD`` each: at most
    ``len(wanted) × budget × 1,000`` keys (:data:`LIST_BUDGET`) are listed. Returns
    ``(present, missing)``: keys listed with the right size, and keys the listing proves
    absent (it ended, or S3's ascending order passed them); the others are still unknown
    and need a ``HEAD``. Raises the store's errors (:class:`StoreError`) from the listing."""
    if not wanted:
        return set(), set()
    folder = next(iter(wanted)).rsplit("/", 1)[0] + "/"
    limit = max(1, round(len(wanted) * budget * 1000))  # keys
    present: set[str] = set()
    last = ""
    ordered = True  # S3 lists keys in ascending order; a local directory need not
    complete = True
    for n, (key, size) in enumerate(store.list_keys(folder), 1):
        ordered = ordered and key >= last
        last = key
        if wanted.get(key) == size:
            present.add(key)
        if n >= limit:
            complete = False
            break
    missing = {k for k in wanted if k not in present and (complete or (ordered and k <= last))}
    log.debug("listing %s: %d present, %d missing, %d left to HEAD", folder, len(present),
              len(missing), len(wanted) - len(present) - len(missing))  # fmt: skip
    return present, missing


def _hash_range(fd: int, offset: int, length: int) -> str:
    """xxh128 (XXH3-128, seed 0; reference §3.1) of ``length`` bytes of ``fd`` from
    ``offset``, read in 8 MiB pieces."""
    h = xxhash.xxh3_128()
    end = offset + length
    while offset < end:
        data = os.pread(fd, min(8 * 1024 * 1024, end - offset), offset)
        if not data:
            break
        h.update(data)
        offset += len(data)
    return h.hexdigest()


# -- the earlier interface -------------------------------------------------------------------


@dataclass(slots=True)
class UploadSummary:
    """Outcome of an upload: counts of distinct objects and their bytes."""

    objects: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0


def upload_manifest_files(
    manifest: Manifest,
    root: str,
    store: ObjectStore,
    *,
    workers: int = 8,
    on_object: Callable[[ManifestPath, bool], None] | None = None,
    check_cache: S3CheckCache | None = None,
) -> UploadSummary:
    """Upload the content of every file of the v1 ``manifest``, read from under ``root``:
    :meth:`UploadOrchestrator.upload_manifest` with ``workers`` and ``check_cache``,
    its statistics as an :class:`UploadSummary`. ``on_object(entry, uploaded)`` is called
    once per distinct object. Raises what ``upload_manifest`` raises."""

    def each(entry: Entry, uploaded: bool) -> None:
        if on_object is not None and isinstance(entry, ManifestPath):
            on_object(entry, uploaded)

    orch = UploadOrchestrator(store, workers=workers, check_cache=check_cache)
    s = orch.upload_manifest(manifest, root, on_object=each)
    return UploadSummary(
        objects=s.files_total,
        uploaded=s.files_transferred,
        uploaded_bytes=s.bytes_transferred,
        skipped=s.files_skipped,
        skipped_bytes=s.bytes_skipped,
    )

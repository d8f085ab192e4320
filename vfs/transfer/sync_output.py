"""Incremental download of a queue's job outputs from the store alone (``vfs attachment
sync-output``): :class:`OutputSync`.

What deadline's ``queue sync-output`` (``_incremental_downloads``) does with the Deadline API,
done here from a listing of the store (seeds 000/001; reference/job-attachments.md §1.4, §4,
§4.1, §6.3, §7.3):

1. **Discover**: list ``Manifests/{farmId}/{queueId}/[{jobId}/]``; every key
   ``…/{jobId}/{stepId}/[{taskId}/]{ts}_{sessionActionId}/{hash}_output``
   (:func:`parse_output_manifest_key`) not yet in the checkpoint is new. Every session
   action counts, not only the latest of a task: what a task wrote in an earlier attempt
   was downloaded by an earlier poll anyway.
2. **Match to roots**: a manifest's asset root is its ``asset-root`` / ``asset-root-json``
   metadata (deadline ``_get_asset_root_from_metadata``); a manifest without it is matched
   to the path mapping rule whose ``xxh128(source_path)`` is the ``{hash}`` of its name
   (the root-path hash of ``compute_root_path_hash`` without a location name), else it is
   reported and skipped; so is a manifest that cannot be decoded (both are recorded, so
   one bad manifest never blocks the queue).
3. **Resolve**: each entry's absolute source path (root joined with the entry's path with
   the source's rules, normalised) is mapped with the path mapping rules
   (``strict_transform``); a path no rule maps goes under ``dest``, mirrored: the source
   path's components below ``dest`` (``/mnt/proj/out/a.exr`` →
   ``{dest}/mnt/proj/out/a.exr``, ``C:\\proj\\a.exr`` → ``{dest}/C/proj/a.exr``,
   ``\\\\srv\\share\\a`` → ``{dest}/srv/share/a``), so a pipeline finds a job's files at their
   job path under ``dest`` and overlapping roots land in the same place. Without ``dest``
   such paths are unmapped: reported, not downloaded (as deadline).
4. **Merge** per local path, later wins (deadline ``_merge_absolute_path_manifest_list``):
   manifests ordered by S3 ``LastModified`` as deadline orders them, ties (``LastModified``
   has one-second resolution) broken by session-action order: the key's ``{ts}`` (the
   session action's start), then the session id and the action's index. ``LastModified``
   comes first because it also orders polls: a manifest a later poll finds was uploaded
   later, so the file a later poll writes is also the one the merge would pick.
5. **Download** with :class:`~vfs.transfer.download.DownloadOrchestrator` (temporary file
   and rename: no partial file under a final name). A destination that already has the
   entry's size and mtime (microseconds) is up to date and not fetched again, whatever the
   conflict resolution: this is what makes a rerun after ``kill -9`` resume where it
   stopped. Temporary files a killed run left beside the destinations are removed.
6. **Checkpoint** (:class:`SyncCheckpoint`): once the download succeeded, the keys of the
   poll's manifests with their ``LastModified`` and the watermark (the greatest
   ``LastModified`` processed) are written atomically; the next poll fetches only keys not
   in it. A failed or interrupted poll records nothing, so its manifests are tried again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from vfs.defaults import default_cache_dir
from vfs.errors import ManifestError, VfsError
from vfs.hashing import hash_string
from vfs.manifest import HASH_ALG_XXH128, AnyManifest, Manifest, ManifestDirectoryPath
from vfs.pathmap.applier import PathMappingApplier, split_source_path
from vfs.pathmap.profiles import PathMappingRule
from vfs.pathmap.resolve import ResolvedManifestPath, join_source_path
from vfs.storage.base import ObjectStore
from vfs.storage.layout import MANIFEST_FOLDER
from vfs.storage.manifests import (
    OUTPUT_MANIFEST_KEY_RE,
    OUTPUT_SUFFIX,
    PathFormat,
    download_manifest,
)
from vfs.transfer.conflicts import ConflictResolution
from vfs.transfer.download import DownloadOrchestrator, ResolvableEntry
from vfs.transfer.localfs import DownloadError, remove_quietly
from vfs.transfer.progress import ProgressCallback, TransferStatistics

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
"""``version`` of the checkpoint file format."""

TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
"""The ``{ts}`` of a session action folder (``_float_to_iso_datetime_string``, reference §4)."""

MANIFEST_FETCH_WORKERS = 10
"""Manifests read at once (deadline reads output manifests with 10 threads, reference §7.1)."""


class SyncOutputError(VfsError):
    """sync-output cannot run as asked: a checkpoint of another store, queue or destination,
    one in use by another process, or an unreadable checkpoint."""


# -- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutputManifestKey:
    """An output manifest's store key and what its components say.

    ``key``: ``Manifests/{farmId}/{queueId}/{jobId}/{stepId}/[{taskId}/]{ts}_{sessionActionId}/
    {hash}_output`` (reference §4); ``task_id`` is ``None`` for a chunked step; ``timestamp``
    the session action's start as written (``2024-05-22T22:17:03.409012Z``); ``root_hash``
    the ``{hash}``, ``xxh128(fileSystemLocationName + rootPath)``.
    """

    key: str
    job_id: str
    step_id: str
    task_id: str | None
    timestamp: str
    session_action_id: str
    root_hash: str

    def session_action_order(self) -> tuple[str, str, int, str]:
        """Session-action order: start time, then session id, then the action's index
        (``sessionaction-{session}-{index}``, compared as a number), then the key."""
        session, _, index = self.session_action_id.rpartition("-")
        return (self.timestamp, session, int(index) if index.isdigit() else -1, self.key)


def parse_output_manifest_key(key: str, farm_id: str, queue_id: str) -> OutputManifestKey | None:
    """The parts of an output manifest key of this farm and queue, or ``None`` for any other
    key (input manifests, keys of another layout). The key must also match deadline's
    ``step-.*/.*/.*output.*`` (``_get_tasks_manifests_keys_from_s3``)."""
    parts = key.split("/")
    if len(parts) not in (7, 8) or parts[:3] != [MANIFEST_FOLDER, farm_id, queue_id]:
        return None
    name, folder = parts[-1], parts[-2]
    ts, sep, session_action = folder.partition("_")
    if (
        not sep
        or not TIMESTAMP_RE.match(ts)
        or not session_action
        or not name.endswith(f"_{OUTPUT_SUFFIX}")
        or not OUTPUT_MANIFEST_KEY_RE.search(key)
    ):
        return None
    return OutputManifestKey(
        key=key,
        job_id=parts[3],
        step_id=parts[4],
        task_id=parts[5] if len(parts) == 8 else None,
        timestamp=ts,
        session_action_id=session_action,
        root_hash=name.removesuffix(f"_{OUTPUT_SUFFIX}"),
    )


def list_output_manifest_keys(
    store: ObjectStore, farm_id: str, queue_id: str, job_ids: Sequence[str] = ()
) -> list[OutputManifestKey]:
    """Every output manifest of the given jobs (all jobs of the queue when none are
    given), from one listing per job (or one of the queue), sorted by key. Raises the
    store's ``StoreError`` when a listing fails."""
    base = f"{MANIFEST_FOLDER}/{farm_id}/{queue_id}/"
    prefixes = [f"{base}{job}/" for job in dict.fromkeys(job_ids)] or [base]
    found: list[OutputManifestKey] = []
    for prefix in prefixes:
        for key, _size in store.list_keys(prefix):
            parsed = parse_output_manifest_key(key, farm_id, queue_id)
            if parsed is not None:
                found.append(parsed)
    return sorted(found, key=lambda k: k.key)


# -- the checkpoint -----------------------------------------------------------------------------


@dataclass(slots=True)
class SyncCheckpoint:
    """What earlier polls processed, kept in a JSON file.

    File shape: ``{"version": 1, "scope": {...}, "watermark": float | null,
    "processed": {key: last_modified, ...}}``; ``scope`` names the store, farm, queue and
    destinations the keys were downloaded for; ``last_modified`` and ``watermark`` are
    seconds since the epoch (S3 ``LastModified``), the watermark the greatest of them.
    """

    path: str
    scope: dict[str, Any]
    processed: dict[str, float] = field(default_factory=dict)
    watermark: float | None = None

    @classmethod
    def load(cls, path: str, scope: dict[str, Any]) -> SyncCheckpoint:
        """The checkpoint at ``path``, or an empty one when the file does not exist.

        Raises :class:`SyncOutputError` when the file is unreadable or was written for
        another ``scope`` (downloading those keys' files again elsewhere needs another
        checkpoint file)."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return cls(path, scope)
        except (OSError, ValueError) as e:
            raise SyncOutputError(
                f"cannot read the sync-output checkpoint {path}: {e}",
                hint="remove it to download every output again, or give another --checkpoint",
            ) from None
        if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
            raise SyncOutputError(
                f"{path} is not a vfs sync-output checkpoint (version {CHECKPOINT_VERSION})",
                hint="give another --checkpoint",
            )
        if data.get("scope") != scope:
            raise SyncOutputError(
                f"the checkpoint {path} was written for {json.dumps(data.get('scope'))}, "
                f"not {json.dumps(scope)}",
                hint="give another --checkpoint for another store, queue or destination",
            )
        processed = {str(k): float(v) for k, v in dict(data.get("processed", {})).items()}
        watermark = data.get("watermark")
        return cls(path, scope, processed, None if watermark is None else float(watermark))

    def record(self, last_modified: dict[str, float]) -> None:
        """Add processed keys (``{key: LastModified}``) and move the watermark."""
        self.processed.update(last_modified)
        if last_modified:
            top = max(last_modified.values())
            self.watermark = top if self.watermark is None else max(self.watermark, top)

    def save(self) -> None:
        """Write the file atomically: a temporary file beside it, flushed to disk, then
        renamed over it (a reader or a crash sees the old or the new checkpoint whole)."""
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        data = {
            "version": CHECKPOINT_VERSION,
            "scope": self.scope,
            "watermark": self.watermark,
            "processed": dict(sorted(self.processed.items())),
        }
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".vfs-checkpoint-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            remove_quietly(tmp)
            raise
        with contextlib.suppress(OSError):
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


@contextlib.contextmanager
def checkpoint_lock(path: str) -> Iterator[None]:
    """Hold ``{path}.lock`` (``flock``) so two syncs never share a checkpoint. Raises
    :class:`SyncOutputError` when another process holds it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncOutputError(
                f"another sync-output is using the checkpoint {path}",
                hint="wait for it to finish, or give another --checkpoint",
            ) from None
        yield
    finally:
        os.close(fd)


# -- paths --------------------------------------------------------------------------------------


def guess_path_format(root_path: str) -> PathFormat:
    """``windows`` for a root written like ``C:\\…``, ``C:/…`` or ``\\\\server\\share``,
    else ``posix`` (output manifest metadata does not record the root's format)."""
    if re.match(r"^[A-Za-z]:[\\/]", root_path) or root_path.startswith("\\\\"):
        return PathFormat.WINDOWS
    return PathFormat.POSIX


def mirrored_path(dest: str, source_path: str, fmt: PathFormat) -> str:
    """``source_path`` (absolute, normalised, in format ``fmt``) re-rooted under ``dest``:
    its components below it, the anchor without separators (``/`` → nothing, ``C:\\`` →
    ``C``, ``\\\\srv\\share\\`` → ``srv``, ``share``)."""
    parts = list(split_source_path(source_path, fmt))
    anchor: list[str] = []
    if parts and (parts[0].endswith(("/", "\\")) or parts[0].endswith(":")):
        head = parts.pop(0)
        anchor = [p.rstrip(":") for p in re.split(r"[\\/]+", head) if p.strip(":")]
    return os.path.join(os.path.abspath(dest), *anchor, *parts)


# -- one poll -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Fetched:
    key: OutputManifestKey
    manifest: AnyManifest
    asset_root: str | None
    last_modified: float


@dataclass(slots=True)
class SyncPlan:
    """What one poll found: the new manifests (``keys``, in merge order, with their
    ``LastModified``), the files to download (``resolved``), the destinations already up
    to date (``up_to_date``, local paths), the absolute source paths no rule maps
    (``unmapped``) or that leave their root (``outside_root``: a Windows root's entry with
    ``..\\``), and the keys of manifests with no asset root (``rootless``) or that cannot
    be decoded (``unreadable``; both are recorded as processed, not read again).
    ``bytes_to_download``: the bytes of ``resolved``."""

    keys: list[str] = field(default_factory=list)
    last_modified: dict[str, float] = field(default_factory=dict)
    resolved: list[ResolvedManifestPath[ResolvableEntry]] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    rootless: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    outside_root: list[str] = field(default_factory=list)
    hash_alg: str = HASH_ALG_XXH128

    @property
    def bytes_to_download(self) -> int:
        return sum(_entry_size(r.entry) for r in self.resolved)


@dataclass(slots=True)
class SyncResult:
    """One poll's outcome: its :class:`SyncPlan`, the download's statistics, and the
    checkpoint's watermark after it (seconds since the epoch, ``None`` before any output)."""

    plan: SyncPlan
    stats: TransferStatistics
    watermark: float | None
    checkpoint: str

    def as_dict(self) -> dict[str, object]:
        """The ``--json`` line of a poll: the transfer summary (same shape as ``vfs
        attachment download``) plus ``manifests`` (new keys), ``files_up_to_date``,
        ``unmapped``, ``manifests_without_root``, ``manifests_unreadable``,
        ``outside_root``, ``watermark`` and ``checkpoint``."""
        return {
            "manifests": list(self.plan.keys),
            **self.stats.as_dict(),
            "files_up_to_date": len(self.plan.up_to_date),
            "unmapped": list(self.plan.unmapped),
            "manifests_without_root": list(self.plan.rootless),
            "manifests_unreadable": list(self.plan.unreadable),
            "outside_root": list(self.plan.outside_root),
            "watermark": self.watermark,
            "checkpoint": self.checkpoint,
        }


def _entry_size(entry: ResolvableEntry) -> int:
    """Bytes of a file entry (0 for a directory)."""
    return 0 if isinstance(entry, ManifestDirectoryPath) else int(entry.size or 0)


def _entries(manifest: AnyManifest) -> list[ResolvableEntry]:
    """The files of a manifest of either format and a v2 manifest's directories (empty
    ones included), delete markers left out."""
    if isinstance(manifest, Manifest):
        return list(manifest.paths)
    return [*(d for d in manifest.dirs if not d.deleted), *(f for f in manifest.files
                                                             if not f.deleted)]  # fmt: skip


def _folded_parts(path: str, fmt: PathFormat) -> tuple[str, ...]:
    """The components of ``path``, lower-cased for a Windows path (case-insensitive)."""
    parts = split_source_path(path, fmt)
    return tuple(p.lower() for p in parts) if fmt is PathFormat.WINDOWS else parts


def _is_up_to_date(local_path: str, entry: ResolvableEntry) -> bool:
    """Whether ``local_path`` is a regular file with the entry's size and mtime (µs).
    A directory entry is never up to date: creating it again costs nothing."""
    if isinstance(entry, ManifestDirectoryPath):
        return False
    if getattr(entry, "symlink_target", None) is not None or entry.mtime is None:
        return False
    try:
        st = os.lstat(local_path)
    except OSError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == _entry_size(entry)
        and st.st_mtime_ns // 1000 == entry.mtime
    )


def remove_stale_temp_files(local_paths: Sequence[str]) -> int:
    """Remove the temporary files (``.{name}.vfs-XXXXXXXX.part``, :func:`~vfs.transfer.
    localfs.make_temp_file`) a killed download left beside ``local_paths``; returns how many.
    Run under the checkpoint lock, so no download of this sync is using them."""
    wanted: dict[str, set[str]] = {}
    for path in local_paths:
        directory, name = os.path.split(path)
        wanted.setdefault(directory, set()).add(f".{name[:100]}.vfs-")
    removed = 0
    for directory, prefixes in wanted.items():
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            cut = name.rfind(".vfs-")
            if name.endswith(".part") and cut > 0 and name[: cut + 5] in prefixes:
                remove_quietly(os.path.join(directory, name))
                removed += 1
    return removed


class OutputSync:
    """Incremental download of the outputs of ``job_ids`` (every job of the queue when
    empty) of queue ``queue_id`` of farm ``farm_id`` from ``store``.

    ``dest``: directory under which paths no rule maps are mirrored (see the module
    docstring); ``rules``: path mapping rules (one source format); at least one of the two
    is needed. ``checkpoint_path``: the :class:`SyncCheckpoint` file (default
    :func:`default_checkpoint_path` in the vfs cache directory). Raises
    :class:`SyncOutputError` for a configuration that cannot work.
    """

    def __init__(
        self,
        store: ObjectStore,
        farm_id: str,
        queue_id: str,
        job_ids: Sequence[str] = (),
        *,
        dest: str | None,
        rules: Sequence[PathMappingRule] = (),
        checkpoint_path: str | None = None,
        conflict_resolution: ConflictResolution = ConflictResolution.OVERWRITE,
        orchestrator: DownloadOrchestrator | None = None,
    ) -> None:
        if dest is None and not rules:
            raise SyncOutputError(
                "sync-output needs a destination", hint="give --dest DIR or --path-mapping-rules"
            )
        self.store = store
        self.farm_id = farm_id
        self.queue_id = queue_id
        self.job_ids = list(dict.fromkeys(job_ids))
        self.dest = os.path.abspath(dest) if dest is not None else None
        self.rules = list(rules)
        self.applier = PathMappingApplier(self.rules) if self.rules else None
        self.conflict_resolution = conflict_resolution
        self.orchestrator = orchestrator or DownloadOrchestrator(store)
        self.scope: dict[str, Any] = {
            "store": store.uri,
            "farm_id": farm_id,
            "queue_id": queue_id,
            "dest": self.dest,
            "rules": [r.to_dict() for r in self.rules],
        }
        self.checkpoint_path = os.path.abspath(
            checkpoint_path or default_checkpoint_path(default_cache_dir(), self.scope)
        )

    # -- planning --------------------------------------------------------------------------

    def _root_of(self, fetched: _Fetched) -> str | None:
        if fetched.asset_root is not None:
            return fetched.asset_root
        for rule in self.rules:
            if rule.hashed_source_path() == fetched.key.root_hash:
                return rule.source_path
        return None

    def _format_of(self, root: str) -> PathFormat:
        """The path format of ``root``: the rules' when a rule maps it, else by its shape
        (:func:`guess_path_format`)."""
        a = self.applier
        if a is not None and a.source_path_format is not None and a.try_transform(root):
            return a.source_path_format
        return guess_path_format(root)

    def _local_path(self, source: str, fmt: PathFormat) -> str | None:
        if self.applier is not None and self.applier.source_path_format is fmt:
            mapped = self.applier.try_transform(source)
            if mapped is not None:
                return mapped
        if self.dest is not None:
            return mirrored_path(self.dest, source, fmt)
        return None

    def plan(self, checkpoint: SyncCheckpoint) -> SyncPlan:
        """List the store, read the manifests not in ``checkpoint`` and decide what to
        download. An undecodable manifest is reported (``unreadable``), not raised. Raises
        the store's errors."""
        listed = list_output_manifest_keys(self.store, self.farm_id, self.queue_id, self.job_ids)
        new = [k for k in listed if k.key not in checkpoint.processed]
        plan = SyncPlan()
        if not new:
            return plan

        def fetch(k: OutputManifestKey) -> _Fetched | ManifestError:
            try:
                got = download_manifest(self.store, k.key)
            except ManifestError as e:  # will not heal: report it, do not block the queue
                return e
            return _Fetched(k, got.manifest, got.asset_root, got.last_modified)

        with ThreadPoolExecutor(MANIFEST_FETCH_WORKERS, thread_name_prefix="vfs-sync") as pool:
            answers = list(pool.map(fetch, new))
        fetched = [a for a in answers if isinstance(a, _Fetched)]
        for k, a in zip(new, answers, strict=True):
            if isinstance(a, ManifestError):
                log.warning("%s; its files are not downloaded", a)
                plan.unreadable.append(k.key)
        fetched.sort(key=lambda f: (f.last_modified, f.key.session_action_order()))
        algs = {f.manifest.hash_alg for f in fetched}
        if len(algs) > 1:
            raise DownloadError(
                f"the new output manifests use different hash algorithms {sorted(algs)}",
                hint="sync them separately (--job-id)",
            )
        plan.hash_alg = algs.pop() if algs else HASH_ALG_XXH128
        for key in plan.unreadable:  # recorded as processed: reading it again cannot help
            plan.keys.append(key)
            plan.last_modified[key] = 0.0
        merged: dict[str, ResolvedManifestPath[ResolvableEntry]] = {}
        for f in fetched:
            plan.keys.append(f.key.key)
            plan.last_modified[f.key.key] = f.last_modified
            root = self._root_of(f)
            if root is None:
                log.warning(
                    "%s has no asset-root metadata and no path mapping rule matches its "
                    "name; its files are not downloaded",
                    self.store.describe(f.key.key),
                )
                plan.rootless.append(f.key.key)
                continue
            fmt = self._format_of(root)
            root_parts = _folded_parts(join_source_path(root, ".", fmt), fmt)
            for entry in _entries(f.manifest):
                source = join_source_path(root, entry.path, fmt)
                if _folded_parts(source, fmt)[: len(root_parts)] != root_parts:
                    # A Windows root's entry may hold "..\\": never leave the root.
                    log.warning("%s: %r leaves its root %r; skipped", f.key.key, entry.path, root)
                    plan.outside_root.append(source)
                    continue
                local = self._local_path(source, fmt)
                if local is None:
                    plan.unmapped.append(source)
                    continue
                merged[local] = ResolvedManifestPath(entry, local, source)
        if plan.unmapped:
            log.warning(
                "%d output paths are mapped by no rule and not downloaded, e.g. %s",
                len(plan.unmapped),
                plan.unmapped[0],
            )
        for local, r in merged.items():
            if _is_up_to_date(local, r.entry):
                plan.up_to_date.append(local)
            else:
                plan.resolved.append(r)
        roots = [r.destination_path for r in self.rules]
        if self.dest is not None:
            roots.append(self.dest)
        plan.roots = roots
        return plan

    # -- running ---------------------------------------------------------------------------

    def run(
        self,
        plan: SyncPlan,
        checkpoint: SyncCheckpoint,
        *,
        progress: ProgressCallback | None = None,
    ) -> SyncResult:
        """Download what ``plan`` lists, then record its manifests in ``checkpoint`` (only
        when the download completed: a cancelled or failed one records nothing). Raises as
        :meth:`DownloadOrchestrator.download_to_resolved_paths`."""
        stats = TransferStatistics()
        if plan.resolved:
            remove_stale_temp_files([r.local_path for r in plan.resolved])
            stats = self.orchestrator.download_to_resolved_paths(
                plan.resolved,
                plan.roots,
                hash_alg=plan.hash_alg,
                conflict_resolution=self.conflict_resolution,
                progress=progress,
            )
        if plan.keys and not stats.cancelled:
            checkpoint.record(plan.last_modified)
            checkpoint.save()
        return SyncResult(plan, stats, checkpoint.watermark, checkpoint.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[SyncCheckpoint]:
        """Hold the checkpoint's lock (:func:`checkpoint_lock`) and yield the checkpoint,
        loaded: wrap each :meth:`plan` and :meth:`run` pair in it."""
        with checkpoint_lock(self.checkpoint_path):
            yield SyncCheckpoint.load(self.checkpoint_path, self.scope)

    def poll(self, *, progress: ProgressCallback | None = None) -> SyncResult:
        """One poll under the checkpoint's lock: :meth:`plan` then :meth:`run`."""
        with self.locked() as checkpoint:
            return self.run(self.plan(checkpoint), checkpoint, progress=progress)


def default_checkpoint_path(cache_dir: str, scope: dict[str, Any]) -> str:
    """``{cache_dir}/sync-output/{farm}_{queue}_{hash of the scope}.json``: one checkpoint
    per store, queue, destination and rules."""
    digest = hash_string(json.dumps(scope, sort_keys=True))[:16]
    return os.path.join(
        cache_dir, "sync-output", f"{scope['farm_id']}_{scope['queue_id']}_{digest}.json"
    )


def sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (Ctrl-C interrupts it)."""
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))

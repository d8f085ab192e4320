"""The worker agent's two job-attachment steps, without the Deadline API: syncing a session's
inputs (``attachment_download.py``) and its outputs (``attachment_upload.py``).

The worker agent (deadline-cloud-worker-agent 0.33.6) runs, as the job user, the step scripts
``deadline_worker_agent/sessions/actions/scripts/attachment_download.py`` and
``attachment_upload.py`` with ``-s3 s3://{bucket}/{rootPrefix} -wp {properties.json}``; the
JSON file is a list of :class:`WorkerManifestProperties` (``to_dict`` of the agent's
``sessions/attachment_models.py::WorkerManifestProperties``). Reference
(reference/job-attachments.md) §6.3 (local roots), §7 (downloads), §8.2 and §8.4 (what an
upload step does), and the worker-agent analysis (seed 002).

Download (:func:`sync_inputs`): per entry with a ``localInputManifestPath``, that manifest's
files go under ``localRootPath`` (conflicts: ``create_copy`` as deadline's
``download_files_from_manifests`` default). Progress lines ``openjd_progress: {percent}``
and ``openjd_status: {message}`` go to stdout; a transfer rate under 10 KB/s for 60
consecutive reports (one a second) cancels with ``openjd_fail: …`` (the script's policy).

Upload (:func:`sync_outputs`): per entry, (1) merge the manifests of ``localManifestPaths``
(the session's inputs and earlier output snapshots), later files winning per path, a file
base name counted once (deadline ``api/_utils.py::_read_manifests`` keys by base name, the
last file of a name wins) — the base; (2) snapshot the files under the output directories
(``{dir}/**``, dot files left out) that are new or differ from the base in size or in mtime
by more than 1 µs, written to ``manifest_snapshot/output-{xxh128(localRoot)}-{ts}.manifest``
in the working directory and announced as ``ja_snapshot: {"root", "manifest"}`` (the agent
feeds it to the session's next upload); (3) upload the CAS objects and the output manifest
to ``Manifests/{farm}/{queue}/{job}/{step}/[{task}/]{ts}_{sessionAction}/
{xxh128(fsl + rootPath)}_output`` with the output metadata, and print
``ja_upload: [{"output_manifest_path", "output_manifest_hash", "source_path"}]``.

Beyond the scripts: CAS objects go up before the manifest (deadline uploads the manifest
first, so a failed upload can publish a manifest naming missing data), each file is hashed
again before it is uploaded, and the first error every object would meet stops the upload.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from vfs.errors import ManifestError, VfsError
from vfs.hash_cache import HashCache
from vfs.manifest import (
    AnyManifest,
    Manifest,
    ManifestPath,
    decode_any_manifest,
    encode_manifest,
    to_v1,
)
from vfs.pathmap.profiles import PathMappingRule
from vfs.snapshot import snapshot_changes, snapshot_directory, write_manifest_file
from vfs.storage.base import ObjectStore
from vfs.storage.manifests import (
    ManifestProperties,
    PathFormat,
    compute_root_path_hash,
    manifest_key,
    manifest_metadata,
    session_action_manifest_prefix,
    upload_manifest,
)
from vfs.transfer.conflicts import ConflictResolution
from vfs.transfer.download import DownloadOrchestrator
from vfs.transfer.progress import (
    LOW_TRANSFER_COUNT_THRESHOLD,
    LOW_TRANSFER_RATE_THRESHOLD,
    LowTransferRateDetector,
    TransferProgress,
    TransferStatistics,
)
from vfs.transfer.upload import UploadSummary, upload_manifest_files

SNAPSHOT_DIR = "manifest_snapshot"
"""Where the upload step writes output snapshots, relative to its working directory (the
script's ``snapshot()``)."""

SNAPSHOT_NAME = "output"
"""The ``name`` of those snapshot files (``output-{hash}-{ts}.manifest``)."""

Printer = Callable[[str], None]
"""Where the steps' stdout lines go (``print`` with flush, in the CLI)."""


class WorkerPropertiesError(VfsError):
    """A worker manifest properties file cannot be used; the message names the file."""


@dataclass(slots=True)
class WorkerManifestProperties:
    """One asset root of a session as the worker agent hands it to its step scripts.

    ``manifest_properties``: the job's entry for the root (``attachments.manifests[i]``).
    ``local_root_path``: where the root is on this host (the session's ``assetroot-…`` or
    a storage profile's location). ``local_manifest_paths``: manifest files whose merge is
    the base of output snapshots (the session's input manifests and earlier output
    snapshots). ``local_input_manifest_path``: the merged input manifest to download.

    Same fields, JSON shape and methods as the agent's
    ``sessions/attachment_models.py::WorkerManifestProperties`` (0.33.6).
    """

    manifest_properties: ManifestProperties
    local_root_path: str
    local_manifest_paths: list[str] = field(default_factory=list)
    local_input_manifest_path: str | None = None

    @property
    def root_path(self) -> str:
        """The root on the submitting host (``rootPath``)."""
        return self.manifest_properties.root_path

    @property
    def root_path_format(self) -> PathFormat:
        """``posix`` or ``windows`` (``rootPathFormat``)."""
        return PathFormat(self.manifest_properties.root_path_format)

    @property
    def file_system_location_name(self) -> str | None:
        """The storage-profile location of the root (``fileSystemLocationName``), if any."""
        return self.manifest_properties.file_system_location_name

    @property
    def output_relative_directories(self) -> list[str] | None:
        """Output directories relative to the root, in the root's format."""
        return self.manifest_properties.output_relative_directories

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerManifestProperties:
        """Parse one entry: ``{"manifestProperties": {...}, "localRootPath": str,
        "localManifestPaths": [str]?, "localInputManifestPath": str?}`` (the agent's
        ``from_dict``). Raises ``KeyError``, ``ValueError`` or ``TypeError`` for a bad
        entry (:func:`load_worker_manifest_properties` names the file)."""
        props = ManifestProperties.from_dict(data["manifestProperties"])
        local_root = data["localRootPath"]
        paths = data.get("localManifestPaths") or []
        input_path = data.get("localInputManifestPath")
        if not isinstance(local_root, str) or not all(isinstance(p, str) for p in paths):
            raise TypeError("localRootPath and localManifestPaths must hold strings")
        if input_path is not None and not isinstance(input_path, str):
            raise TypeError("localInputManifestPath must be a string")
        return cls(props, local_root, list(paths), input_path)

    def to_dict(self) -> dict[str, Any]:
        """The agent's JSON shape (inverse of :meth:`from_dict`)."""
        return {
            "manifestProperties": self.manifest_properties.to_dict(),
            "localManifestPaths": list(self.local_manifest_paths),
            "localRootPath": self.local_root_path,
            "localInputManifestPath": self.local_input_manifest_path,
        }

    def local_output_relative_directories(self) -> list[str] | None:
        """The output directories in this host's path format, or ``None`` when the job
        gives none.

        The agent's method of this name: a directory written in the other format is
        converted component by component (``str(Path(PureWindowsPath(d)))`` on a POSIX
        host: ``out\\\\frames`` → ``out/frames``); in the host's format it is kept as is.
        """
        dirs = self.output_relative_directories
        if dirs is None:
            return None
        source = self.root_path_format
        if source is PathFormat.host():
            return list(dirs)
        pure = PureWindowsPath if source is PathFormat.WINDOWS else PurePosixPath
        return [str(Path(pure(d))) for d in dirs]

    def as_output_metadata(self) -> dict[str, str]:
        """User metadata of this root's output manifests (without ``x-amz-meta-``):
        ``asset-root`` (ASCII root verbatim; otherwise it and ``asset-root-json`` hold
        ``json.dumps(rootPath)``) and ``file-system-location-name`` when set
        (:func:`vfs.storage.manifest_metadata`). The agent's method returns the same dict
        wrapped as ``{"Metadata": …}`` (boto3 ``ExtraArgs``)."""
        return manifest_metadata(self.root_path, self.file_system_location_name)

    def to_path_mapping_rule(self) -> PathMappingRule:
        """The OpenJD rule the agent adds for this root: ``rootPath`` (in
        ``rootPathFormat``) → ``localRootPath``."""
        return PathMappingRule(self.root_path_format, self.root_path, self.local_root_path)

    def get_hashed_source_path(self) -> str:
        """xxh128 of ``f"{fileSystemLocationName or ''}{rootPath}"``: the name of this
        root's output manifests, ``{hash}_output`` (agent and deadline
        ``asset_sync.py::_upload_output_manifest_to_s3``; reference §1.4)."""
        return compute_root_path_hash(self.file_system_location_name, self.root_path)


def load_worker_manifest_properties(path: str) -> list[WorkerManifestProperties]:
    """The entries of a worker manifest properties file (a JSON list).

    Raises :class:`WorkerPropertiesError` naming ``path`` when it cannot be read, is not
    JSON, is not a list (the agent's scripts refuse a dictionary too), or an entry is bad.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise WorkerPropertiesError(f"cannot read worker properties {path}: {e.strerror}") from None
    except ValueError as e:
        raise WorkerPropertiesError(f"worker properties {path} is not JSON: {e}") from None
    if not isinstance(data, list):
        raise WorkerPropertiesError(
            f"worker properties {path} must be a JSON list of roots, not {type(data).__name__}",
            hint='write [{"manifestProperties": {...}, "localRootPath": ...}, ...]',
        )
    out = []
    for i, item in enumerate(data):
        try:
            if not isinstance(item, Mapping):
                raise TypeError("an entry must be an object")
            out.append(WorkerManifestProperties.from_dict(item))
        except (KeyError, ValueError, TypeError) as e:
            raise WorkerPropertiesError(
                f"worker properties {path}, entry {i}: {type(e).__name__}: {e}",
                hint="each entry needs manifestProperties (rootPath, rootPathFormat) and "
                "localRootPath",
            ) from None
    return out


def _read_manifest_file(path: str) -> AnyManifest:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ManifestError(f"cannot read manifest {path}: {e.strerror}") from None
    return decode_any_manifest(data, source=path)


# -- progress lines --------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def progress_lines(p: TransferProgress, verb: str) -> list[str]:
    """The lines the agent reads from a step's stdout for one report:
    ``openjd_progress: {percent of bytes, 0-100}`` and ``openjd_status: {message}``."""
    percent = 100.0 if p.bytes_total == 0 else min(100.0, 100.0 * p.bytes_done / p.bytes_total)
    status = (
        f"{verb} {_human(p.bytes_done)} / {_human(p.bytes_total)} of {p.files_total} "
        f"file{'' if p.files_total == 1 else 's'} (Transfer rate: {_human(p.rate)}/s)"
    )
    return [f"openjd_progress: {round(percent, 2)}", f"openjd_status: {status}"]


class _Overall:
    """Turns the reports of consecutive per-root downloads into reports over all roots."""

    def __init__(
        self, bytes_total: int, files_total: int, then: Callable[[TransferProgress], bool]
    ) -> None:
        self.bytes_total = bytes_total
        self.files_total = files_total
        self.bytes_before = 0
        self.files_before = 0
        self.start = time.monotonic()
        self.then = then

    def finish_root(self, stats: TransferStatistics) -> None:
        self.bytes_before += stats.bytes_transferred
        self.files_before += stats.files_total

    def __call__(self, p: TransferProgress) -> bool:
        elapsed = time.monotonic() - self.start
        done = self.bytes_before + p.bytes_done
        return self.then(
            TransferProgress(
                bytes_done=done,
                bytes_total=self.bytes_total,
                files_done=self.files_before + p.files_done,
                files_total=self.files_total,
                rate=done / elapsed if elapsed > 0 else 0.0,
                elapsed=elapsed,
                current=p.current,
            )
        )


# -- the download step -----------------------------------------------------------------------


@dataclass(slots=True)
class SyncInputsResult:
    """What :func:`sync_inputs` did: per-root statistics (local root → statistics) and
    whether the low-rate policy cancelled it (``failed_low_rate``)."""

    by_root: dict[str, TransferStatistics] = field(default_factory=dict)
    failed_low_rate: bool = False

    @property
    def cancelled(self) -> bool:
        """Whether some root's download was cancelled."""
        return any(s.cancelled for s in self.by_root.values())


def sync_inputs(
    properties: Sequence[WorkerManifestProperties],
    store: ObjectStore,
    *,
    out: Printer = print,
    conflict_resolution: ConflictResolution = ConflictResolution.CREATE_COPY,
    workers: int = 16,
    progress_interval: float = 1.0,
    low_rate_threshold: float = LOW_TRANSFER_RATE_THRESHOLD,
    low_rate_reports: int = LOW_TRANSFER_COUNT_THRESHOLD,
) -> SyncInputsResult:
    """The download step: each entry's ``local_input_manifest_path`` downloaded under its
    ``local_root_path`` (a later entry for the same local root replaces an earlier one,
    as the script's dict does; an entry without an input manifest is reported and left).

    Prints the progress lines (:func:`progress_lines`) every ``progress_interval``
    seconds and at each finished file; when the overall rate stays under
    ``low_rate_threshold`` bytes/s for ``low_rate_reports`` reports in a row it prints
    ``openjd_fail: …`` and cancels (``failed_low_rate``). Raises
    :class:`ManifestError` naming an unreadable manifest file, and the download's errors
    (:meth:`DownloadOrchestrator.download_manifest`).
    """
    by_root: dict[str, AnyManifest] = {}
    for props in properties:
        if props.local_input_manifest_path:
            by_root[props.local_root_path] = _read_manifest_file(props.local_input_manifest_path)
        else:
            out(f"Root {props.root_path} contains no input manifest to sync.")
    out("\nStarting download...")
    bytes_total = sum(m.effective_total_size() for m in by_root.values())
    files_total = sum(len(m.paths) if isinstance(m, Manifest) else len(m.files)
                      for m in by_root.values())  # fmt: skip

    def report(p: TransferProgress) -> bool:
        for line in progress_lines(p, "Downloaded"):
            out(line)
        return True

    detector = LowTransferRateDetector(low_rate_threshold, low_rate_reports, then=report)
    overall = _Overall(bytes_total, files_total, detector)
    orch = DownloadOrchestrator(store, workers=workers, progress_interval=progress_interval)
    result = SyncInputsResult()
    for root, manifest in by_root.items():
        stats = orch.download_manifest(
            manifest, root, conflict_resolution=conflict_resolution, progress=overall
        )
        result.by_root[root] = stats
        overall.finish_root(stats)
        if stats.cancelled:
            break
    if detector.triggered:
        result.failed_low_rate = True
        out(
            f"openjd_fail: Input syncing failed due to successive low transfer rates "
            f"(< {low_rate_threshold / 1000} KB/s). The transfer rate was below the threshold "
            f"for the last {low_rate_reports} progress reports."
        )
    else:
        report(
            TransferProgress(
                bytes_done=overall.bytes_before, bytes_total=bytes_total,
                files_done=overall.files_before, files_total=files_total,
                rate=overall.bytes_before / max(time.monotonic() - overall.start, 1e-9),
                elapsed=time.monotonic() - overall.start,
            )
        )  # fmt: skip
    return result


# -- the upload step -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadManifestInfo:
    """One uploaded output manifest, as the agent reads it from the ``ja_upload:`` line
    (deadline ``models.py::UploadManifestInfo``): ``output_manifest_path`` (the key
    without ``{rootPrefix}/Manifests/``), ``output_manifest_hash`` (xxh128 of its bytes),
    ``source_path`` (the ``rootPath``)."""

    output_manifest_path: str
    output_manifest_hash: str
    source_path: str

    def to_dict(self) -> dict[str, str]:
        """``{"output_manifest_path", "output_manifest_hash", "source_path"}``."""
        return {
            "output_manifest_path": self.output_manifest_path,
            "output_manifest_hash": self.output_manifest_hash,
            "source_path": self.source_path,
        }


SESSION_ENV = (
    "DEADLINE_FARM_ID",
    "DEADLINE_QUEUE_ID",
    "DEADLINE_JOB_ID",
    "DEADLINE_STEP_ID",
    "DEADLINE_SESSIONACTION_ID",
    "DEADLINE_SESSIONACTION_START_TIME",
)
"""The environment the upload step needs (plus the optional ``DEADLINE_TASK_ID``)."""


def output_prefix_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The manifest path of this session action's output folder,
    ``{farm}/{queue}/{job}/{step}/[{task}/]{ts}_{sessionAction}``, from the variables the
    agent sets (:data:`SESSION_ENV`; no ``DEADLINE_TASK_ID`` means a chunked step), as the
    script's ``build_s3_manifest_path``. Raises :class:`VfsError` naming the variables
    missing or a start time that is not a number."""
    env = os.environ if environ is None else environ
    missing = [v for v in SESSION_ENV if not env.get(v)]
    if missing:
        raise VfsError(
            f"the output manifest key needs the environment variables {', '.join(missing)}",
            hint="the worker agent sets them for a task's session action",
        )
    try:
        start = float(env["DEADLINE_SESSIONACTION_START_TIME"])
    except ValueError:
        raise VfsError(
            f"DEADLINE_SESSIONACTION_START_TIME={env['DEADLINE_SESSIONACTION_START_TIME']!r} "
            "is not a number of seconds"
        ) from None
    return session_action_manifest_prefix(
        env["DEADLINE_FARM_ID"], env["DEADLINE_QUEUE_ID"], env["DEADLINE_JOB_ID"],
        env["DEADLINE_STEP_ID"], env.get("DEADLINE_TASK_ID") or None,
        env["DEADLINE_SESSIONACTION_ID"], start,
    )  # fmt: skip


def merge_base_manifests(
    properties: Sequence[WorkerManifestProperties],
) -> dict[str, Manifest | None]:
    """Per ``rootPath``, the merge of the entry's ``local_manifest_paths`` (``None`` when it
    has none): later files win per path; files sharing a base name count once, with the
    content of the last and the place of the first (deadline ``_read_manifests`` +
    ``merge_asset_manifests``). Format 2025-12-04-beta files are read as 2023-03-03
    (:func:`vfs.manifest.to_v1`). Raises :class:`ManifestError` naming a bad file."""
    bases: dict[str, Manifest | None] = {}
    for props in properties:
        by_name: dict[str, Manifest] = {}
        for path in props.local_manifest_paths:
            m = _read_manifest_file(path)
            by_name[os.path.basename(path)] = m if isinstance(m, Manifest) else to_v1(m)[0]
        merged: dict[str, ManifestPath] = {}
        for m in by_name.values():
            for entry in m.paths:
                merged[entry.path] = entry
        bases[props.root_path] = Manifest(paths=list(merged.values())) if by_name else None
    return bases


@dataclass(slots=True)
class OutputSnapshot:
    """The outputs of one root: the snapshot ``manifest`` and the ``manifest_file`` it was
    written to."""

    props: WorkerManifestProperties
    manifest: Manifest
    manifest_file: str


def snapshot_outputs(
    properties: Sequence[WorkerManifestProperties],
    bases: Mapping[str, Manifest | None],
    *,
    destination: str = SNAPSHOT_DIR,
    hash_cache: HashCache | None = None,
    out: Printer = print,
) -> list[OutputSnapshot]:
    """Per entry with output directories, the files under them (``glob.escape(dir) +
    "/**"``) new or changed against ``bases[rootPath]`` (all of them without a base),
    written to ``destination`` as ``output-{xxh128(localRoot)}-{ts}.manifest`` and
    announced with a ``ja_snapshot:`` line. Roots without outputs or without changes are
    reported and left out. Raises :class:`SnapshotError` naming an unreadable file."""
    found: list[OutputSnapshot] = []
    for props in properties:
        dirs = props.local_output_relative_directories()
        if not dirs:
            out(f"No output directories specified for {props.root_path}, skipping upload")
            continue
        include = [glob.escape(d) + "/**" for d in dirs]
        root = props.local_root_path
        base = bases.get(props.root_path)
        manifest = (
            snapshot_directory(root, include, hash_cache=hash_cache)
            if base is None
            else snapshot_changes(base, root, include, hash_cache=hash_cache)
        )
        if manifest is None:
            out(f"No change detected for root {props.root_path}")
            continue
        path = write_manifest_file(root, manifest, destination, SNAPSHOT_NAME)
        out(f"ja_snapshot: {json.dumps({'root': root, 'manifest': path})}")
        found.append(OutputSnapshot(props, manifest, path))
    return found


def upload_outputs(
    snapshots: Sequence[OutputSnapshot],
    store: ObjectStore,
    output_prefix: str,
    *,
    workers: int = 8,
    out: Printer = print,
) -> list[UploadManifestInfo]:
    """Upload each snapshot's CAS objects (read under its local root), then its manifest
    to ``Manifests/{output_prefix}/{xxh128(fsl + rootPath)}_output`` with the output
    metadata. Prints progress lines per object and a line per manifest. Raises
    :class:`UploadError` (files that failed, or the one cause that stops every upload)
    and the store's errors."""
    infos: list[UploadManifestInfo] = []
    total = sum(sum({p.hash: p.size for p in s.manifest.paths}.values()) for s in snapshots)
    files = sum(len({p.hash for p in s.manifest.paths}) for s in snapshots)
    start = time.monotonic()
    done = [0, 0]
    last = [0.0]

    def on_object(entry: ManifestPath, _uploaded: bool) -> None:
        done[0] += entry.size
        done[1] += 1
        now = time.monotonic()
        if now - last[0] >= 1.0 or done[1] == files:
            last[0] = now
            elapsed = max(now - start, 1e-9)
            p = TransferProgress(done[0], total, done[1], files, done[0] / elapsed, elapsed)
            for line in progress_lines(p, "Uploaded"):
                out(line)

    for snap in snapshots:
        props = snap.props
        n = len(snap.manifest.paths)
        out(f"Uploading {n} output file{'' if n == 1 else 's'} from {props.local_root_path} "
            f"to {store.uri}")  # fmt: skip
        summary: UploadSummary = upload_manifest_files(
            snap.manifest, props.local_root_path, store, workers=workers, on_object=on_object
        )
        name = f"{props.get_hashed_source_path()}_output"
        manifest_path = f"{output_prefix}/{name}"
        key = manifest_key(manifest_path)
        digest = upload_manifest(
            store, key, encode_manifest(snap.manifest), props.as_output_metadata()
        )
        out(f"Uploaded output manifest to {manifest_path} ({summary.uploaded} objects "
            f"uploaded, {summary.skipped} already in the store)")  # fmt: skip
        infos.append(UploadManifestInfo(manifest_path, digest, props.root_path))
    return infos


def sync_outputs(
    properties: Sequence[WorkerManifestProperties],
    store: ObjectStore,
    output_prefix: str,
    *,
    snapshot_dir: str = SNAPSHOT_DIR,
    hash_cache: HashCache | None = None,
    workers: int = 8,
    out: Printer = print,
) -> list[UploadManifestInfo]:
    """The upload step (see the module): merge, snapshot, upload, and the ``ja_upload:``
    line (``No output to upload`` when nothing changed). Returns what was uploaded."""
    bases = merge_base_manifests(properties)
    snapshots = snapshot_outputs(
        properties, bases, destination=snapshot_dir, hash_cache=hash_cache, out=out
    )
    if not snapshots:
        out("\nNo output to upload")
        return []
    out("\nStarting upload...")
    infos = upload_outputs(snapshots, store, output_prefix, workers=workers, out=out)
    out(f"ja_upload: {json.dumps([i.to_dict() for i in infos])}")
    return infos

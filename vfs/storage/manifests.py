"""Where manifests live in a job-attachments store, their metadata, upload/download and
output-manifest discovery — the layout of the official ``deadline`` package.

Keys here are **relative to the store root** (the queue's ``rootPrefix``), like every key
given to an :class:`~vfs.storage.base.ObjectStore`; the S3 object key is
``{rootPrefix}/{key}``. A *manifest path* is what the job and session actions store
(``inputManifestPath``, ``outputManifestPath``): the key without the leading
``Manifests/`` (deadline ``JobAttachmentS3Settings.add_root_and_manifest_folder_prefix``
re-adds ``{rootPrefix}/Manifests/``).

Format facts (reference/job-attachments.md §1.4, §4, §4.1, §5, §7.3; deadline 0.60.10 /
job attachments 0.1.5):

* input manifest: ``Manifests/{farmId}/{queueId}/Inputs/{guid}/{xxh128(rootPath)}_input``,
  ``guid`` = ``uuid4().hex`` (``models.py::JobAttachmentS3Settings.partial_manifest_prefix``,
  ``_utils.py::_generate_random_guid``, ``upload.py::S3AssetUploader._gather_upload_metadata``,
  which hashes the root path only), uploaded with no user metadata;
* output manifest: ``Manifests/{farmId}/{queueId}/{jobId}/{stepId}/{taskId}/{ts}_{sessionActionId}/
  {xxh128(fileSystemLocationName + rootPath)}_output``, or without ``{taskId}/`` for a
  chunked step (``partial_session_action_manifest_prefix[_without_task]``,
  ``asset_sync.py::_upload_output_manifest_to_s3``);
* ``{ts}`` = ``_utils.py::_float_to_iso_datetime_string``, reproduced with its microsecond
  truncation (:func:`format_session_action_time`);
* output manifest metadata (``models.py::ManifestProperties.as_output_metadata``) and its
  reader (``download.py::_get_asset_root_from_metadata``): :func:`manifest_metadata`,
  :func:`asset_root_from_metadata`;
* which output manifests count (``download.py::_get_tasks_manifests_keys_from_s3``):
  :func:`select_output_manifest_keys`.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import sys
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from vfs.errors import ManifestError
from vfs.hashing import hash_bytes, hash_string
from vfs.manifest import AnyManifest, decode_any_manifest
from vfs.storage.base import ObjectStore
from vfs.storage.layout import MANIFEST_FOLDER

INPUTS_FOLDER = "Inputs"
"""Folder of input manifests under ``Manifests/{farmId}/{queueId}/`` (deadline
``S3_INPUT_MANIFEST_FOLDER_NAME``)."""

INPUT_SUFFIX = "input"
OUTPUT_SUFFIX = "output"

META_ASSET_ROOT = "asset-root"
META_ASSET_ROOT_JSON = "asset-root-json"
META_FILE_SYSTEM_LOCATION_NAME = "file-system-location-name"

SESSION_ACTION_ID_RE = re.compile(r"(sessionaction-[^/-]+-[^/-]+)/")
"""Session action id inside an output manifest key (deadline
``_incremental_downloads/_manifest_s3_downloads.py::SESSION_ACTION_ID_FROM_KEY_RE``)."""

OUTPUT_MANIFEST_KEY_RE = re.compile(r"step-.*/.*/.*output.*")
"""Keys that count as output manifests (deadline ``_get_tasks_manifests_keys_from_s3``)."""

_EPOCH = datetime.datetime(1970, 1, 1)


# -- names and keys ---------------------------------------------------------------------------


def format_session_action_time(start_time: float) -> str:
    """The ``{ts}`` of an output manifest folder: ``start_time`` (seconds since the epoch)
    as UTC ``%Y-%m-%dT%H:%M:%S.%fZ``, e.g. ``2024-05-22T22:17:03.409012Z``.

    Reproduces deadline ``_utils.py::_float_to_iso_datetime_string`` exactly, including its
    quirk (reference §4, §12.7): the microseconds are ``int((t - int(t)) * 1000000)``, a
    truncated float product, so about half the inputs come out 1 µs below correct rounding
    (``1716416223.099999`` → ``….099998Z``). Raises ``ValueError`` for NaN, infinities and
    times outside years 1–9999.
    """
    if not math.isfinite(start_time):
        raise ValueError(f"not a finite time: {start_time!r}")
    seconds = int(start_time)
    microseconds = int((start_time - seconds) * 1000000)
    try:
        # deadline: utcfromtimestamp(seconds) + timedelta(microseconds=...), same result.
        moment = _EPOCH + datetime.timedelta(seconds=seconds, microseconds=microseconds)
    except OverflowError:
        raise ValueError(f"time {start_time!r} is out of range") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def compute_root_path_hash(file_system_location_name: str | None, root_path: str) -> str:
    """xxh128 of ``f"{file_system_location_name or ''}{root_path}"`` (UTF-8), 32 hex digits:
    the hash in an output manifest's name, which ``_incremental_downloads`` uses to match
    keys to the job's roots (reference §1.4; deadline
    ``asset_sync.py::_upload_output_manifest_to_s3``). The location name comes first, as
    in the hashed string; ``None`` or ``""`` for a root outside any storage-profile
    location (the hash of ``root_path`` alone). Raises ``UnicodeEncodeError`` for lone
    surrogates, as deadline does."""
    return hash_string(f"{file_system_location_name or ''}{root_path}")


def input_manifest_name(root_path: str) -> str:
    """``{xxh128(root_path)}_input``: the root path only, even with a file system location
    (deadline 0.1.5 ``S3AssetUploader._gather_upload_metadata``; older deadline hashed
    ``fsl + root``). ``root_path`` in its native form (``str(Path)``)."""
    return f"{hash_string(root_path)}_{INPUT_SUFFIX}"


def output_manifest_name(root_path: str, file_system_location_name: str | None = None) -> str:
    """``{compute_root_path_hash(file_system_location_name, root_path)}_output``."""
    return f"{compute_root_path_hash(file_system_location_name, root_path)}_{OUTPUT_SUFFIX}"


def new_manifest_guid() -> str:
    """A fresh input-manifest folder name: 32 hex digits (``uuid4`` without dashes)."""
    return uuid.uuid4().hex


def input_manifest_prefix(farm_id: str, queue_id: str, guid: str | None = None) -> str:
    """Manifest path of an input manifest's folder: ``{farmId}/{queueId}/Inputs/{guid}``
    (a new guid when not given; deadline uses one per asset root)."""
    return "/".join((farm_id, queue_id, INPUTS_FOLDER, guid or new_manifest_guid()))


def input_manifest_path(
    farm_id: str, queue_id: str, root_path: str, guid: str | None = None
) -> str:
    """The ``inputManifestPath`` of a root: ``{farmId}/{queueId}/Inputs/{guid}/{name}``."""
    return f"{input_manifest_prefix(farm_id, queue_id, guid)}/{input_manifest_name(root_path)}"


def session_action_manifest_prefix(
    farm_id: str,
    queue_id: str,
    job_id: str,
    step_id: str,
    task_id: str | None,
    session_action_id: str,
    start_time: float,
) -> str:
    """Manifest path of a session action's output folder:
    ``{farmId}/{queueId}/{jobId}/{stepId}/{taskId}/{ts}_{sessionActionId}``, without
    ``{taskId}/`` when ``task_id`` is ``None`` (a chunked step). ``start_time`` is the
    session action's start in seconds since the epoch (the worker's
    ``DEADLINE_SESSIONACTION_START_TIME``). Same as deadline's
    ``JobAttachmentS3Settings.partial_session_action_manifest_prefix[_without_task]``."""
    folder = f"{format_session_action_time(start_time)}_{session_action_id}"
    parts = [farm_id, queue_id, job_id, step_id]
    if task_id is not None:
        parts.append(task_id)
    return "/".join((*parts, folder))


def output_manifest_path(
    farm_id: str,
    queue_id: str,
    job_id: str,
    step_id: str,
    task_id: str | None,
    session_action_id: str,
    start_time: float,
    root_path: str,
    file_system_location_name: str | None = None,
) -> str:
    """The ``outputManifestPath`` of one root for one session action (see
    :func:`session_action_manifest_prefix` and :func:`output_manifest_name`)."""
    prefix = session_action_manifest_prefix(
        farm_id, queue_id, job_id, step_id, task_id, session_action_id, start_time
    )
    return f"{prefix}/{output_manifest_name(root_path, file_system_location_name)}"


def manifest_key(manifest_path: str) -> str:
    """Store key of a manifest path: ``Manifests/{manifest_path}``."""
    return f"{MANIFEST_FOLDER}/{manifest_path}"


def manifest_path_of_key(key: str) -> str:
    """Inverse of :func:`manifest_key`. Raises ``ValueError`` for a key outside
    ``Manifests/``."""
    head = f"{MANIFEST_FOLDER}/"
    if not key.startswith(head):
        raise ValueError(f"{key!r} is not under {head}")
    return key[len(head) :]


def output_manifest_prefix(
    farm_id: str,
    queue_id: str,
    job_id: str,
    step_id: str | None = None,
    task_id: str | None = None,
) -> str:
    """Store-key prefix of a job's, step's or task's output manifests, ending in ``/``:
    ``Manifests/{farmId}/{queueId}/{jobId}/[{stepId}/[{taskId}/]]`` (deadline
    ``download.py::_get_output_manifest_prefix``). Raises ``ValueError`` for a task without
    a step."""
    if task_id and not step_id:
        raise ValueError("a task id needs a step id to locate its outputs")
    parts = [MANIFEST_FOLDER, farm_id, queue_id, job_id]
    if step_id:
        parts.append(step_id)
        if task_id:
            parts.append(task_id)
    return "/".join(parts) + "/"


def session_action_id_from_key(key: str) -> str | None:
    """The session action id (``sessionaction-{id}-{n}``) in an output manifest key, or
    ``None`` (regex ``(sessionaction-[^/-]+-[^/-]+)/``, first match)."""
    m = SESSION_ACTION_ID_RE.search(key)
    return m.group(1) if m else None


# -- output manifest discovery ----------------------------------------------------------------


def select_output_manifest_keys(
    keys: Iterable[str], *, select_latest_per_task: bool = True
) -> list[str]:
    """The output manifest keys that count, from a listing of output manifest keys.

    Deadline ``download.py::_get_tasks_manifests_keys_from_s3`` (reference §7.3, §12.16):
    keys matching ``step-.*/.*/.*output.*`` are kept; a key with ``task-`` in it belongs to
    the folder ending at its first component containing ``task-``; keys without are a
    chunked step's and are all used. With ``select_latest_per_task`` only the keys in the
    lexicographically greatest sub-folder (``{ts}_{sessionActionId}``) of each task folder
    are used, else every key. Order: chunked-step keys in input order, then each task's
    keys, tasks in order of first appearance (deadline's order for a sorted listing).

    Deadline matches the full S3 key; vfs matches the store key (from ``Manifests/``),
    which differs only when the root prefix itself contains ``step-``, ``task-`` or
    ``output`` — deadline then misgroups keys, vfs does not.
    """
    chunked: list[str] = []
    by_task: dict[str, list[str]] = {}
    for key in keys:
        if not OUTPUT_MANIFEST_KEY_RE.search(key):
            continue
        if "task-" not in key:
            chunked.append(key)
            continue
        parts = key.split("/")
        for i, part in enumerate(parts):
            if "task-" in part:
                by_task.setdefault("/".join(parts[: i + 1]), []).append(key)
                break
    selected = chunked
    for folder, task_keys in by_task.items():
        if not select_latest_per_task:
            selected.extend(task_keys)
            continue
        depth = folder.count("/") + 1
        subfolders = {k.split("/")[depth] for k in task_keys if k.count("/") >= depth}
        if not subfolders:
            continue
        latest = f"{folder}/{max(subfolders)}/"
        selected.extend(k for k in task_keys if k.startswith(latest))
    return selected


def discover_output_manifest_keys(
    store: ObjectStore,
    farm_id: str,
    queue_id: str,
    job_id: str,
    step_id: str | None = None,
    task_id: str | None = None,
    *,
    select_latest_per_task: bool = True,
) -> list[str]:
    """Store keys of the output manifests of a job, a step or a task that count.

    Lists :func:`output_manifest_prefix` (keys sorted, as S3 lists them) and applies
    :func:`select_output_manifest_keys`. Returns ``[]`` when nothing is there (deadline's
    ``get_output_manifests_by_asset_root`` likewise returns nothing). Raises
    ``ValueError`` for a task without a step and the store's ``StoreError`` when the
    listing fails.
    """
    prefix = output_manifest_prefix(farm_id, queue_id, job_id, step_id, task_id)
    keys = sorted(key for key, _size in store.list_keys(prefix))
    return select_output_manifest_keys(keys, select_latest_per_task=select_latest_per_task)


def find_session_action_manifest_keys(
    store: ObjectStore,
    farm_id: str,
    queue_id: str,
    job_id: str,
    step_id: str,
    task_id: str,
    session_action_id: str,
) -> list[str]:
    """Store keys of one session action's output manifests.

    Deadline ``download.py::_get_manifests_by_session_action_id``: keys matching
    ``.*{session_action_id}.*output.*`` under the task's prefix, else (a chunked step)
    under the step's prefix.
    """
    pattern = re.compile(rf".*{re.escape(session_action_id)}.*output.*")
    for prefix in (
        output_manifest_prefix(farm_id, queue_id, job_id, step_id, task_id),
        output_manifest_prefix(farm_id, queue_id, job_id, step_id),
    ):
        keys = sorted(k for k, _ in store.list_keys(prefix) if pattern.search(k))
        if keys:
            return keys
    return []


# -- metadata, upload and download ------------------------------------------------------------


def manifest_metadata(
    root_path: str, file_system_location_name: str | None = None
) -> dict[str, str]:
    """User metadata of an output manifest (without the ``x-amz-meta-`` prefix).

    Deadline ``models.py::ManifestProperties.as_output_metadata`` (reference §4.1, §12.8):
    an ASCII ``root_path`` goes verbatim in ``asset-root``; otherwise both
    ``asset-root-json`` and ``asset-root`` hold ``json.dumps(root_path, ensure_ascii=True)``
    (with its quotes). ``file-system-location-name`` is added when non-empty.
    """
    metadata: dict[str, str] = {}
    if root_path.isascii():
        metadata[META_ASSET_ROOT] = root_path
    else:
        encoded = json.dumps(root_path, ensure_ascii=True)
        metadata[META_ASSET_ROOT_JSON] = encoded
        metadata[META_ASSET_ROOT] = encoded
    if file_system_location_name:
        metadata[META_FILE_SYSTEM_LOCATION_NAME] = file_system_location_name
    return metadata


def asset_root_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """The asset root recorded in a manifest's metadata, or ``None``.

    Deadline ``download.py::_get_asset_root_from_metadata``: ``json.loads`` of
    ``asset-root-json`` when present, else ``asset-root`` verbatim. Raises ``ValueError``
    when ``asset-root-json`` is not a JSON string.
    """
    if META_ASSET_ROOT_JSON in metadata:
        value = json.loads(metadata[META_ASSET_ROOT_JSON])
        if not isinstance(value, str):
            raise ValueError(f"{META_ASSET_ROOT_JSON} is not a JSON string: {value!r}")
        return value
    return metadata.get(META_ASSET_ROOT)


def upload_manifest(
    store: ObjectStore,
    key: str,
    manifest_bytes: bytes,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Store the encoded manifest at ``key`` with user ``metadata`` (``None``/``{}`` for an
    input manifest, :func:`manifest_metadata` for an output manifest; ContentType is left to
    the store's default, as deadline does). Returns the manifest hash, xxh128 of the bytes
    (the job's ``inputManifestHash``, reference §1.4). Raises the store's ``StoreError``."""
    store.put_bytes(key, manifest_bytes, metadata)
    return hash_bytes(manifest_bytes)


class DownloadedManifest(NamedTuple):
    """A manifest read from a store: the decoded ``manifest`` (a v1 ``Manifest`` or, for
    format 2025-12-04-beta, a ``ManifestV2``), the ``asset_root`` from its metadata
    (``None`` when it has none, as input manifests), and ``last_modified`` (seconds since
    the epoch, S3 ``LastModified``; the order of chronological merges)."""

    manifest: AnyManifest
    asset_root: str | None
    last_modified: float


def download_manifest(store: ObjectStore, key: str) -> DownloadedManifest:
    """Read and decode the manifest at ``key`` with its asset root and modification time.

    Deadline ``download.py::_get_asset_root_and_manifest_from_s3_with_last_modified``
    (which reads format 2023-03-03 only; vfs also reads 2025-12-04-beta, by its
    ``manifestVersion``, with ``vfs.manifest.decode_any_manifest``). Raises the store's
    ``StoreError``/``ObjectNotFoundError`` and :class:`ManifestError` (naming the object)
    for undecodable content or metadata.
    """
    data, metadata, last_modified = store.get_with_metadata(key)
    source = store.describe(key)
    try:
        asset_root = asset_root_from_metadata(metadata)
    except ValueError as e:
        raise ManifestError(f"bad {META_ASSET_ROOT_JSON} metadata: {e}", source=source) from None
    manifest = decode_any_manifest(data, source=source)
    return DownloadedManifest(manifest, asset_root, last_modified)


# -- the job's attachments ---------------------------------------------------------------------


class PathFormat(StrEnum):
    """``rootPathFormat`` of a manifest (deadline ``models.py::PathFormat``)."""

    POSIX = "posix"
    WINDOWS = "windows"

    @classmethod
    def host(cls) -> PathFormat:
        """This host's format: ``windows`` on Windows, else ``posix`` (macOS included)."""
        return cls.WINDOWS if sys.platform.startswith("win") else cls.POSIX


class FileSystem(StrEnum):
    """``attachments.fileSystem`` (deadline ``models.py::JobAttachmentsFileSystem``)."""

    COPIED = "COPIED"
    VIRTUAL = "VIRTUAL"


@dataclass(slots=True)
class ManifestProperties:
    """One asset root of a job (an entry of ``attachments.manifests``, reference §5).

    ``root_path``: the root on the submitting host, native separators.
    ``root_path_format``: ``posix`` or ``windows``.
    ``file_system_location_name``: set for roots under a LOCAL storage-profile location.
    ``input_manifest_path``/``input_manifest_hash``: the input manifest (when the root has
    inputs). ``output_relative_directories``: output directories relative to the root.
    """

    root_path: str
    root_path_format: PathFormat = field(default_factory=PathFormat.host)
    file_system_location_name: str | None = None
    input_manifest_path: str | None = None
    input_manifest_hash: str | None = None
    output_relative_directories: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The job dict entry, as deadline's ``ManifestProperties.to_dict``: keys in the order
        ``rootPath, fileSystemLocationName, rootPathFormat, inputManifestPath,
        inputManifestHash, outputRelativeDirectories``, optional ones omitted when empty."""
        out: dict[str, Any] = {"rootPath": self.root_path}
        if self.file_system_location_name:
            out["fileSystemLocationName"] = self.file_system_location_name
        out["rootPathFormat"] = PathFormat(self.root_path_format).value
        if self.input_manifest_path:
            out["inputManifestPath"] = self.input_manifest_path
        if self.input_manifest_hash:
            out["inputManifestHash"] = self.input_manifest_hash
        if self.output_relative_directories:
            out["outputRelativeDirectories"] = list(self.output_relative_directories)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ManifestProperties:
        """Parse a job dict entry. Raises ``ValueError`` for a missing ``rootPath`` or
        ``rootPathFormat`` or an unknown format, ``TypeError`` for mistyped values."""
        for name in ("rootPath", "rootPathFormat"):
            if name not in data:
                raise ValueError(f"attachments manifest entry has no {name!r}: {dict(data)!r}")
        dirs = data.get("outputRelativeDirectories")
        props = cls(
            root_path=data["rootPath"],
            root_path_format=PathFormat(data["rootPathFormat"]),
            file_system_location_name=data.get("fileSystemLocationName"),
            input_manifest_path=data.get("inputManifestPath"),
            input_manifest_hash=data.get("inputManifestHash"),
            output_relative_directories=None if dirs is None else list(dirs),
        )
        for name in ("root_path", "file_system_location_name", "input_manifest_path"):
            value = getattr(props, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string, not {value!r}")
        return props

    def as_output_metadata(self) -> dict[str, str]:
        """:func:`manifest_metadata` of this root. Deadline's method of the same name
        returns ``{"Metadata": <this dict>}`` (boto3 ``ExtraArgs``)."""
        return manifest_metadata(self.root_path, self.file_system_location_name)

    def output_manifest_name(self) -> str:
        """``{xxh128(fsl + rootPath)}_output`` for this root."""
        return output_manifest_name(self.root_path, self.file_system_location_name)


@dataclass(slots=True)
class Attachments:
    """The job's ``attachments`` (deadline ``models.py::Attachments``)."""

    manifests: list[ManifestProperties] = field(default_factory=list)
    file_system: FileSystem = FileSystem.COPIED

    def to_dict(self) -> dict[str, Any]:
        """``{"manifests": [...], "fileSystem": "COPIED" | "VIRTUAL"}``."""
        return {
            "manifests": [m.to_dict() for m in self.manifests],
            "fileSystem": FileSystem(self.file_system).value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attachments:
        """Parse a job's ``attachments``; a missing ``fileSystem`` means ``COPIED`` (as the
        worker agent's ``job_attachment_details.py``)."""
        return cls(
            manifests=[ManifestProperties.from_dict(m) for m in data.get("manifests", [])],
            file_system=FileSystem(data.get("fileSystem", FileSystem.COPIED.value)),
        )

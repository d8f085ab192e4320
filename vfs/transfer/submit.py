"""Preparing a job's attachments for submission: group the job's paths by asset root, hash
the inputs into one manifest per root, upload the data and the input manifests, and build
the ``attachments`` a ``CreateJob`` call takes.

The steps and their rules are those of deadline 0.60.10 / job attachments 0.1.5
(reference/job-attachments.md §1.4, §4, §5, §8.3):

* input directories are expanded with ``os.walk`` into their files (dot files included,
  links to directories not followed); an empty or missing directory becomes a referenced
  path (``client/api/_submit_job_bundle.py``);
* paths are made absolute with ``normpath(Path(p).absolute())`` (links not resolved); a
  missing input file becomes a referenced path (an error with ``require_paths_exist``), a
  directory given as an input file is an error (``upload.py::S3AssetManager.
  _get_asset_groups``);
* a path under a SHARED location of the storage profile is dropped; a path under a LOCAL
  location joins that location's group (the longest location path wins) whose manifest
  gets ``fileSystemLocationName``; any other path joins the group of its first component
  (``/`` on POSIX: one group); "under" is decided with both paths resolved
  (``_utils.py::_is_relative_to``);
* a group's ``rootPath`` is ``os.path.commonpath`` of its inputs, outputs and references
  (its parent when that is a file) — not the location's path; groups are sorted by
  ``rootPath``;
* manifest entries: ``path`` relative to the root (``/``-separated), hash, size and
  ``st_mtime_ns // 1000`` of the resolved file (``_process_input_path``);
* the input manifest goes to ``Manifests/{farm}/{queue}/Inputs/{uuid4 hex}/
  {xxh128(rootPath)}_input`` (a new folder per root) with no metadata; its hash is
  xxh128 of its canonical bytes;
* ``outputRelativeDirectories`` are ``str(Path(out).relative_to(rootPath))`` of the sorted
  outputs; ``rootPathFormat`` is the host's.

Unlike deadline, the data goes up before the manifest (a published manifest never names
missing data), each file is hashed again right before its upload, and vfs's hash cache
(size + nanosecond mtime) replaces deadline's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vfs.errors import VfsError
from vfs.hash_cache import HashCache
from vfs.manifest import Manifest, ManifestPath, encode_manifest
from vfs.pathmap.profiles import FileSystemLocationType, StorageProfile
from vfs.snapshot import ScannedFile, hash_scanned
from vfs.storage.base import ObjectStore
from vfs.storage.check_cache import S3CheckCache
from vfs.storage.manifests import (
    Attachments,
    FileSystem,
    ManifestProperties,
    PathFormat,
    input_manifest_path,
    manifest_key,
    upload_manifest,
)
from vfs.transfer.upload import UploadSummary, upload_manifest_files

log = logging.getLogger(__name__)


class MisconfiguredInputsError(VfsError):
    """Inputs are missing (with ``require_paths_exist``) or directories were given as files;
    the message lists them (deadline ``MisconfiguredInputsError``)."""


@dataclass(slots=True)
class AssetRootGroup:
    """The paths of one asset root: ``root_path`` (absolute, native), the LOCAL location's
    ``file_system_location_name`` (or ``None``), and absolute ``inputs`` (files),
    ``outputs`` (directories) and ``references`` (deadline ``models.py::AssetRootGroup``)."""

    root_path: str = ""
    file_system_location_name: str | None = None
    inputs: set[str] = field(default_factory=set)
    outputs: set[str] = field(default_factory=set)
    references: set[str] = field(default_factory=set)


def expand_input_directories(directories: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(files, references)``: the files under each directory (``os.walk``, normalised
    joins), and the directories that are missing or hold no file (they become referenced
    paths, as deadline's job submission does)."""
    files: set[str] = set()
    references: set[str] = set()
    for directory in directories:
        if not os.path.isdir(directory):
            log.warning("input directory %s does not exist: added to the referenced paths",
                        directory)  # fmt: skip
            references.add(directory)
            continue
        found = False
        for root, _, names in os.walk(directory):
            if names:
                found = True
                files.update(os.path.normpath(os.path.join(root, n)) for n in names)
        if not found:
            references.add(directory)
    return sorted(files), sorted(references)


def _absolute(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _is_relative_to(path: str, base: str) -> bool:
    """Whether ``path`` is ``base`` or under it, both with links resolved."""
    p, b = os.path.realpath(path), os.path.realpath(base)
    return p == b or p.startswith(b.rstrip(os.sep) + os.sep)


def group_asset_paths(
    input_paths: Iterable[str],
    output_paths: Iterable[str],
    referenced_paths: Iterable[str],
    storage_profile: StorageProfile | None = None,
    *,
    require_paths_exist: bool = False,
) -> list[AssetRootGroup]:
    """Group the job's paths by asset root (see the module for the rules).

    Raises :class:`MisconfiguredInputsError` listing directories given as input files and,
    with ``require_paths_exist``, missing inputs.
    """
    local: dict[str, str] = {}
    shared: dict[str, str] = {}
    if storage_profile is not None:
        for loc in storage_profile.file_system_locations:
            (local if loc.type is FileSystemLocationType.LOCAL else shared)[loc.path] = loc.name
    references = {p for p in referenced_paths if p}
    groups: dict[str, AssetRootGroup] = {}

    def group_of(path: str) -> AssetRootGroup | None:
        if any(_is_relative_to(path, s) for s in shared):
            return None
        matched: str | None = None
        for loc_path in local:
            longer = matched is None or len(loc_path) > len(matched)
            if longer and _is_relative_to(path, loc_path):
                matched = loc_path
        if matched is not None:
            key = matched
            if key not in groups:
                groups[key] = AssetRootGroup(file_system_location_name=local[matched])
        else:
            key = Path(path).parts[0]
            groups.setdefault(key, AssetRootGroup())
        return groups[key]

    missing: set[str] = set()
    directories: set[str] = set()
    for given in sorted({p for p in input_paths if p}):
        path = _absolute(given)
        if not os.path.exists(path):
            if require_paths_exist:
                missing.add(path)
            else:
                log.warning("input %s does not exist: added to the referenced paths", given)
                references.add(given)
            continue
        if os.path.isdir(path):
            directories.add(path)
            continue
        group = group_of(path)
        if group is not None:
            group.inputs.add(path)
    if missing or directories:
        text = "Job submission contains missing input files or directories specified as files."
        if missing:
            text += "\nMissing input files:\n\t" + "\n\t".join(sorted(missing))
        if directories:
            text += "\nDirectories classified as files:\n\t" + "\n\t".join(sorted(directories))
        raise MisconfiguredInputsError(
            text, hint="pass directories with --input-dir, and only existing files"
        )
    for given in sorted({p for p in output_paths if p}):
        group = group_of(_absolute(given))
        if group is not None:
            group.outputs.add(_absolute(given))
    for given in sorted(references):
        group = group_of(_absolute(given))
        if group is not None:
            group.references.add(_absolute(given))
    for group in groups.values():
        common = os.path.commonpath(sorted(group.inputs | group.outputs | group.references))
        group.root_path = os.path.dirname(common) if os.path.isfile(common) else common
    return sorted(groups.values(), key=lambda g: (g.root_path, g.file_system_location_name or ""))


def hash_group(
    group: AssetRootGroup,
    *,
    hash_cache: HashCache | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Manifest | None:
    """The input manifest of ``group`` (format 2023-03-03), ``None`` without inputs.
    Raises :class:`~vfs.errors.SnapshotError` naming a file that cannot be read."""
    if not group.inputs:
        return None
    files = []
    for path in sorted(group.inputs):
        real = os.path.realpath(path)
        st = os.stat(real)
        rel = Path(path).relative_to(group.root_path).as_posix()
        files.append(ScannedFile(rel, real, st.st_size, st.st_mtime_ns, bool(st.st_mode & 0o100)))
    hashes = hash_scanned(files, hash_cache=hash_cache, on_bytes=on_bytes)
    return Manifest(
        paths=[
            ManifestPath(f.path, str(h), f.size, f.mtime_ns // 1000)
            for f, h in zip(files, hashes, strict=True)
        ]
    )


@dataclass(slots=True)
class PreparedJob:
    """The outcome of :func:`prepare_job_attachments`: the job's ``attachments``, each
    root's input manifest (``None`` for a root with outputs only), and the upload
    summaries of the roots with inputs."""

    attachments: Attachments
    manifests: list[Manifest | None] = field(default_factory=list)
    uploads: list[UploadSummary] = field(default_factory=list)


def prepare_job_attachments(
    groups: Sequence[AssetRootGroup],
    store: ObjectStore,
    farm_id: str,
    queue_id: str,
    *,
    file_system: FileSystem = FileSystem.COPIED,
    hash_cache: HashCache | None = None,
    check_cache: S3CheckCache | None = None,
    workers: int = 8,
    on_bytes: Callable[[int], None] | None = None,
) -> PreparedJob:
    """Hash each group's inputs, upload their CAS objects and the input manifest, and
    return the job's ``attachments`` (one entry per group, in order).

    ``on_bytes(n)`` reports bytes hashed and then bytes of objects handled. Raises
    :class:`~vfs.errors.UploadError` (files that failed, or the one cause that stops every
    upload), :class:`~vfs.errors.SnapshotError` and the store's errors.
    """
    result = PreparedJob(Attachments(file_system=file_system))
    for group in groups:
        props = ManifestProperties(
            root_path=group.root_path,
            root_path_format=PathFormat.host(),
            file_system_location_name=group.file_system_location_name,
            output_relative_directories=[
                str(p.relative_to(group.root_path)) for p in sorted(map(Path, group.outputs))
            ],
        )
        manifest = hash_group(group, hash_cache=hash_cache, on_bytes=on_bytes)
        if manifest is not None:
            summary = upload_manifest_files(
                manifest, group.root_path, store, workers=workers, check_cache=check_cache,
                on_object=None if on_bytes is None else lambda e, _: on_bytes(e.size),
            )  # fmt: skip
            result.uploads.append(summary)
            path = input_manifest_path(farm_id, queue_id, group.root_path)
            props.input_manifest_path = path
            props.input_manifest_hash = upload_manifest(
                store, manifest_key(path), encode_manifest(manifest)
            )
        result.manifests.append(manifest)
        result.attachments.manifests.append(props)
    return result

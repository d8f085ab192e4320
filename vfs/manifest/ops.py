"""Operations on manifests: chronological merge, diff, diff manifests, filter, subtree.

Pure functions on plain data, no I/O. They accept both formats; where a v1 and a v2 manifest
meet, the v1 one is converted losslessly (:func:`~vfs.manifest.convert.to_v2`). Where deadline
has a counterpart the result matches it (named in each docstring); the v2 semantics follow
the seeds and rusty-attachments (``crates/model/src/merge.rs``, ``operations/diff.rs``,
``operations/compose.rs``, ``operations/subtree.rs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar, overload

from vfs.errors import ManifestError
from vfs.manifest.codec import canonical_path_key
from vfs.manifest.convert import AnyManifest, manifest_hash, to_v2
from vfs.manifest.globs import included
from vfs.manifest.merge import MergedEntry, MergedLayers, merge_layers
from vfs.manifest.model import Manifest, ManifestPath
from vfs.manifest.paths import path_problem
from vfs.manifest.v2 import (
    ManifestDirectoryPath,
    ManifestFilePath,
    ManifestV2,
    canonical_dirs,
    symlink_target_problem,
    validate_manifest_v2,
)

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

    T = TypeVar("T", bound=SupportsRichComparison)
else:
    T = TypeVar("T")

M = TypeVar("M", Manifest, ManifestV2)


def _as_v2(manifest: AnyManifest) -> ManifestV2:
    return manifest if isinstance(manifest, ManifestV2) else to_v2(manifest)


# -- the v2 snapshot of merged layers -----------------------------------------------------


def _as_file(entry: MergedEntry) -> ManifestFilePath:
    if isinstance(entry, ManifestPath):
        return ManifestFilePath.file(entry.path, entry.hash, entry.size, entry.mtime)
    return entry


def _snapshot(merged: MergedLayers, hash_alg: str, case_insensitive: bool) -> ManifestV2:
    """The tree of ``merged`` as a v2 snapshot (every directory listed; v1 entries become
    v2 files).

    With folded keys, paths are re-spelled so that each directory has one spelling (that of
    the entry that created it, or of its latest explicit listing) and each entry keeps the
    last spelling of its final component.
    """
    v2_files = [_as_file(e) for e, _ in merged.files.values()]
    if not case_insensitive:
        dirs = [ManifestDirectoryPath(path) for path, _ in merged.dirs.values()]
        return ManifestV2(files=v2_files, dirs=dirs, hash_alg=hash_alg)
    spelled: dict[str, str] = {}

    def respell(key: str, path: str) -> str:
        cut = key.rfind("/")
        if cut <= 0:
            return path
        return f"{spelled[key[:cut]]}/{path[path.rfind('/') + 1 :]}"

    for key in sorted(merged.dirs, key=len):  # parents before children
        spelled[key] = respell(key, merged.dirs[key][0])
    respelled = [
        ManifestFilePath(
            respell(key, f.path),
            hash=f.hash,
            size=f.size,
            mtime=f.mtime,
            runnable=f.runnable,
            chunkhashes=f.chunkhashes,
            symlink_target=f.symlink_target,
        )
        for key, f in zip(merged.files, v2_files, strict=True)
    ]
    dirs = [ManifestDirectoryPath(spelled[key]) for key in merged.dirs]
    return ManifestV2(files=respelled, dirs=dirs, hash_alg=hash_alg)


# -- merge ---------------------------------------------------------------------------------


@overload
def merge_manifests_chronologically(
    manifests: Sequence[tuple[T, Manifest]],
    *,
    case_insensitive: bool = False,
    sources: Sequence[str] | None = None,
) -> Manifest | None: ...


@overload
def merge_manifests_chronologically(
    manifests: Sequence[tuple[T, AnyManifest]],
    *,
    case_insensitive: bool = False,
    sources: Sequence[str] | None = None,
) -> AnyManifest | None: ...


def merge_manifests_chronologically(
    manifests: Sequence[tuple[T, AnyManifest]],
    *,
    case_insensitive: bool = False,
    sources: Sequence[str] | None = None,
) -> AnyManifest | None:
    """Merge ``(timestamp, manifest)`` pairs of one asset root, oldest first, last write wins.

    The pairs are sorted by timestamp (any comparable values, e.g. S3 ``LastModified``;
    stable, so equal timestamps keep their order), then layered by
    :func:`~vfs.manifest.merge.merge_layers` (the rules of the mount and of ``cache warm``).
    ``case_insensitive`` folds path keys with ``str.lower`` (Windows roots), keeping the last
    writer's spelling. ``sources`` names each pair's manifest (same order as ``manifests``)
    for error messages. Returns ``None`` for no manifests. Raises :class:`ManifestError`
    when the hash algorithms differ, or a manifest has a path that is both a file and a
    directory.

    All v1: deadline's semantics exactly (``download.py::merge_asset_manifests`` after the
    sort of ``_incremental_downloads``) wherever no path is both a file and a directory: one
    entry per path key, the latest one, in first-insertion order, ``totalSize`` recomputed;
    a single manifest is returned as is (unless keys are folded). Where a later file stands
    on an earlier directory (or a later entry beneath an earlier file), the earlier one goes
    with everything beneath it; deadline keeps both, which no file system can hold.

    Any v2: the result is a v2 snapshot of the layered tree (rusty ``compose_manifests``):
    every directory listed, delete markers consumed, never carried into the result (so
    ``parentManifestHash`` is dropped). v1 inputs take part as v2 snapshots.

    Grouping: merging ``[a, b]`` and then ``c`` always equals merging ``[a, b, c]``. Merging
    ``a`` with the merge of ``[b, c]`` gives the same result when no delete marker and no
    file/directory replacement has to reach past the regrouping (always true for v1 and for
    v2 snapshots without such conflicts), since a consumed delete marker cannot act later.
    """
    if not manifests:
        return None
    order = sorted(range(len(manifests)), key=lambda i: manifests[i][0])
    ordered = [manifests[i][1] for i in order]
    names = [sources[i] for i in order] if sources is not None else None
    merged = merge_layers(ordered, sources=names, case_insensitive=case_insensitive)
    hash_alg = ordered[0].hash_alg
    if all(isinstance(m, Manifest) for m in ordered):
        if len(ordered) == 1 and not case_insensitive:
            return ordered[0]
        paths = [e for e, _ in merged.files.values() if isinstance(e, ManifestPath)]
        return Manifest(paths=paths, hash_alg=hash_alg)
    return _snapshot(merged, hash_alg, case_insensitive)


# -- diff ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ManifestDiff:
    """What changed from a base manifest to a target manifest.

    ``new``, ``modified``, ``deleted``: file paths (symlinks included), like deadline's
    ``models.ManifestDiff`` and the JSON of ``deadline manifest diff``. ``new_dirs``,
    ``deleted_dirs``: directories (v2 only; empty when both sides are v1). Every list is
    sorted by UTF-16 code units, like manifest entries.
    """

    new: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    new_dirs: list[str] = field(default_factory=list)
    deleted_dirs: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        """True when nothing changed."""
        return not (self.new or self.modified or self.deleted or self.new_dirs or self.deleted_dirs)


def _sorted_paths(paths: Iterable[str]) -> list[str]:
    return sorted(paths, key=canonical_path_key)


def _snapshot_files(manifest: ManifestV2, role: str) -> dict[str, ManifestFilePath]:
    if manifest.is_diff:
        raise ManifestError(
            f"the {role} is a diff manifest; diff snapshots (apply the diff to its parent first)"
        )
    return {f.path: f for f in manifest.files}


def _present_dirs(manifest: ManifestV2) -> set[str]:
    return {d.path for d in canonical_dirs(manifest) if not d.deleted}


def _v2_modified(old: ManifestFilePath, new: ManifestFilePath, mode: str) -> bool:
    if old.symlink_target is not None or new.symlink_target is not None:
        return old.symlink_target != new.symlink_target
    if old.runnable != new.runnable:
        return True
    if mode == "fast":
        assert old.mtime is not None and new.mtime is not None
        return old.size != new.size or abs(new.mtime - old.mtime) > 1
    return (old.hash, old.chunkhashes) != (new.hash, new.chunkhashes)


def diff_manifests(
    base: AnyManifest, target: AnyManifest, *, mode: Literal["hash", "fast"] = "hash"
) -> ManifestDiff:
    """Compare two snapshots: which files are new, modified or deleted in ``target``.

    ``mode="hash"`` is deadline's ``_diff.py::compare_manifest``: a file is modified when its
    hash differs (size and mtime ignored). ``mode="fast"`` is deadline's
    ``_fast_file_list_to_manifest_diff`` (``target`` holding what ``stat`` reports): modified
    when the size differs, else when the mtimes (microseconds) differ by more than 1.
    Paths match exactly (case-sensitive), as in deadline.

    With a v2 side (the other is converted), a change of kind (file/symlink) or of the
    symlink target or of ``runnable`` is a modification in both modes, the hash comparison
    covers ``chunkhashes``, and ``new_dirs``/``deleted_dirs`` list directories (implicit
    ones included) that appeared or vanished. Raises :class:`ManifestError` if either side is
    a v2 diff manifest.
    """
    if isinstance(base, Manifest) and isinstance(target, Manifest):
        old1 = {p.path: p for p in base.paths}
        new1 = {p.path: p for p in target.paths}
        out = ManifestDiff()
        for path, entry in new1.items():
            prev = old1.get(path)
            if prev is None:
                out.new.append(path)
            elif mode == "fast":
                if prev.size != entry.size or abs(entry.mtime - prev.mtime) > 1:
                    out.modified.append(path)
            elif prev.hash != entry.hash:
                out.modified.append(path)
        out.deleted = [p for p in old1 if p not in new1]
    else:
        b2, t2 = _as_v2(base), _as_v2(target)
        old2 = _snapshot_files(b2, "base")
        new2 = _snapshot_files(t2, "target")
        out = ManifestDiff()
        for path, f in new2.items():
            prev2 = old2.get(path)
            if prev2 is None:
                out.new.append(path)
            elif _v2_modified(prev2, f, mode):
                out.modified.append(path)
        out.deleted = [p for p in old2 if p not in new2]
        old_dirs, new_dirs = _present_dirs(b2), _present_dirs(t2)
        out.new_dirs = list(new_dirs - old_dirs)
        out.deleted_dirs = list(old_dirs - new_dirs)
    out.new = _sorted_paths(out.new)
    out.modified = _sorted_paths(out.modified)
    out.deleted = _sorted_paths(out.deleted)
    out.new_dirs = sorted(out.new_dirs)
    out.deleted_dirs = sorted(out.deleted_dirs)
    return out


def create_diff_manifest(base: AnyManifest, target: AnyManifest) -> ManifestV2:
    """Build the v2 diff manifest that turns snapshot ``base`` into snapshot ``target``.

    ``parentManifestHash`` is the xxh128 of ``base``'s canonical bytes in its own format
    (:func:`~vfs.manifest.convert.manifest_hash`; a v1 base is hashed as v1). The diff holds
    every target file whose entry differs from the base in any field (content, size, mtime,
    runnable, kind) and a delete marker for every base file that is gone; every directory
    that appeared (so empty ones survive) and a delete marker for every directory that
    vanished. ``apply_diff(base, diff)`` therefore reproduces ``target`` exactly.
    Raises :class:`ManifestError` when either side is a diff, or ``base`` cannot be encoded
    (an empty v1 manifest).
    """
    parent_hash = manifest_hash(base)
    b2, t2 = _as_v2(base), _as_v2(target)
    old = _snapshot_files(b2, "base")
    new = _snapshot_files(t2, "target")
    files = [f for p, f in new.items() if old.get(p) != f]
    files += [ManifestFilePath.deletion(p) for p in old if p not in new]
    old_dirs, new_dirs = _present_dirs(b2), _present_dirs(t2)
    dirs = [ManifestDirectoryPath(p) for p in sorted(new_dirs - old_dirs)]
    dirs += [ManifestDirectoryPath(p, deleted=True) for p in sorted(old_dirs - new_dirs)]
    return ManifestV2(
        files=files, dirs=dirs, parent_manifest_hash=parent_hash, hash_alg=b2.hash_alg
    )


def apply_diff(
    parent: AnyManifest, diff: ManifestV2, *, check_parent_hash: bool = True
) -> ManifestV2:
    """Apply a v2 diff manifest to its parent snapshot, giving the new v2 snapshot.

    The diff is layered on the parent by :func:`~vfs.manifest.merge.merge_layers`: deletions
    first (a deleted directory goes with everything in it; markers for paths the parent
    lacks are ignored), then the diff's directories and files replace or add entries (rusty
    ``apply_diff_manifest``). With ``check_parent_hash`` the parent's manifest hash must
    equal ``diff.parent_manifest_hash``. Raises :class:`ManifestError` if ``diff`` is not a
    valid diff manifest, ``parent`` is a diff or has a path that is both a file and a
    directory, the hash algorithms differ, or the parent hash does not match.
    """
    if not diff.is_diff:
        raise ManifestError("apply_diff needs a diff manifest (one with parentManifestHash)")
    validate_manifest_v2(diff)
    if isinstance(parent, ManifestV2) and parent.is_diff:
        raise ManifestError("the parent is itself a diff manifest; apply it to its parent first")
    if parent.hash_alg != diff.hash_alg:
        raise ManifestError(f"cannot apply a {diff.hash_alg} diff to a {parent.hash_alg} manifest")
    if check_parent_hash:
        actual = manifest_hash(parent)
        if actual != diff.parent_manifest_hash:
            raise ManifestError(
                f"the diff was made against manifest {diff.parent_manifest_hash}, "
                f"not this one ({actual})",
                hint="apply it to the manifest it was computed from",
            )
    merged = merge_layers([parent, diff], sources=["the parent", "the diff"])
    return _snapshot(merged, parent.hash_alg, case_insensitive=False)


# -- filter and subtree --------------------------------------------------------------------


@overload
def filter_manifest(
    manifest: Manifest,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> Manifest: ...


@overload
def filter_manifest(
    manifest: ManifestV2,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> ManifestV2: ...


def filter_manifest(
    manifest: AnyManifest,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> AnyManifest:
    """Keep the entries matched by some ``include`` glob and by no ``exclude`` glob.

    Glob semantics are those of deadline's include/exclude (``glob.glob(recursive=True)``;
    see :mod:`vfs.manifest.globs`): ``*`` stays within a component, ``**`` spans
    components, dot-names are only matched by patterns that name them. ``include=None``
    keeps everything (deadline's default ``["**/*"]`` skips dot-files; pass it to mimic
    ``deadline manifest snapshot``). Returns a manifest of the same format, which may be
    empty. v2: files, symlinks and delete markers are tested by their path, explicit
    directories too (a directory stays implied while a kept entry lies inside it); a diff
    keeps its ``parentManifestHash`` (the result applies a subset of its changes).
    """
    if isinstance(manifest, Manifest):
        return Manifest(
            paths=[p for p in manifest.paths if included(p.path, include, exclude)],
            hash_alg=manifest.hash_alg,
            manifest_version=manifest.manifest_version,
        )
    return ManifestV2(
        files=[f for f in manifest.files if included(f.path, include, exclude)],
        dirs=[d for d in manifest.dirs if included(d.path, include, exclude)],
        parent_manifest_hash=manifest.parent_manifest_hash,
        hash_alg=manifest.hash_alg,
    )


def _normalize_prefix(prefix: str) -> str:
    stripped = prefix.strip("/")
    if stripped:
        problem = path_problem(stripped)
        if problem is not None:
            raise ManifestError(f"subtree prefix {prefix!r}: {problem}")
    return stripped


def subtree(manifest: M, prefix: str) -> M:
    """The part of ``manifest`` under directory ``prefix``, re-rooted there.

    ``prefix`` is a relative ``/``-separated directory (leading/trailing ``/`` ignored; ``""``
    is the whole manifest). Entries under ``prefix/`` keep the rest of their path; other
    entries, and the directory ``prefix`` itself, are left out (rusty ``subtree_manifest``).
    v2: a symlink whose target would climb out of the new root is left out too. Returns a
    manifest of the same format, which may be empty. Raises :class:`ManifestError` for an
    unsafe prefix or a v2 diff manifest (its parent hash would no longer match).
    """
    root = _normalize_prefix(prefix)
    cut = len(root) + 1 if root else 0
    start = root + "/" if root else ""
    if isinstance(manifest, Manifest):
        return Manifest(
            paths=[
                ManifestPath(p.path[cut:], p.hash, p.size, p.mtime)
                for p in manifest.paths
                if p.path.startswith(start)
            ],
            hash_alg=manifest.hash_alg,
            manifest_version=manifest.manifest_version,
        )
    if manifest.is_diff:
        raise ManifestError(
            "cannot take a subtree of a diff manifest; apply it to its parent first"
        )
    files: list[ManifestFilePath] = []
    for f in manifest.files:
        if not f.path.startswith(start):
            continue
        path = f.path[cut:]
        if f.symlink_target is not None and symlink_target_problem(path, f.symlink_target):
            continue
        files.append(
            ManifestFilePath(
                path,
                hash=f.hash,
                size=f.size,
                mtime=f.mtime,
                runnable=f.runnable,
                chunkhashes=f.chunkhashes,
                symlink_target=f.symlink_target,
            )
        )
    dirs = [ManifestDirectoryPath(d.path[cut:]) for d in manifest.dirs if d.path.startswith(start)]
    return ManifestV2(files=files, dirs=dirs, hash_alg=manifest.hash_alg)

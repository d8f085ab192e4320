"""Merging manifests as layers: the one merge rule of vfs.

:func:`merge_layers` is used by the mount (:mod:`vfs.mount.tree`), ``vfs cache warm`` (through
the mount's tree) and ``vfs manifest merge`` / :func:`~vfs.manifest.ops.apply_diff`.

Rules, for manifests of either format (mixed freely) applied oldest first:

* A later layer wins for the same path (exact string match, or ``str.lower`` keys when
  ``case_insensitive``). A replaced entry keeps its place in first-insertion order, as in
  deadline's ``download.py::merge_asset_manifests`` (reference §7.3), so where no path is
  both a file and a directory the v1 result equals deadline's byte for byte.
* Across manifests a later file replaces an earlier directory of the same path with
  everything beneath it, and a later directory (an explicit v2 directory, or any entry
  beneath a path) replaces an earlier file. deadline keeps both entries there, giving a
  manifest that no file system can hold; vfs gives the tree the later layer describes.
* Within one manifest a path that is both a file and a directory is a malformed manifest:
  :class:`~vfs.errors.ManifestError` names the manifest and the entry.
* v2 delete markers (diff manifests) act first within their layer: a deleted file removes
  that file, a deleted directory removes the directory and everything beneath it. Markers
  are consumed; nothing of them is left in the result.
* Directories are part of the tree: once created (explicitly, or as the parent of an entry)
  a directory stays, also when emptied, until a delete marker or a file replaces it. This is
  what makes :func:`~vfs.manifest.ops.apply_diff` reproduce a snapshot's empty directories.
* All inputs must share ``hashAlg``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vfs.errors import ManifestError
from vfs.manifest.model import Manifest, ManifestPath
from vfs.manifest.v2 import ManifestFilePath, ManifestV2

MergedEntry = ManifestPath | ManifestFilePath
"""A file of the merged tree: a v1 entry, or a v2 file or symlink (never a delete marker)."""


@dataclass(slots=True)
class MergedLayers:
    """The tree that layering some manifests gives.

    ``files``: ``{key: (winning entry, index of the manifest it came from)}`` in
    first-insertion order; the key is the entry's path (folded with ``str.lower`` when the
    merge was case-insensitive; the entry keeps the last writer's spelling).
    ``dirs``: every directory of the tree (implicit parents included, the root excluded),
    ``{key: (path as spelled, index of the manifest that created or last listed it)}``,
    parents before children. ``hash_alg``: the common hash algorithm (``None`` for no
    manifests).
    """

    files: dict[str, tuple[MergedEntry, int]]
    dirs: dict[str, tuple[str, int]]
    hash_alg: str | None


@dataclass(slots=True)
class _Layer:
    """One manifest, keyed: present files, explicit directories, every directory it implies
    (parents first), and its delete markers."""

    files: dict[str, MergedEntry]
    explicit: set[str]
    dirs: dict[str, str]
    deleted_files: list[str]
    deleted_dirs: list[str]


def _add_ancestors(key: str, path: str, into: dict[str, str]) -> None:
    """Add the missing proper ancestors of ``key`` (spelled as in ``path``) to ``into``,
    outermost first."""
    cut = key.rfind("/")
    if cut <= 0 or key[:cut] in into:
        return
    pcut = path.rfind("/")
    missing: list[tuple[int, int]] = []
    while cut > 0:
        if key[:cut] in into:
            break
        missing.append((cut, pcut))
        cut = key.rfind("/", 0, cut)
        pcut = path.rfind("/", 0, pcut)
    for k, p in reversed(missing):
        into[key[:k]] = path[:p]


def _read_layer(manifest: Manifest | ManifestV2, fold: Callable[[str], str] | None) -> _Layer:
    files: dict[str, MergedEntry] = {}
    explicit: dict[str, str] = {}
    deleted_files: list[str] = []
    deleted_dirs: list[str] = []
    if isinstance(manifest, Manifest):
        if fold is None:
            for p in manifest.paths:
                files[p.path] = p
        else:
            for p in manifest.paths:
                files[fold(p.path)] = p
    else:
        for d in manifest.dirs:
            key = fold(d.path) if fold else d.path
            if d.deleted:
                deleted_dirs.append(key)
            else:
                explicit[key] = d.path
        for f in manifest.files:
            key = fold(f.path) if fold else f.path
            if f.deleted:
                deleted_files.append(key)
            else:
                files[key] = f
    dirs: dict[str, str] = {}
    for key, path in explicit.items():
        _add_ancestors(key, path, dirs)
        dirs[key] = path
    for key, entry in files.items():
        _add_ancestors(key, entry.path, dirs)
    return _Layer(files, set(explicit), dirs, deleted_files, deleted_dirs)


def _inner_conflict(
    manifest: Manifest | ManifestV2, source: str, fold: Callable[[str], str] | None
) -> ManifestError:
    """The error for a manifest in which a path is both a file and a directory, naming the
    first entry (in listing order; v2: directories, then files) that clashes with an earlier
    one."""
    listed: list[tuple[str, bool]]
    if isinstance(manifest, Manifest):
        listed = [(p.path, False) for p in manifest.paths]
    else:
        listed = [(d.path, True) for d in manifest.dirs if not d.deleted]
        listed += [(f.path, False) for f in manifest.files if not f.deleted]
    seen_files: dict[str, str] = {}
    seen_dirs: dict[str, str] = {}  # directory key -> an entry that made it
    for path, is_dir in listed:
        key = fold(path) if fold else path
        clash, what = None, ""
        if not is_dir and key in seen_dirs:
            clash, what = path, f"a directory holding {seen_dirs[key]!r}, and a file"
        elif is_dir and key in seen_files:
            clash, what = path, "a file, and a directory in dirs"
        else:
            cut = key.rfind("/")
            while cut > 0:
                if key[:cut] in seen_files:
                    clash = seen_files[key[:cut]]
                    what = f"a file, and a directory holding {path!r}"
                    break
                cut = key.rfind("/", 0, cut)
        if clash is not None:
            return ManifestError(
                f"{clash!r} is both a file and a directory in this one manifest ({what})",
                source=source,
                entry=repr(path),
                hint="a manifest must describe a tree: fix or regenerate it",
            )
        if is_dir:
            seen_dirs.setdefault(key, path)
        else:
            seen_files[key] = path
        cut = key.rfind("/")
        while cut > 0:
            seen_dirs.setdefault(key[:cut], path)
            cut = key.rfind("/", 0, cut)
    # Unreachable for a layer whose keys clash; kept as a safe fallback.
    return ManifestError(
        "a path is both a file and a directory in this one manifest", source=source
    )


def _remove_subtrees(
    roots: set[str], files: dict[str, tuple[MergedEntry, int]], dirs: dict[str, tuple[str, int]]
) -> None:
    """Remove the directories ``roots`` and every file and directory beneath them."""

    def beneath(key: str) -> bool:
        cut = key.rfind("/")
        while cut > 0:
            if key[:cut] in roots:
                return True
            cut = key.rfind("/", 0, cut)
        return False

    for key in roots:
        dirs.pop(key, None)
    for key in [k for k in files if beneath(k)]:
        del files[key]
    for key in [k for k in dirs if beneath(k)]:
        del dirs[key]


def merge_layers(
    manifests: Sequence[Manifest | ManifestV2],
    *,
    sources: Sequence[str] | None = None,
    case_insensitive: bool = False,
) -> MergedLayers:
    """Apply ``manifests`` oldest first as layers and return the resulting tree.

    The rules are those of this module's docstring: a later layer wins per path, across
    manifests a file replaces a directory (with its content) and a directory replaces a
    file, v2 delete markers remove entries. ``sources`` names each manifest (file path or
    URI) for error messages; ``case_insensitive`` folds path keys with ``str.lower``.

    Raises :class:`ManifestError` when the manifests use different hash algorithms, or when
    within one manifest a path is both a file and a directory (naming that manifest and the
    entry).
    """
    algs = {m.hash_alg for m in manifests}
    if len(algs) > 1:
        raise ManifestError(f"cannot merge manifests with different hashAlg: {sorted(algs)}")
    names = list(sources) if sources is not None else [f"#{i}" for i in range(len(manifests))]
    fold: Callable[[str], str] | None = str.lower if case_insensitive else None
    files: dict[str, tuple[MergedEntry, int]] = {}
    dirs: dict[str, tuple[str, int]] = {}
    for index, manifest in enumerate(manifests):
        layer = _read_layer(manifest, fold)
        if not layer.files.keys().isdisjoint(layer.dirs.keys()):
            raise _inner_conflict(manifest, names[index], fold)
        if files or dirs:
            for key in layer.deleted_files:
                files.pop(key, None)
            for key in layer.dirs:
                files.pop(key, None)  # a directory replaces a file
            gone = {k for k in layer.deleted_dirs if k in dirs}
            gone.update(k for k in layer.files if k in dirs)  # a file replaces a directory
            if gone:
                _remove_subtrees(gone, files, dirs)
        for key, path in layer.dirs.items():
            if key in layer.explicit or key not in dirs:
                dirs[key] = (path, index)
        for key, entry in layer.files.items():
            files[key] = (entry, index)
    return MergedLayers(files, dirs, next(iter(algs)) if algs else None)

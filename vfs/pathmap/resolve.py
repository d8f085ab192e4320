"""Resolving manifest-relative paths to absolute local paths, through path mapping.

As deadline's output download does (reference §6.3; ``_job_download_helpers.py::
_transform_manifests_to_absolute_paths`` and ``_incremental_downloads``): each manifest path
(``/``-separated, relative to the asset root) is joined to the root with the *source*
host's path rules (``ntpath`` for a Windows root, ``posixpath`` otherwise), normalised, and
mapped with ``strict_transform``; a path no rule maps is reported as unmapped, not
downloaded. Without an applier the joined path is used as it is (the root is local).
"""

from __future__ import annotations

import ntpath
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from vfs.pathmap.applier import PathMappingApplier
from vfs.storage.manifests import PathFormat


class HasPath(Protocol):
    """A manifest entry: v1 ``ManifestPath``, v2 ``ManifestFilePath`` or
    ``ManifestDirectoryPath``."""

    @property
    def path(self) -> str: ...


E = TypeVar("E", bound=HasPath)
E_co = TypeVar("E_co", bound=HasPath, covariant=True)


@dataclass(frozen=True, slots=True)
class ResolvedManifestPath(Generic[E_co]):
    """A manifest entry and the absolute local path it goes to.

    ``entry`` is the manifest's entry (v1 ``ManifestPath``, v2 ``ManifestFilePath`` or
    ``ManifestDirectoryPath``), ``local_path`` an absolute path of this host,
    ``source_path`` the absolute path on the source host (root joined with the entry's
    path). Immutable, so covariant in the entry type: resolved files are also resolved
    entries of any wider type."""

    entry: E_co
    local_path: str
    source_path: str


@dataclass(frozen=True, slots=True)
class UnmappedPath(Generic[E]):
    """A manifest entry whose absolute source path no rule maps."""

    entry: E
    absolute_source_path: str


@dataclass(slots=True)
class ResolvedManifestPaths(Generic[E]):
    """The result of :func:`resolve_manifest_paths`: ``resolved`` and ``unmapped`` entries,
    in manifest order."""

    resolved: list[ResolvedManifestPath[E]] = field(default_factory=list)
    unmapped: list[UnmappedPath[E]] = field(default_factory=list)


def join_source_path(root_path: str, relative: str, fmt: PathFormat) -> str:
    """``normpath(join(root_path, relative))`` with the rules of format ``fmt``
    (``ntpath`` for ``windows``, ``posixpath`` for ``posix``)."""
    if fmt is PathFormat.WINDOWS:
        return ntpath.normpath(ntpath.join(root_path, relative))
    return posixpath.normpath(posixpath.join(root_path, relative))


def resolve_manifest_paths(
    entries: Iterable[E],
    root_path: str,
    source_format: PathFormat,
    applier: PathMappingApplier | None,
) -> ResolvedManifestPaths[E]:
    """Resolve every entry's path (``entry.path``: manifest-relative, ``/``-separated)
    under ``root_path`` (the asset root as written on the source host, in
    ``source_format``) to a local absolute path with ``applier.strict_transform``.

    Entries no rule maps go to ``unmapped``. With ``applier=None`` the joined source path
    is the local path. Nothing is checked on disk here: the downloader checks that each
    destination stays inside its root.
    """
    out: ResolvedManifestPaths[E] = ResolvedManifestPaths()
    for entry in entries:
        source = join_source_path(root_path, entry.path, source_format)
        if applier is None:
            out.resolved.append(ResolvedManifestPath(entry, source, source))
            continue
        local = applier.try_transform(source)
        if local is None:
            out.unmapped.append(UnmappedPath(entry, source))
        else:
            out.resolved.append(ResolvedManifestPath(entry, local, source))
    return out

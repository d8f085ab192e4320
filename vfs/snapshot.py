"""Snapshot a directory into a manifest, the way ``deadline manifest snapshot`` does.

Format facts (reference/job-attachments.md §1.1, §1.4, §8.1; deadline ``_glob.py``,
``api/manifest.py``):

* files are selected with Python's recursive ``glob`` from the absolute root, include
  patterns default to ``**/*``, exclude patterns are subtracted, only regular files count
  (``os.path.isfile``, symlinks followed); ``*`` and ``**`` do not match names starting with
  ``.``, so dot files and everything under dot directories are left out;
* entries: ``path`` relative to the root, ``/``-separated; ``size`` = ``st_size``;
  ``mtime`` = ``st_mtime_ns // 1000`` (microseconds); ``hash`` = xxh128 of the content;
* the file is named ``{name}-{xxh128(root as given)}-{local time %Y-%m-%dT%H-%M-%S}.manifest``
  where ``name`` defaults to the root with ``/``, ``\\`` and ``:`` replaced by ``_`` and one
  leading ``_`` removed.
"""

from __future__ import annotations

import datetime
import glob
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from vfs.errors import SnapshotError
from vfs.hashing import hash_file, hash_string
from vfs.manifest import Manifest, ManifestPath, encode_manifest

DEFAULT_INCLUDE = ("**/*",)


def glob_files(
    root: str, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> list[str]:
    """Absolute, normalised paths of the regular files under ``root`` the globs select.

    Semantics are deadline's ``_glob_paths`` (see the module docstring). The result is
    sorted for determinism.
    """
    base = os.path.abspath(root)

    def match(patterns: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for pattern in patterns:
            for p in glob.glob(os.path.join(base, pattern), recursive=True):
                if os.path.isfile(p):
                    found.add(os.path.normpath(p))
        return found

    selected = match(include or DEFAULT_INCLUDE)
    if exclude:
        selected -= match(exclude)
    return sorted(selected)


def _entry(abs_root: str, path: str) -> ManifestPath:
    st = os.stat(path)
    rel = PurePosixPath(*Path(path).relative_to(abs_root).parts).as_posix()
    return ManifestPath(rel, hash_file(path), st.st_size, st.st_mtime_ns // 1000)


def snapshot_directory(
    root: str,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    workers: int | None = None,
    on_file: Callable[[ManifestPath], None] | None = None,
) -> Manifest | None:
    """Hash the files of ``root`` selected by the globs into a manifest.

    Returns ``None`` when no file is selected (an empty manifest cannot be written).
    ``workers`` threads hash in parallel (default: ``min(32, cpus + 4)``); ``on_file`` is
    called after each file is hashed. Raises :class:`SnapshotError` naming the root when it
    is not a directory, or the file when one cannot be read.
    """
    if not os.path.isdir(root):
        raise SnapshotError(f"snapshot root {root} is not a directory")
    abs_root = os.path.abspath(root)
    files = glob_files(abs_root, include, exclude)
    if not files:
        return None

    def one(path: str) -> ManifestPath:
        try:
            entry = _entry(abs_root, path)
        except OSError as e:
            raise SnapshotError(
                f"cannot read {path}: {e.strerror}", hint="check the file's permissions"
            ) from None
        if on_file is not None:
            on_file(entry)
        return entry

    with ThreadPoolExecutor(max_workers=workers) as pool:
        entries = list(pool.map(one, files))
    return Manifest(paths=entries)


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
    root: str, manifest: Manifest, destination: str, name: str | None = None
) -> str:
    """Write ``manifest`` under ``destination`` with the official file name; return its path.

    The file holds exactly the canonical bytes (no trailing newline). Raises
    :class:`SnapshotError` when the destination cannot be written.
    """
    path = os.path.join(destination, manifest_file_name(root, name))
    data = encode_manifest(manifest)
    try:
        os.makedirs(destination, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise SnapshotError(f"cannot write manifest {path}: {e.strerror}") from None
    return path

"""Local-disk guards of a download: destinations inside their root, free space, the umask,
and temporary files that never show a partial file under a final name."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from vfs.errors import VfsError


class DownloadError(VfsError):
    """A download was refused or failed. ``path`` is the local path concerned, if any."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        self.path = path
        super().__init__(message, hint=hint)


class PathEscapeError(DownloadError):
    """A destination would land outside its root (``..`` or a symbolic link)."""


class InsufficientSpaceError(DownloadError):
    """The destination file system has less free space than the download needs."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_inside_root(dest: str, root: str) -> None:
    """Refuse ``dest`` unless it stays inside ``root`` once symbolic links are resolved.

    The directory that will hold ``dest`` is resolved (``realpath``: existing components
    through their links, the rest lexically, ``..`` included) and must be ``root`` (resolved)
    or below it, as deadline's ``_ensure_paths_within_directory`` requires (reference §7.1
    step 1). The final component is not followed: a download replaces a link there rather
    than writing through it. Raises :class:`PathEscapeError` naming both paths.
    """
    real_root = os.path.realpath(root)
    parent = os.path.realpath(os.path.dirname(os.path.abspath(dest)))
    lexical = os.path.normpath(os.path.abspath(dest))
    if not _inside(parent, real_root) or not _inside(
        lexical, os.path.normpath(os.path.abspath(root))
    ):
        raise PathEscapeError(
            f"refusing to write {dest}: it resolves to "
            f"{os.path.join(parent, os.path.basename(lexical))}, outside the destination "
            f"root {root}",
            path=dest,
            hint="the manifest path has '..' or a directory on the way is a symbolic link "
            "leaving the root; remove the link or choose another destination",
        )


def check_free_space(directory: str, needed: int, available: int | None = None) -> None:
    """Refuse a download of ``needed`` bytes into ``directory`` when the file system has
    fewer free bytes (``shutil.disk_usage().free`` of the nearest existing ancestor, or
    ``available`` when given). Raises :class:`InsufficientSpaceError` with both figures.

    deadline's worker makes the same check before a COPIED download
    (``AssetSync._ensure_disk_capacity``, reference §7.1).
    """
    if available is None:
        probe = os.path.abspath(directory)
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        available = shutil.disk_usage(probe).free
    if needed > available:
        raise InsufficientSpaceError(
            f"not enough free space in {directory}: the download needs {needed} bytes, "
            f"{available} are available",
            path=directory,
            hint="free some space or choose another destination",
        )


def make_temp_file(dest: str) -> tuple[int, str]:
    """Create an empty temporary file beside ``dest`` (same directory, hence the same file
    system, so a rename is atomic): ``(fd, path)``, named ``.{name}.vfs-XXXXXXXX.part``."""
    directory, name = os.path.split(dest)
    return tempfile.mkstemp(prefix=f".{name[:100]}.vfs-", suffix=".part", dir=directory)


def remove_quietly(path: str) -> None:
    """Remove ``path`` if it exists, ignoring errors (cleanup of a temporary file)."""
    with contextlib.suppress(OSError):
        os.unlink(path)

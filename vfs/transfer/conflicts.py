"""What to do when a download's destination file exists: :class:`ConflictResolution`, and
placing a finished temporary file under its final name atomically.

Semantics of deadline's ``download.py::download_file`` and ``_get_new_copy_file_path``
(reference/job-attachments.md §7.1 step 4): ``skip`` leaves the existing file, ``overwrite``
replaces it, ``create_copy`` writes ``{stem} ({n}){suffix}`` for the first free n = 1, 2, …
in the same directory (``Path.stem``/``Path.suffix``: ``archive.tar.gz`` →
``archive.tar (1).gz``). deadline reserves the copy's name with ``open(name, "x")``; vfs
places the finished file with ``link(2)``, which fails with ``EEXIST`` exactly when
``O_EXCL`` would, so the name is taken atomically and never shows an empty placeholder
(an ``O_EXCL`` placeholder is used where hard links are unsupported).
"""

from __future__ import annotations

import errno
import os
from enum import StrEnum
from pathlib import PurePath

MAX_COPIES = 10_000
"""Give up after this many ``name (n).ext`` candidates."""


class ConflictResolution(StrEnum):
    """deadline's ``FileConflictResolution`` (minus the CLI's ``NOT_SELECTED`` prompt)."""

    SKIP = "skip"
    OVERWRITE = "overwrite"
    CREATE_COPY = "create_copy"


def copy_name(path: str, n: int) -> str:
    """``path`` with `` (n)`` inserted before its last suffix: ``d/a.txt`` → ``d/a (1).txt``."""
    p = PurePath(path)
    return str(p.with_name(f"{p.stem} ({n}){p.suffix}"))


def place_exclusive(tmp: str, dest: str) -> bool:
    """Give the file ``tmp`` the name ``dest`` only if ``dest`` does not exist.

    Returns ``True`` when placed (``tmp`` is gone), ``False`` when ``dest`` exists
    (``tmp`` is kept). Raises ``OSError`` for other failures.
    """
    try:
        os.link(tmp, dest, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        # No hard links here: reserve the name with O_EXCL, then replace the placeholder.
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        os.close(fd)
        os.replace(tmp, dest)
        return True
    os.unlink(tmp)
    return True


def place_copy(tmp: str, dest: str) -> str:
    """Place ``tmp`` as the first free ``dest (n)`` copy name; return the name used.

    Safe against other threads and processes doing the same: each name is taken with one
    atomic exclusive operation. Raises ``FileExistsError`` after :data:`MAX_COPIES`.
    """
    for n in range(1, MAX_COPIES + 1):
        candidate = copy_name(dest, n)
        if place_exclusive(tmp, candidate):
            return candidate
    raise FileExistsError(errno.EEXIST, f"{MAX_COPIES} copies of the file exist", dest)

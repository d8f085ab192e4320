"""Defaults shared by the command groups and the layers under them.

Kept free of heavy imports: every ``vfs`` command reads these, and commands that do not
mount must not load the FUSE stack (pyfuse3, trio) just to learn where the cache is.
"""

from __future__ import annotations

import os

import platformdirs

CACHE_DIR_ENV = "VFS_CACHE_DIR"
"""Environment variable naming the node's shared cache directory."""

DEFAULT_CACHE_SIZE = "20G"
"""Bound of the block cache when none is given (``vfs mount``, ``vfs cache warm``)."""


def default_cache_dir() -> str:
    """The node's shared cache: ``$VFS_CACHE_DIR`` or the user cache dir (``~/.cache/vfs``)."""
    return os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir("vfs")

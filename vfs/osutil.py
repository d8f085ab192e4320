"""Small facts about the local process and file system, shared by the store and transfers."""

from __future__ import annotations

import os


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status`` on Linux; else
    set and restored, which is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

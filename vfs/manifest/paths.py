"""Validation of the relative paths a manifest may hold.

A manifest path must stay inside its asset root: deadline refuses such paths only when it
downloads (``_ensure_paths_within_directory``, reference §7.1); vfs refuses them as soon as a
manifest is decoded, so that no consumer (mount, download) can be tricked.
"""

from __future__ import annotations


def path_problem(path: str) -> str | None:
    """Return why ``path`` is not a safe relative manifest path, or ``None`` when it is.

    Refused: empty paths, absolute paths (leading ``/``), a trailing ``/``, empty components
    (``a//b``), ``.`` and ``..`` components, and NUL characters.
    """
    if not path:
        return "the path is empty"
    if path[0] == "/":
        return "the path is absolute (starts with '/')"
    if "\x00" in path:
        return "the path contains a NUL character"
    if path[-1] == "/" or "//" in path:
        return "the path has an empty component ('//' or a trailing '/')"
    wrapped = f"/{path}/"
    if "/../" in wrapped:
        return "the path has a '..' component and could escape the asset root"
    if "/./" in wrapped:
        return "the path has a '.' component"
    return None

"""Glob patterns on manifest paths, with the semantics deadline's include/exclude globs have.

deadline's ``_glob.py::_match_files_with_pattern`` runs ``glob.glob(os.path.join(root,
pattern), recursive=True)`` and keeps regular files. This module decides the same thing for a
relative manifest path without touching the disk (Python 3.11 ``glob`` rules, POSIX):

* the pattern is split on ``/``; ``.`` and empty components are ignored;
* a ``**`` component matches zero or more whole components (one or more when it is the
  last component, since the directory itself is not a file); it never matches a component
  that starts with ``.`` (``glob`` skips hidden names under ``**``);
* a component with ``*``, ``?`` or ``[`` matches one component with ``fnmatch`` rules
  (case-sensitive); unless the pattern component starts with ``.``, it does not match a
  name starting with ``.`` (reference §12 quirk 11: globbing skips dot-files);
* any other component matches itself exactly (hidden names included);
* a pattern with a ``..`` component or a trailing ``/`` matches no file.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from functools import lru_cache

_MAGIC = frozenset("*?[")


@lru_cache(maxsize=256)
def _compile(pattern: str) -> tuple[str, ...] | None:
    if pattern.endswith("/"):
        return None
    parts = tuple(p for p in pattern.split("/") if p not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


def _component_matches(pattern: str, name: str) -> bool:
    if _MAGIC.isdisjoint(pattern):
        return pattern == name
    if name[:1] == "." and pattern[:1] != ".":
        return False
    return fnmatchcase(name, pattern)


def _match(pat: tuple[str, ...], pi: int, parts: list[str], ci: int) -> bool:
    while pi < len(pat):
        p = pat[pi]
        if p == "**":
            if pi == len(pat) - 1:
                rest = parts[ci:]
                return bool(rest) and all(c[:1] != "." for c in rest)
            # Zero or more non-hidden directories, then the rest of the pattern.
            j = ci
            while True:
                if _match(pat, pi + 1, parts, j):
                    return True
                if j >= len(parts) - 1 or parts[j][:1] == ".":
                    return False
                j += 1
        if ci >= len(parts) or not _component_matches(p, parts[ci]):
            return False
        pi += 1
        ci += 1
    return ci == len(parts)


def glob_matches(path: str, pattern: str) -> bool:
    """Whether ``glob.glob(root/pattern, recursive=True)`` would yield the file ``root/path``.

    ``path`` is a relative, ``/``-separated manifest path; ``pattern`` a relative glob.
    """
    pat = _compile(pattern)
    if pat is None:
        return False
    return _match(pat, 0, path.split("/"), 0)


def included(path: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    """deadline's include/exclude rule: matched by some include pattern (``None`` = all
    paths) and by no exclude pattern."""
    if include is not None and not any(glob_matches(path, p) for p in include):
        return False
    return not (exclude and any(glob_matches(path, p) for p in exclude))

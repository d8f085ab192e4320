"""Applying path mapping rules: :class:`PathMappingApplier`.

Semantics of deadline's ``_path_mapping.py::_PathMappingRuleApplier`` (reference §6.3):
source paths are split into components the way ``PurePosixPath`` or ``PureWindowsPath`` do
(so on Windows ``C:/a`` and ``C:\\a`` are the same, the drive component is ``C:\\``, a UNC
share ``\\\\server\\share\\`` is one component, and repeated or trailing separators do not
count); Windows components are compared lower-cased (case-insensitive, case-preserving in the
remainder); the rule with the longest matching prefix, counted in components, wins; the
result is the rule's destination joined with the remaining components as a path of this host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from vfs.errors import VfsError
from vfs.pathmap.profiles import PathMappingRule
from vfs.storage.manifests import PathFormat


class UnmappedPathError(VfsError):
    """No path mapping rule applies to a path (:meth:`PathMappingApplier.strict_transform`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"no path mapping rule applies to {path!r}",
            hint="add a rule (or a storage profile location) covering it",
        )


def split_source_path(path: str, fmt: PathFormat) -> tuple[str, ...]:
    """The components of ``path`` in format ``fmt`` (``PurePosixPath``/``PureWindowsPath``
    ``.parts``: ``("/", "a", "b")``, ``("C:\\\\", "a")``, ``("\\\\\\\\srv\\\\share\\\\", "a")``)."""
    return (PureWindowsPath(path) if fmt is PathFormat.WINDOWS else PurePosixPath(path)).parts


class PathMappingApplier:
    """Maps source paths with a list of rules that share one source path format.

    Built once (a trie of rule components), then :meth:`transform` costs one dict lookup
    per component. Raises :class:`VfsError` when the rules mix formats.
    """

    def __init__(self, rules: Iterable[PathMappingRule]) -> None:
        self.rules = list(rules)
        formats = {r.source_path_format for r in self.rules}
        if len(formats) > 1:
            raise VfsError(
                "path mapping rules mix source path formats "
                + ", ".join(sorted(f.value for f in formats)),
                hint="use rules of one source format at a time",
            )
        self.source_path_format: PathFormat | None = formats.pop() if formats else None
        self._normalize: Callable[[str], str] = (
            str.lower if self.source_path_format is PathFormat.WINDOWS else _identity
        )
        self._trie: dict[str, Any] = {}
        for rule in self.rules:
            node = self._trie
            for part in split_source_path(rule.source_path, rule.source_path_format):
                node = node.setdefault(self._normalize(part), {})
            # "." is never a component (pathlib drops it), so it can hold the destination.
            node["."] = rule.destination_path

    def try_transform(self, path: str) -> str | None:
        """``path`` mapped by the most specific rule, or ``None`` when none applies."""
        if self.source_path_format is None:
            return None
        parts = split_source_path(path, self.source_path_format)
        node = self._trie
        best: tuple[str, tuple[str, ...]] | None = None
        for i, part in enumerate(parts):
            child = node.get(self._normalize(part))
            if child is None:
                break
            destination = child.get(".")
            if destination is not None:
                best = (destination, parts[i + 1 :])
            node = child
        if best is None:
            return None
        return str(Path(best[0]).joinpath(*best[1]))

    def transform(self, path: str) -> str:
        """``path`` mapped by the most specific rule, or ``path`` itself when none applies."""
        result = self.try_transform(path)
        return path if result is None else result

    def strict_transform(self, path: str) -> str:
        """``path`` mapped by the most specific rule (a path of this host).

        Raises :class:`UnmappedPathError` when no rule applies."""
        result = self.try_transform(path)
        if result is None:
            raise UnmappedPathError(path)
        return result


def _identity(part: str) -> str:
    return part

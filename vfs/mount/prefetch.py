"""Background prefetch policy: which files to bring into the cache before they are read.

Pure logic on the inode tree, no I/O (the fetcher does the fetching, on spare download slots
only, so demand reads always go first). ``--prefetch`` takes one of:

* ``none`` — nothing is fetched before it is read (besides readahead within a file);
* ``dirs`` — when a file is first read, the other files of its directory follow (a render
  reading frame 1001 of a sequence reads the rest of it, a shader its sibling textures);
* ``all`` — when any file is first read, every file of the mount follows, its directory first;
* ``GLOB …`` — the files matching these globs (``vfs manifest snapshot -i`` semantics,
  :mod:`vfs.manifest.globs`) are fetched from the start of the mount.

Every file is planned at most once; symbolic links have no content and are never planned.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vfs.errors import VfsError

if TYPE_CHECKING:  # the CLI parses --prefetch before forking, without the tree's imports
    from vfs.mount.objects import ObjectRef
    from vfs.mount.tree import InodeTree

_ROOT = 1  # vfs.mount.tree.ROOT_INODE

PREFETCH_MODES = ("none", "dirs", "all")
"""The named ``--prefetch`` modes; anything else is a glob."""

DEFAULT_PREFETCH = ("none",)
"""``--prefetch`` when not given: measured best (``scripts/bench_read.py --cases virtual`` on
s3rver, 2 cores: a job reading 10 % took 0.28× deadline's copy with ``none``, 0.63× ``dirs``,
0.65× ``all``; reading everything 1.33×, 1.51×, 1.61×; README, Read path)."""


@dataclass(frozen=True, slots=True)
class PrefetchPolicy:
    """``mode`` one of :data:`PREFETCH_MODES` or ``"globs"`` with ``globs`` set."""

    mode: str = "none"
    globs: tuple[str, ...] = ()

    @classmethod
    def parse(cls, values: Sequence[str]) -> PrefetchPolicy:
        """The policy of ``--prefetch`` values: one mode name, or one or more globs.

        Raises :class:`VfsError` for a mode mixed with other values.
        """
        values = tuple(v for v in values if v)
        if not values:
            return cls()
        named = [v for v in values if v in PREFETCH_MODES]
        if named and len(values) > 1:
            raise VfsError(
                f"--prefetch {' '.join(values)}: give one of {', '.join(PREFETCH_MODES)}, "
                "or globs, not both"
            )
        if named:
            return cls(named[0])
        return cls("globs", values)


class PrefetchPlanner:
    """Decides, file by file, what to prefetch under ``policy`` over ``tree`` (inodes)."""

    def __init__(self, tree: InodeTree, policy: PrefetchPolicy) -> None:
        self.tree = tree
        self.policy = policy
        self._planned: set[int] = set()
        self._dirs_done: set[int] = set()
        self._all_done = False

    def at_mount(self) -> Iterator[int]:
        """Files to prefetch as soon as the mount serves (the ``GLOB`` mode), in path
        order (lazily: a million-file tree is walked as the prefetch goes)."""
        if self.policy.mode != "globs":
            return iter(())
        from vfs.manifest.globs import glob_matches

        globs = self.policy.globs
        return self._plan(
            ino for path, ino in self._files_below(_ROOT, "")
            if any(glob_matches(path, g) for g in globs)
        )  # fmt: skip

    def after_read(self, ino: int) -> Iterator[int]:
        """Files to prefetch now that file ``ino`` was read for the first time (lazily)."""
        self._planned.add(ino)
        mode = self.policy.mode
        if mode == "dirs":
            parent = self.tree.parent[ino]
            if parent in self._dirs_done:
                return iter(())
            self._dirs_done.add(parent)
            return self._plan(self._files_in(parent))
        if mode == "all" and not self._all_done:
            self._all_done = True
            parent = self.tree.parent[ino]
            rest = (i for _, i in self._files_below(_ROOT, ""))
            return self._plan(itertools.chain(self._files_in(parent), rest))
        return iter(())

    def objects(self, inodes: Iterable[int]) -> Iterator[ObjectRef]:
        """The CAS objects holding these files' content, in order (lazily)."""
        return (part for ino in inodes for part in self.tree.file_parts(ino))

    def _plan(self, inodes: Iterable[int]) -> Iterator[int]:
        for ino in inodes:
            if ino not in self._planned:
                self._planned.add(ino)
                yield ino

    def _is_file(self, ino: int) -> bool:
        return not self.tree.is_dir(ino) and ino not in self.tree.symlinks

    def _files_in(self, dir_ino: int) -> Iterator[int]:
        """The files (not directories, not links) of a directory, by name."""
        for _, ino in sorted(self.tree.entries(dir_ino)):
            if self._is_file(ino):
                yield ino

    def _files_below(self, dir_ino: int, prefix: str) -> Iterator[tuple[str, int]]:
        """``(path, inode)`` of every file below a directory, depth first, by name."""
        for name, ino in sorted(self.tree.entries(dir_ino)):
            path = prefix + name.decode("utf-8", "surrogateescape")
            if self.tree.is_dir(ino):
                yield from self._files_below(ino, path + "/")
            elif ino not in self.tree.symlinks:
                yield path, ino

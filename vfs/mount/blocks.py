"""Block arithmetic of CAS objects: pure functions on sizes and offsets, no I/O.

An object of at most :data:`BLOCK_SIZE` bytes is one block, fetched and cached whole. A larger
object (a big v1 file, or a 256 MiB chunk of a v2 file) is cut into :data:`BLOCK_SIZE` blocks
(the last one shorter), each fetched by a ranged GET and cached as a file of its own.
"""

from __future__ import annotations

import random

from vfs.mount.objects import ObjectRef

BLOCK_SIZE = 4 * 1024 * 1024
"""Bytes per block of an object larger than one block; the unit of ranged fetches."""


def is_whole(obj: ObjectRef) -> bool:
    """True when ``obj`` is fetched and cached whole (at most one block)."""
    return obj.size <= BLOCK_SIZE


def nblocks(obj: ObjectRef) -> int:
    """Number of blocks of ``obj`` (1 for a whole object, also an empty one)."""
    return max(1, -(-obj.size // BLOCK_SIZE))


def block_length(obj: ObjectRef, index: int) -> int:
    """Bytes in block ``index`` of ``obj`` (the last block is shorter)."""
    return min(BLOCK_SIZE, obj.size - index * BLOCK_SIZE)


def block_span(off: int, end: int) -> range:
    """Indices of the blocks holding bytes ``[off, end)`` (``end > off``)."""
    return range(off // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1)


def aligned_runs(indices: list[int], group: int) -> list[list[int]]:
    """``indices`` (ascending) grouped into runs of consecutive indices that never cross a
    multiple of ``group``, so each run lies in one aligned group of ``group`` blocks:
    ``[1, 2, 3, 5] -> [[1, 2, 3], [5]]``, and ``[6, 7, 8, 9] -> [[6, 7], [8, 9]]`` with
    ``group == 8``. Aligned runs make the same ranged GETs whichever block a reader starts
    at, so readers of one file coalesce on them (and a sliding readahead window does not
    cut them into one GET per block)."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][-1] == index - 1 and index % group:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def group_end(index: int, group: int, count: int) -> int:
    """One past the last index of the aligned group of ``group`` indices holding ``index``,
    at most ``count``."""
    return min(count, (index // group + 1) * group)


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, …): exponential from
    0.25 s, capped at 5 s, with ±50 % jitter (mountpoint-s3 and the AWS SDKs do the same)."""
    base = min(5.0, 0.25 * 2.0 ** (attempt - 1))
    jitter = rng.uniform(0.5, 1.5) if rng is not None else random.uniform(0.5, 1.5)
    return base * jitter
